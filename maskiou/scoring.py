"""Mask scores at inference: the rescoring of the paper (section 3.3) and the free "maskness".

Pure tensor functions, scriptable with TorchScript (the torchvision adapter calls them inside
``RoIHeads.forward``).
"""

from typing import Dict

import torch
from torch import Tensor


def rescore(cls_scores: Tensor, quality: Tensor) -> Tensor:
    """``cls_scores * clamp(quality, 0, 1)`` (the paper's rescoring, with the head's output);
    both Tensor[N] -> Tensor[N]."""
    return cls_scores * quality.clamp(0.0, 1.0).to(cls_scores.dtype)


def maskness(mask_probs: Tensor, threshold: float = 0.5) -> Tensor:
    """Mean mask probability over the pixels of the predicted (binarized) mask.

    ``sum(p * [p > t]) / sum([p > t])`` over the last two dimensions, the free mask-quality score
    that SOLOv2 and Mask2Former multiply into their scores. A mask with no pixel above the
    threshold has maskness 0 (never NaN).

    It works on any probability map; the adapters apply it to the 28 x 28 RoI probabilities of
    the predicted class, the mask as the model predicts it, before it is resampled into the image:
    every grid cell covers the same share of the box, so this is the pasted mask's mean up to
    interpolation, it costs N x 784 operations whatever the image size, and it is the same
    number in eager mode, TorchScript and ONNX. (On pasted full-image masks it gives the same
    quantity up to resampling; ``maskiou.evaluation`` uses it there for detectors without an
    adapter.)

    Args:
        mask_probs: Tensor[..., H, W], float probabilities in [0, 1].
        threshold: binarization threshold (0.5, as the masks are binarized for COCO).

    Returns:
        Tensor[...] in [threshold, 1] where a pixel is above the threshold, else 0; float64 for
        float64 probabilities, else float32 (half and bfloat16 are summed in float32).
    """
    probs = mask_probs if mask_probs.dtype == torch.float64 else mask_probs.float()
    on = (probs > threshold).to(probs.dtype)
    area = on.sum((-2, -1))
    return (probs * on).sum((-2, -1)) / area.clamp(min=1.0)


def score_order(scores: Tensor) -> Tensor:
    """The order that sorts detections by ``scores`` (Tensor[n]), highest first, ties in their
    present order (the detector's): Tensor[n] int64. Every adapter re-sorts with it."""
    if torch.jit.is_tracing():  # ONNX export: TopK (the exporter has no stable sort)
        return torch.sort(scores, descending=True)[1]
    # stable: CPU sorts are stable anyway (so no test here can tell), CUDA's are not
    return torch.argsort(scores, descending=True, stable=True)  # pragma: no mutate


def add_maskiou_outputs(result: Dict[str, Tensor], quality: Tensor, mask_maskness: Tensor,
                        rescore_outputs: bool, final_scores: Tensor | None = None) -> None:
    """Add ``cls_scores``, ``mask_quality`` and ``maskness`` to one image's detections, in
    place, and with ``rescore_outputs`` make ``scores`` the final score.

    The final score is ``final_scores`` (the head's :class:`maskiou.calibration.ScoreCalibration`
    of the detections' signals, what every adapter passes) or, without it, :func:`rescore` of
    ``cls_scores`` and ``quality``; every per-detection field is then re-sorted by it, highest
    first (as a detector's output is). ``mask_quality`` and ``maskness`` are stored in the dtype
    of ``scores`` (float64 for a float64 model, bfloat16 under bfloat16 autocast).

    Args:
        result: a detector output dict with ``scores`` Tensor[n] (the class confidence) and other
            Tensor[n, ...] fields.
        quality: Tensor[n], the head's output for each detection, in [0, 1]: its predicted
            MaskIoU, or the predicted share of COCO's thresholds it passes (the head's
            ``target``).
        mask_maskness: Tensor[n], :func:`maskness` of each detection's mask.
        rescore_outputs: replace ``scores`` and re-sort.
        final_scores: Tensor[n], the final score of each detection.
    """
    cls_scores = result["scores"]
    quality = quality.to(cls_scores.dtype)
    mask_maskness = mask_maskness.to(cls_scores.dtype)
    result["cls_scores"] = cls_scores
    result["mask_quality"] = quality
    result["maskness"] = mask_maskness
    if rescore_outputs:
        if final_scores is None:
            scores = rescore(cls_scores, quality)
        else:
            scores = final_scores.to(cls_scores.dtype)
        order = score_order(scores)
        n = scores.shape[0]
        for key in list(result.keys()):
            value = result[key]
            if value.dim() > 0 and value.shape[0] == n:
                result[key] = value[order]
        result["scores"] = scores[order]
