"""The model's own kept-mask switch (``attach_maskiou_head(..., keep="worth")``,
``maskiou.set_keep``): inside the forward of a torchvision Mask R-CNN, eager, scripted and ONNX
alike, stored in the state dict; off, the outputs are those of a model without thresholds."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from test_deploy import FIELDS, same_rows
from torchvision.models.detection import maskrcnn_resnet50_fpn

from maskiou import ConfigError, attach_maskiou_head, keep_setting, kept, set_keep


def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 112, 96, generator=g)]


def build(keep: str = "all") -> torch.nn.Module:
    """A small random Mask R-CNN (3 labels: background, 1, 2) with the head attached and a
    fitted recalibration, so that the final scores spread over (0, 1)."""
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3,
                                  min_size=96, max_size=128, box_score_thresh=0.0,
                                  box_detections_per_img=30)
    attach_maskiou_head(model, keep=keep).eval()
    model.roi_heads.maskiou_head.calibration.set([1.0, 0.0, 0.0, 0.0, 0.0], 3.0)
    return model


def run(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        return model(images())


def threshold_between(scores: torch.Tensor) -> float:
    """A threshold in the middle of the widest gap between the middle half of ``scores``
    (sorted), so that it keeps some and drops some, and no rounding decides either way."""
    s = scores.sort().values.double()
    lo, hi = len(s) // 4, 3 * len(s) // 4
    gaps = s[lo + 1:hi + 1] - s[lo:hi]
    i = lo + int(gaps.argmax())
    return float((s[i] + s[i + 1]) / 2)


@pytest.fixture(scope="module")
def fitted() -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]], float]:
    """The model with hand-built thresholds (label 1 at a score between its detections', label 2
    at 0: all kept), its outputs with the switch off, and label 1's threshold."""
    model = build()
    everything = run(model)
    ones = torch.cat([r["scores"][r["labels"] == 1] for r in everything])
    assert len(ones) >= 3 and bool((torch.cat([r["labels"] for r in everything]) == 2).any())
    t1 = threshold_between(ones)
    model.roi_heads.maskiou_head.calibration.set_class_thresholds([0.0, t1, 0.0])
    return model, everything, t1


def by_hand(outputs: list[dict], t1: float) -> list[dict]:
    """The rows a person keeps: label 2 always, label 1 at a score >= t1."""
    out = []
    for r in outputs:
        keep = (r["labels"] == 2) | ((r["labels"] == 1) & (r["scores"] >= t1))
        out.append({k: v[keep] for k, v in r.items()})
    return out


def assert_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y) == set(FIELDS)
        for k in FIELDS:
            assert torch.equal(x[k], y[k]), k


def test_off_the_outputs_are_those_of_a_model_without_thresholds(fitted):
    model, everything, _ = fitted
    assert keep_setting(model) == "all"
    assert_equal(run(model), everything)  # thresholds stored, switch off: every detection


def test_on_the_model_returns_only_the_kept_masks_as_kept_does(fitted):
    model, everything, t1 = fitted
    on = set_keep(copy.deepcopy(model), "worth")
    assert keep_setting(on) == "worth"
    out = run(on)
    expected = by_hand(everything, t1)
    assert_equal(out, expected)
    assert_equal(out, kept(everything, model))
    n_all, n_kept = (sum(len(r["scores"]) for r in x) for x in (everything, out))
    assert 0 < n_kept < n_all  # label 1 lost some, the rest stayed
    assert all(bool((r["scores"][r["labels"] == 1] >= t1).all()) for r in out)
    assert_equal(run(set_keep(on, "all")), everything)  # and back


def test_attach_takes_the_switch_and_refuses_nonsense():
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3,
                                  min_size=64, max_size=64)
    assert keep_setting(attach_maskiou_head(copy.deepcopy(model), keep="worth")) == "worth"
    with pytest.raises(ConfigError, match="keep"):
        attach_maskiou_head(copy.deepcopy(model), keep="some")
    with pytest.raises(ConfigError, match="rescore_outputs"):
        attach_maskiou_head(copy.deepcopy(model), keep="worth", rescore_outputs=False)
    with pytest.raises(ValueError, match="keep must be one of all, worth"):
        set_keep(attach_maskiou_head(copy.deepcopy(model)), "yes")
    with pytest.raises(ValueError, match="no MaskIoU head"):
        set_keep(torch.nn.Linear(2, 2), "worth")
    unscored = attach_maskiou_head(copy.deepcopy(model), rescore_outputs=False)
    with pytest.raises(ValueError, match="needs the head's rescoring"):
        set_keep(unscored, "worth")
    assert keep_setting(set_keep(unscored, "all")) == "all"


def test_the_scripted_model_applies_the_switch_equal_to_eager(fitted):
    model, _, _ = fitted
    on = set_keep(copy.deepcopy(model), "worth")
    scripted = torch.jit.script(on)
    with torch.no_grad():
        _, out = scripted(images())
    eager = run(on)
    for a, b in zip(eager, out):
        for k in FIELDS:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    # the switch is a buffer of the scripted model too: turned off there, every detection
    scripted.roi_heads.maskiou_head.calibration.keep_worth_only.fill_(False)
    with torch.no_grad():
        _, off = scripted(images())
    assert [len(r["scores"]) for r in off] == [len(r["scores"]) for r in run(model)]
    assert sum(len(r["scores"]) for r in off) > sum(len(r["scores"]) for r in out)


def test_the_onnx_model_applies_the_switch_equal_to_eager(tmp_path):
    """The shipped add-on (a trained detector: random weights leave mask probabilities at 0.5,
    where ONNX Runtime's rounding flips pixels, switch or not) with hand-set thresholds."""
    pytest.importorskip("onnxruntime")
    from maskiou.evaluation.benchmark import shipped_checkpoint
    from maskiou.models.checkpoint import save_atomic
    from maskiou.models.load import load_trained_model
    from maskiou.training.deploy import export_onnx, run_onnx

    save_atomic(shipped_checkpoint("torchvision_addon"), tmp_path / "addon.pt")
    model, _ = load_trained_model(tmp_path / "addon.pt")
    g = torch.Generator().manual_seed(0)
    pictures = [torch.rand(3, 128, 128, generator=g), torch.rand(3, 96, 128, generator=g)]
    with torch.no_grad():
        every = [model([image])[0] for image in pictures]
    scores = torch.cat([r["scores"] for r in every])
    labels = torch.cat([r["labels"] for r in every])
    cal = model.roi_heads.maskiou_head.calibration
    thresholds = [0.0] * len(cal.class_thresholds)
    for label in labels.unique().tolist():
        if int((labels == label).sum()) >= 2:
            thresholds[label] = threshold_between(scores[labels == label])
    cal.set_class_thresholds(thresholds)
    on = set_keep(model, "worth")
    data = export_onnx(on, pictures[:1])
    dropped = 0
    for image, full in zip(pictures, every):  # the second: another size, dynamic axes
        with torch.no_grad():
            eager = on([image])[0]
        onnx = run_onnx(data, image)
        dropped += len(full["scores"]) - len(eager["scores"])
        assert len(eager["scores"]) > 0 and onnx["scores"].shape == eager["scores"].shape
        order = same_rows(onnx, eager)
        for k in ("boxes", "scores", "cls_scores", "mask_quality", "maskness", "masks"):
            torch.testing.assert_close(onnx[k][order], eager[k], rtol=1e-3, atol=1e-4, msg=k)
        assert torch.equal(onnx["labels"][order], eager["labels"])
    assert dropped > 0  # the graph filtered something


def test_the_switch_survives_the_state_dict_and_old_state_dicts_load_off(fitted):
    model, everything, t1 = fitted
    buf = io.BytesIO()
    torch.save(set_keep(copy.deepcopy(model), "worth").state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    key = "roi_heads.maskiou_head.calibration.keep_worth_only"
    assert state[key].dtype == torch.bool and bool(state[key])
    fresh = build()  # switch off, no thresholds
    fresh.load_state_dict(state)
    assert keep_setting(fresh) == "worth"
    assert_equal(run(fresh), by_hand(everything, t1))
    # a state dict written before the switch (no such key): it loads, switched off
    del state[key]
    older = build(keep="worth")
    older.load_state_dict(state)
    assert keep_setting(older) == "all"
    assert_equal(run(older), everything)


def test_the_add_on_collection_sees_every_detection_with_the_switch_on(fitted):
    from maskiou import find_adapter

    model, everything, _ = fitted
    on = set_keep(copy.deepcopy(model), "worth")
    records = find_adapter(on).collect(on, images())
    assert [len(r["boxes"]) for r in records] == [len(r["boxes"]) for r in everything]
    assert keep_setting(on) == "worth"


def test_predict_keep_returns_only_the_kept_masks(fitted):
    from maskiou.evaluation.predict import predict

    model, everything, t1 = fitted

    class Two(torch.utils.data.Dataset):
        label_to_cat_id = {1: 1, 2: 2}

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return images()[i], {"image_id": torch.tensor(i + 10)}

    every = predict(model, Two(), progress=False)
    worth = predict(model, Two(), progress=False, keep=True)
    assert len(every) == sum(len(r["scores"]) for r in everything)
    assert len(worth) == sum(len(r["scores"]) for r in by_hand(everything, t1))
    assert keep_setting(model) == "all"  # predict's option does not touch the model's switch


def test_the_export_cli_writes_the_switch_into_the_slim_copy_and_the_scripted_model(tmp_path):
    from demo.testing import write_tiny_checkpoint, write_tiny_plain_checkpoint
    from maskiou.models.load import load_trained_model
    from maskiou.training.export import main

    names = ["__background__", "rectangle", "ring"]
    src = write_tiny_checkpoint(tmp_path / "tiny.pt", names)
    args = [str(src), str(tmp_path / "slim.pt"), "--torchscript", str(tmp_path / "m.ts")]
    assert main([*args, "--keep", "worth"]) == 0
    slim, _ = load_trained_model(tmp_path / "slim.pt")
    assert keep_setting(slim) == "worth"
    scripted = torch.jit.load(str(tmp_path / "m.ts"))
    assert bool(scripted.roi_heads.maskiou_head.calibration.keep_worth_only)
    assert main([str(tmp_path / "slim.pt"), str(tmp_path / "again.pt")]) == 0  # kept as it is
    assert keep_setting(load_trained_model(tmp_path / "again.pt")[0]) == "worth"
    assert main([str(tmp_path / "slim.pt"), str(tmp_path / "off.pt"), "--keep", "all"]) == 0
    assert keep_setting(load_trained_model(tmp_path / "off.pt")[0]) == "all"
    plain = write_tiny_plain_checkpoint(tmp_path / "plain.pt", names)
    assert main([str(plain), str(tmp_path / "p.pt"), "--keep", "worth"]) == 2
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_on_a_gpu_the_switch_keeps_what_kept_keeps(fitted):
    model, _, _ = fitted
    gpu = copy.deepcopy(model).cuda()
    with torch.no_grad():
        every = gpu([image.cuda() for image in images()])
        worth = set_keep(gpu, "worth")([image.cuda() for image in images()])
    assert_equal(worth, kept(every, gpu))
    assert sum(len(r["scores"]) for r in worth) < sum(len(r["scores"]) for r in every)
