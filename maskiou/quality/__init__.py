"""How far a score can be trusted as a mask's quality, and where to cut it: COCO-style greedy
matching of detections to ground truth at a mask-IoU threshold (:mod:`.matching`), the
localisation-aware calibration error LaECE (:mod:`.laece`) and LRP with its optimal
thresholds (:mod:`.lrp`). Pure numpy functions of scores, labels and IoUs: the add-on fits the
final score's map and thresholds with them, and the evaluation reports them."""
