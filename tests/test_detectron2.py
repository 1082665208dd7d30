"""The detectron2 adapter: targets from PolygonMasks and BitMasks, the loss dict, frozen
detectron2 weights, the inference fields, TorchScript, and the maskiou checkpoints of detectron2
models, on small random-weight models of the embedded recipe (ResNet-18, GN, 64 px)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see "
                    "docs/frameworks/detectron2.md: pip install "
                    "../shared/wheels/detectron2-0.6-py3-none-any.whl)")

from detectron2.export import scripting_with_instances  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from maskiou import attach_maskiou_head, mask_iou_targets  # noqa: E402
from maskiou.attach import find_adapter  # noqa: E402
from maskiou.models.checkpoint import save_atomic  # noqa: E402
from maskiou.models.load import load_trained_model  # noqa: E402
from maskiou_integrations.detectron2_models import (  # noqa: E402
    build_detector,
    detector_checkpoint,
    embedded_config,
)
from maskiou_integrations.detectron2_rcnn import (  # noqa: E402
    Detectron2RCNNAdapter,
    full_image_masks,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SIZE = 64
FIELDS = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor, "pred_boxes": Boxes,
          "scores": torch.Tensor, "pred_classes": torch.Tensor, "pred_masks": torch.Tensor,
          "cls_scores": torch.Tensor, "mask_quality": torch.Tensor, "maskness": torch.Tensor}


def tiny_detectron2(num_classes: int = 3, norm: str = "GN", seed: int = 0, **overrides):
    """A random-weight detectron2 Mask R-CNN of the embedded recipe for 64 px images."""
    values = {"INPUT.MIN_SIZE_TEST": SIZE, "INPUT.MAX_SIZE_TEST": SIZE,
              "MODEL.RESNETS.NORM": norm, "MODEL.FPN.NORM": "" if norm == "FrozenBN" else norm,
              "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32, **overrides}
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_detector(embedded_config(num_classes, **values))


def gt_instances(polygons: bool = False) -> Instances:
    """Two GT squares, classes 0 and 2, as detectron2's mapper gives them."""
    inst = Instances((SIZE, SIZE))
    boxes = [(4, 4, 28, 28), (24, 20, 60, 52)]
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor([0, 2])
    if polygons:
        inst.gt_masks = PolygonMasks([[np.array([x1, y1, x2, y1, x2, y2, x1, y2], float)]
                                      for x1, y1, x2, y2 in boxes])
    else:
        bits = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            bits[k, y1:y2, x1:x2] = True
        inst.gt_masks = BitMasks(bits)
    return inst


def no_gt() -> Instances:
    inst = Instances((SIZE, SIZE))
    inst.gt_boxes = Boxes(torch.zeros(0, 4))
    inst.gt_classes = torch.zeros(0, dtype=torch.int64)
    inst.gt_masks = BitMasks(torch.zeros(0, SIZE, SIZE, dtype=torch.bool))
    return inst


def images(n: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(n)]


def losses(model, targets: list[Instances], seed: int = 0) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(seed)
    inputs = [{"image": img * 255, "instances": t} for img, t in zip(images(len(targets)),
                                                                      targets)]
    with EventStorage(0):
        return model(inputs)


def test_the_adapter_is_found_through_its_entry_point():
    model = tiny_detectron2()
    assert isinstance(find_adapter(model), Detectron2RCNNAdapter)
    attach_maskiou_head(model)
    head = model.roi_heads.maskiou_head
    assert (head.in_channels, head.num_classes, head.roi_size) == (64, 4, 14)  # K + background


def test_polygon_and_bit_masks_give_the_same_full_instance_targets():
    # proposal 0 is GT 0's box, its mask the left half of the grid: IoU 0.5; proposal 1 covers
    # the left half of GT 0, its mask the whole grid: the other half of the GT lies outside the
    # box and counts in the union, IoU 0.5 again; proposal 2 is GT 1 exactly, IoU 1 (up to the
    # core's resampling of the GT on the 28 x 28 grid)
    boxes = torch.tensor([[4.0, 4, 28, 28], [4, 4, 16, 28], [24, 20, 60, 52]])
    logits = torch.full((3, 28, 28), -5.0)
    logits[0, :, :14] = 5.0
    logits[1:] = 5.0
    full = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
    full[0, 4:28, 4:28] = 1
    full[1, 20:52, 24:60] = 1
    expected = mask_iou_targets(logits, boxes, full, torch.tensor([0, 0, 1]))
    assert expected.tolist() == pytest.approx([0.5, 0.5, 1.0], abs=0.02)
    for polygons in (False, True):
        inst = gt_instances(polygons)[torch.tensor([0, 0, 1])]
        masks, matched = full_image_masks(inst)
        assert torch.equal(masks, full) and matched.tolist() == [0, 0, 1]  # one mask per GT
        # the same masks (checked just above) into the same computation: exact
        assert torch.equal(mask_iou_targets(logits, boxes, masks, matched), expected)


def test_no_proposals_give_no_masks():
    masks, matched = full_image_masks(no_gt())
    assert masks.shape == (0, SIZE, SIZE) and matched.shape == (0,)


def test_loss_maskiou_joins_detectron2s_losses_and_leaves_them_unchanged():
    plain = tiny_detectron2()
    attached = tiny_detectron2()
    attach_maskiou_head(attached)
    targets = [gt_instances(), gt_instances(polygons=True)]
    before = losses(plain, targets)
    after = losses(attached, targets)
    assert set(after) == set(before) | {"loss_maskiou"}
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert after["loss_maskiou"].item() > 0
    after["loss_maskiou"].backward()
    assert attached.roi_heads.maskiou_head.predictor.weight.grad.abs().sum() > 0


def test_negative_only_images_give_a_loss_of_exactly_zero():
    model = tiny_detectron2()
    attach_maskiou_head(model, score_inputs=2)
    out = losses(model, [no_gt(), no_gt()])
    assert out["loss_maskiou"].item() == 0.0 and out["loss_maskiou"].requires_grad


def test_score_inputs_in_training_are_the_box_classifiers_gt_class_probabilities():
    model = tiny_detectron2()
    attach_maskiou_head(model, score_inputs=2)
    seen = []
    model.roi_heads.maskiou_head.register_forward_hook(lambda m, i, o: seen.append(i[2]))
    losses(model, [gt_instances()])
    scores = seen[0]
    assert scores.shape[1] == 2 and len(scores) > 0
    assert ((scores >= 0) & (scores <= 1)).all()


def test_the_box_head_runs_once_per_training_step():
    """The head's training score inputs come from the box head's own run, not a second one."""
    model = tiny_detectron2()
    attach_maskiou_head(model, score_inputs=2)
    calls = []
    model.roi_heads.box_head.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    out = losses(model, [gt_instances()])
    assert "loss_maskiou" in out and len(calls) == 1


@pytest.mark.parametrize("norm", ["GN", "BN", "FrozenBN"])
def test_freeze_detector_keeps_detectron2s_weights_bit_identical(norm):
    model = tiny_detectron2(norm=norm)
    attach_maskiou_head(model, freeze_detector=True)
    before = {k: v.clone() for k, v in model.state_dict().items() if "maskiou_head" not in k}
    head_before = model.roi_heads.maskiou_head.predictor.weight.clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p is q for p, q in zip(
        trainable, [p for p in model.roi_heads.maskiou_head.parameters()]))
    opt = torch.optim.SGD(trainable, lr=0.1)
    out = losses(model, [gt_instances(), gt_instances(polygons=True)])
    sum(out.values()).backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not torch.equal(model.roi_heads.maskiou_head.predictor.weight, head_before)


def inference(model, imgs: list[torch.Tensor]) -> list[Instances]:
    model.eval()
    with torch.no_grad():
        return model.inference([{"image": img * 255} for img in imgs], do_postprocess=False)


def test_inference_adds_cls_scores_mask_ious_and_maskness_and_rescores():
    model = tiny_detectron2()
    attach_maskiou_head(model)
    results = inference(model, images(2))
    assert len(results) == 2
    for inst in results:
        assert len(inst) > 0
        for f in ("cls_scores", "mask_quality", "maskness"):
            assert inst.get(f).dtype == torch.float32 and inst.get(f).shape == (len(inst),)
        assert torch.allclose(inst.scores, inst.cls_scores * inst.mask_quality)
        assert (inst.scores[:-1] >= inst.scores[1:]).all()  # re-sorted by the new score
        assert ((inst.maskness == 0) | (inst.maskness >= 0.5)).all()
    model.roi_heads.maskiou_rescore = False
    plain = inference(model, images(2))
    assert all(torch.equal(i.scores, i.cls_scores) for i in plain)


def test_zero_detections_give_empty_fields():
    model = tiny_detectron2(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.0})
    attach_maskiou_head(model)
    (inst,) = inference(model, images(1))
    assert len(inst) == 0 and inst.mask_quality.shape == (0,) and inst.maskness.shape == (0,)


def eager_and_scripted(model: torch.nn.Module) -> tuple[list, list]:
    """``model`` (eval mode) and its ``scripting_with_instances`` form on the same two images:
    their ``inference`` outputs without postprocessing, eager Instances and scripted ones."""
    scripted = scripting_with_instances(model, FIELDS)
    inputs = [{"image": img * 255} for img in images(2)]
    with torch.no_grad():
        return (model.inference(inputs, do_postprocess=False),
                scripted.inference(inputs, do_postprocess=False))


@pytest.mark.threads
def test_an_attached_model_scripts_with_detectron2s_export_and_matches_eager():
    model = tiny_detectron2()
    attach_maskiou_head(model, score_inputs=2)
    model.eval()
    eager, script = eager_and_scripted(model)
    for e, s in zip(eager, script):
        # the same kernels on the same images in one process: bit for bit
        for f in ("scores", "cls_scores", "mask_quality", "maskness", "pred_masks"):
            assert torch.equal(e.get(f), getattr(s, f)), f


def test_predict_and_collect_give_maskiou_records_in_image_pixels():
    model = tiny_detectron2()
    attach_maskiou_head(model, score_inputs=2)
    model.maskiou_test_size = (2 * SIZE, 2 * SIZE)  # the model sees the images at twice the size
    adapter = find_adapter(model)
    imgs = images(2)
    (rec, _) = adapter.predict(model, imgs)
    # what DefaultPredictor gives the model: the uint8 image in detectron2's default
    # INPUT.FORMAT (BGR), resized by ResizeShortestEdge (PIL) to the test size
    from detectron2.data.transforms import ResizeShortestEdge

    bgr = (imgs[0] * 255).round().to(torch.uint8).flip(0).permute(1, 2, 0).numpy()
    resized = ResizeShortestEdge([2 * SIZE] * 2, 2 * SIZE).get_transform(bgr).apply_image(bgr)
    with torch.no_grad():
        (raw,) = model.inference([{"image": torch.as_tensor(
            resized.transpose(2, 0, 1).astype("float32"))}], do_postprocess=False)
    assert rec["labels"].tolist() == (raw.pred_classes + 1).tolist()  # background is 0
    assert rec["masks"].shape == (len(raw), 1, SIZE, SIZE)
    assert torch.allclose(rec["boxes"], raw.pred_boxes.tensor / 2, atol=1e-4)
    (col, _) = adapter.collect(model, imgs)
    assert (col["scores"][:-1] >= col["scores"][1:]).all()  # the detector's order
    assert "mask_quality" not in col and model.roi_heads.maskiou_rescore  # restored
    head = model.roi_heads.maskiou_head
    with torch.no_grad():
        score_inputs = torch.stack([col["scores"], col["maskness"]], 1)
        pred = head(col["roi_features"], col["mask_probs"], score_inputs)
    ious = pred[torch.arange(len(pred)), col["labels"]].clamp(0, 1)
    order = torch.argsort(rec["cls_scores"], descending=True, stable=True)
    assert torch.allclose(ious, rec["mask_quality"][order], atol=1e-5)  # rows aligned


@pytest.mark.threads
def test_detectron2_checkpoints_load_plain_and_with_a_head(tmp_path):
    names = ["__background__", "a", "b", "c"]
    cfg = embedded_config(3, **{"INPUT.MIN_SIZE_TEST": SIZE, "INPUT.MAX_SIZE_TEST": SIZE})
    torch.manual_seed(0)
    plain = build_detector(cfg)
    ckpt = detector_checkpoint(cfg, plain, names, {1: 1, 2: 2, 3: 3})
    save_atomic(ckpt, tmp_path / "plain.pt")
    model, meta = load_trained_model(tmp_path / "plain.pt")
    assert meta["framework"] == "detectron2" and meta["class_names"] == names
    assert model.maskiou_test_size == (SIZE, SIZE)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert not hasattr(model.roi_heads, "maskiou_head")
    (rec,) = find_adapter(model).predict(model, images(1))
    assert "maskness" in rec and "mask_quality" not in rec  # a plain model: maskness for free
    attach_maskiou_head(plain, score_inputs=2, conv_channels=32, num_convs=1, fc_dim=64)
    head = {"conv_channels": 32, "reduce_channels": 0, "num_convs": 1, "fc_dim": 64,
            "fusion": "concat", "mask_features": 0, "score_inputs": 2, "output": "linear"}
    save_atomic({**ckpt, "model": plain.state_dict(), "maskiou_head": head},
                tmp_path / "head.pt")
    model, _ = load_trained_model(tmp_path / "head.pt")
    assert model.roi_heads.maskiou_head.score_inputs == 2
    (a,) = find_adapter(model).predict(model, images(1))
    (b,) = find_adapter(plain).predict(plain.eval(), images(1))
    # same weights, same image: the same computation
    assert torch.equal(a["mask_quality"], b["mask_quality"])


def test_the_add_on_flow_runs_on_a_detectron2_model_and_its_checkpoint_evaluates(tmp_path):
    from maskiou.addon.fit import AddonConfig
    from maskiou.addon.run import train_addon
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.data.synthetic import generate_synthetic_coco
    from maskiou.evaluation.benchmark import evaluate_checkpoint, is_plain
    from maskiou.models.checkpoint import load_checkpoint

    det = generate_synthetic_coco(tmp_path / "det", 0, 4, seed=0, image_size=64, progress=False)
    addon = generate_synthetic_coco(tmp_path / "addon", 10, 0, seed=1, image_size=64,
                                    progress=False)
    train = CocoInstanceDataset(addon.train_json, addon.train_images)
    cfg = embedded_config(train.num_classes - 1,
                          **{"INPUT.MIN_SIZE_TEST": SIZE, "INPUT.MAX_SIZE_TEST": SIZE})
    torch.manual_seed(0)
    plain = build_detector(cfg)
    save_atomic(detector_checkpoint(cfg, plain, train.class_names, train.label_to_cat_id),
                tmp_path / "plain.pt")
    assert is_plain(tmp_path / "plain.pt")
    path = train_addon(tmp_path / "plain.pt", addon.train_json, addon.train_images,
                       tmp_path / "run", AddonConfig(epochs=1, crossfit_folds=0),
                       progress=False, log=lambda m: None)
    ckpt = load_checkpoint(path)
    assert ckpt["framework"] == "detectron2" and ckpt["maskiou_head"]["score_inputs"] == 2
    assert not is_plain(path)
    assert all(torch.equal(ckpt["model"][k], v) for k, v in plain.state_dict().items())
    val = CocoInstanceDataset(det.val_json, det.val_images)
    metrics = evaluate_checkpoint(path, val, torch.device("cpu"), progress=False)
    assert metrics["framework"] == "detectron2" and metrics["has_head"]
    assert {"cls", "maskness", "rescored", "recalibrated", "oracle"} <= set(metrics["segm"])
    assert metrics["cost"]["mask_head_gflops_per_roi"] > 0


@pytest.fixture(scope="module")
def d2_files(tmp_path_factory):
    """A detectron2 model as detectron2 names one (config.yaml and model_final.pth), with
    small labeled add-on and validation sets of its classes."""
    from detectron2.checkpoint import DetectionCheckpointer

    from maskiou.data.synthetic import generate_synthetic_coco

    d = tmp_path_factory.mktemp("d2")
    val = generate_synthetic_coco(d / "val", 0, 4, seed=0, image_size=SIZE, progress=False)
    addon = generate_synthetic_coco(d / "addon", 8, 0, seed=1, image_size=SIZE, progress=False)
    cfg = embedded_config(7, **{"INPUT.MIN_SIZE_TEST": SIZE, "INPUT.MAX_SIZE_TEST": SIZE})
    torch.manual_seed(0)
    DetectionCheckpointer(build_detector(cfg), save_dir=str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    return {"config": str(d / "config.yaml"), "weights": str(d / "model_final.pth"),
            "addon": ["--train-json", str(addon.train_json),
                      "--train-images", str(addon.train_images)],
            "val": ["--val-json", str(val.val_json), "--val-images", str(val.val_images)]}


QUICK = ["--no-progress", "--addon-epochs", "1", "--addon-flip", "false",
         "--addon-crossfit-folds", "0", "--addon-recalibration-holdout", "0.5"]


def test_maskiou_addon_takes_a_detectron2_config_and_weights(d2_files, tmp_path, capsys):
    from maskiou.addon.cli import main

    out = tmp_path / "addon"
    code = main(["--detector-config", d2_files["config"], "--detector", d2_files["weights"],
                 *d2_files["addon"], "--output-dir", str(out), *QUICK])
    assert code == 0, capsys.readouterr().err
    model, meta = load_trained_model(out / "model_final.pt")
    assert meta["framework"] == "detectron2" and meta["addon"]["detector"].startswith(
        str(out / "detector-detectron2-"))
    assert model.roi_heads.maskiou_head.num_classes == 8
    from demo.inference import Predictor

    pred = Predictor.from_checkpoint(out / "model_final.pt", "cpu")
    shown = pred((np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    assert pred.kind == "add-on" and shown["mask_quality"] is not None
    assert shown["masks"].shape[1:] == (SIZE, SIZE)
    code = main(["--detector-config", d2_files["config"] + ".missing", "--detector",
                 d2_files["weights"], *d2_files["addon"], "--output-dir", str(out), *QUICK])
    assert code == 2 and "config file" in capsys.readouterr().err


def test_coco_eval_runs_the_add_on_on_a_detectron2_model_named_by_its_files(d2_files, tmp_path,
                                                                           capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import coco_eval

    out = tmp_path / "out"
    args = ["--detector-framework", "detectron2", "--detector-config", d2_files["config"],
            "--checkpoint", d2_files["weights"], *d2_files["addon"], *d2_files["val"],
            "--output-dir", str(out), "--batch-size", "4", *QUICK]
    assert coco_eval.main(args) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["framework"] == "detectron2" and metrics["main_model"] == "addon"
    assert {"cls", "maskness", "rescored", "recalibrated", "oracle"} <= set(metrics["segm"])
    assert "head_pearson" in metrics["correlation"]
    no_weights = ["--detector-framework", "detectron2", *d2_files["val"],
                  "--output-dir", str(out)]
    assert coco_eval.main(no_weights) == 2
    assert "train it with detectron2 itself" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_inference_on_a_gpu_match_the_cpus_fields():
    model = tiny_detectron2()
    attach_maskiou_head(model, score_inputs=2)
    model.to("cuda").train()
    targets = [gt_instances().to("cuda"), gt_instances(polygons=True).to("cuda")]
    inputs = [{"image": (img * 255).cuda(), "instances": t} for img, t in zip(images(2), targets)]
    with EventStorage(0):
        out = model(inputs)
    assert out["loss_maskiou"].is_cuda and out["loss_maskiou"].item() > 0
    sum(out.values()).backward()
    model.eval()
    (rec,) = find_adapter(model).predict(model, [images(1)[0].cuda()])
    assert rec["mask_quality"].is_cuda and rec["masks"].shape[-2:] == (SIZE, SIZE)
    (col,) = find_adapter(model).collect(model, [images(1)[0].cuda()])
    assert len(col["roi_features"]) == len(col["boxes"])


def test_class_agnostic_masks_train_and_score():
    model = tiny_detectron2(**{"MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": True})
    attach_maskiou_head(model)
    out = losses(model, [gt_instances(), gt_instances(polygons=True)])
    assert out["loss_maskiou"].item() > 0 and out["loss_mask"].item() > 0
    (inst,) = inference(model, images(1))
    assert inst.pred_masks.shape[1] == 1 and torch.allclose(inst.scores,
                                                            inst.cls_scores * inst.mask_quality)


def test_a_subclass_of_standard_roi_heads_keeps_its_own_overrides():
    from detectron2.modeling.roi_heads import StandardROIHeads

    class HalfScores(StandardROIHeads):
        def _forward_box(self, features, proposals):
            out = super()._forward_box(features, proposals)
            if not self.training:
                for inst in out:
                    inst.scores = inst.scores / 2
            return out

    model = tiny_detectron2()
    model.roi_heads.__class__ = HalfScores
    attach_maskiou_head(model)
    assert isinstance(model.roi_heads, HalfScores)
    (inst,) = inference(model, images(1))
    assert inst.cls_scores.max() <= 0.5 and len(inst) > 0  # its _forward_box still runs
    overrides_mask = type("OwnMask", (StandardROIHeads,), {"_forward_mask": lambda s, f, i: i})
    other = tiny_detectron2()
    other.roi_heads.__class__ = overrides_mask
    with pytest.raises(TypeError, match="overrides _forward_mask"):
        attach_maskiou_head(other)


def test_detectron2s_own_trainer_writes_a_maskiou_checkpoint_of_its_model(tmp_path):
    from maskiou.addon.run import detector_training_images
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.data.synthetic import generate_synthetic_coco
    from maskiou.models.checkpoint import load_checkpoint
    from maskiou.records import image_fingerprints
    from maskiou_integrations.detectron2_models import train_embedded

    data = generate_synthetic_coco(tmp_path / "data", 4, 0, seed=0, image_size=SIZE,
                                   progress=False)
    path = train_embedded(tmp_path / "run", max_iter=1, workers=0, train_json=data.train_json,
                          train_images=data.train_images,
                          opts=["SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TEST", str(SIZE)])
    ckpt = load_checkpoint(path)
    assert ckpt["framework"] == "detectron2"
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    assert "IMS_PER_BATCH: 2" in ckpt["detector"]["config"]
    model, meta = load_trained_model(path)
    assert model.maskiou_test_size == (SIZE, SIZE)  # the images' size, in training too
    assert ckpt["detector"]["source"]["input_size"] == SIZE
    train = CocoInstanceDataset(data.train_json, data.train_images)
    assert meta["class_names"] == train.class_names
    assert detector_training_images(meta) == image_fingerprints(train)  # the add-on warns
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "train_log.jsonl").is_file()


def _with_background(src, dst, new_id, keep_images: int | None = None,
                     background: bool = True):
    """``src`` (a COCO JSON) rewritten as some annotation tools export it: a category
    ``background`` with id 0 first (unless not ``background``), the real categories renumbered
    by ``new_id(old id)``, optionally only the first ``keep_images`` images."""
    import json
    from pathlib import Path

    data = json.loads(Path(src).read_text())
    if keep_images is not None:
        data["images"] = data["images"][:keep_images]
        kept = {img["id"] for img in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    data["categories"] = [{"id": 0, "name": "background", "supercategory": "none"}] * \
        background + [{**c, "id": new_id(c["id"])} for c in data["categories"]]
    for a in data["annotations"]:
        a["category_id"] = new_id(a["category_id"])
    Path(dst).write_text(json.dumps(data))
    return Path(dst)


def test_the_recipe_trains_with_maskious_class_mapping_on_a_json_with_a_skipped_background(
        tmp_path):
    """A COCO file with a ``background`` category id 0 (no annotations) and class ids 5, 8,
    14, ... (3 x the embedded ones + 2): detectron2's DefaultTrainer is given the torchvision
    recipe's classes (background skipped, labels in id order), not register_coco_instances'
    numbering of all of them."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.data.synthetic import generate_synthetic_coco
    from maskiou.models.checkpoint import load_checkpoint
    from maskiou_integrations.detectron2_models import config_from_yaml, train_embedded

    data = generate_synthetic_coco(tmp_path / "data", 4, 0, seed=0, image_size=SIZE,
                                   progress=False)
    train_json = _with_background(data.train_json, tmp_path / "bg.json", lambda c: 3 * c + 2)
    path = train_embedded(tmp_path / "run", max_iter=2, workers=0, train_json=train_json,
                          train_images=data.train_images,
                          opts=["SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TEST", str(SIZE)])
    torchvision_recipe = CocoInstanceDataset(train_json, data.train_images)  # maskiou-train's
    plain = CocoInstanceDataset(data.train_json, data.train_images)
    assert torchvision_recipe.label_to_cat_id == {
        label: 3 * c + 2 for label, c in plain.label_to_cat_id.items()}
    assert torchvision_recipe.class_names == plain.class_names
    ckpt = load_checkpoint(path)
    assert ckpt["class_names"] == torchvision_recipe.class_names
    assert ckpt["label_to_cat_id"] == torchvision_recipe.label_to_cat_id
    cfg = config_from_yaml(ckpt["detector"]["config"])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(plain.class_names) - 1 == 7
    name = cfg.DATASETS.TRAIN[0]
    assert MetadataCatalog.get(name).thing_classes == torchvision_recipe.class_names[1:]
    # what DefaultTrainer trained on: every annotation's class is its label - 1, image by image
    by_file = {str(torchvision_recipe.image_path(i)): i for i in range(len(torchvision_recipe))}
    records = DatasetCatalog.get(name)
    assert len(records) == len(torchvision_recipe) == 4
    assert sum(len(r["annotations"]) for r in records) > 0
    for r in records:
        i = by_file[r["file_name"]]
        want = sorted(inst.label - 1 for inst in torchvision_recipe.instances(i))
        assert sorted(a["category_id"] for a in r["annotations"]) == want, r["file_name"]
        # ... and the same classes as the plain file's
        assert want == sorted(inst.label - 1 for inst in plain.instances(i))


def test_the_shipped_detectron2_detector_scores_the_same_on_a_json_with_a_skipped_background(
        tmp_path):
    """The embedded story on such a file: evaluation maps the checkpoint's labels to the
    dataset's category ids through the class names, so the shipped plain detectron2 detector
    gets the same mask AP on the validation split with a ``background`` id 0 and shifted ids
    as on the plain file; a file whose classes come in another order is refused in one line."""
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.evaluation.benchmark import embedded_val, evaluate_checkpoint
    from maskiou.models.paths import shipped_model_path

    val_json, val_images = embedded_val(progress=False)
    plain = _with_background(val_json, tmp_path / "plain.json", lambda c: c, 40,
                             background=False)
    shifted = _with_background(val_json, tmp_path / "shifted.json", lambda c: 3 * c + 2, 40)
    detector = shipped_model_path("detectron2_plain")
    scores = [evaluate_checkpoint(detector, CocoInstanceDataset(path, val_images), "cpu",
                                  progress=False)["segm"]["cls"]
              for path in (plain, shifted)]
    # the per-class operating points are keyed by the file's category id (c there, 3c + 2 here)
    per_class = ("oLRP", "LRP_thresholds")
    shifted_back = {k: {str((int(c) - 2) // 3): v for c, v in scores[1][k].items()}
                    for k in per_class}
    assert scores[0]["AP"] > 30 and {k: scores[0][k] for k in per_class} == shifted_back
    assert ({k: v for k, v in scores[0].items() if k not in per_class}
            == {k: v for k, v in scores[1].items() if k not in per_class})
    swapped = _with_background(val_json, tmp_path / "swapped.json", lambda c: 100 - c, 40)
    with pytest.raises(ValueError) as e:
        evaluate_checkpoint(detector, CocoInstanceDataset(swapped, val_images), "cpu",
                            progress=False)
    assert "trained on classes" in str(e.value) and "\n" not in str(e.value)
