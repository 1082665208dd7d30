"""The worked adapter of examples/custom_adapter.py: the head trains and scores on a third kind of
segmenter, and the whole add-on (collection, head with score inputs, recalibration, checkpoint,
evaluation) runs on it through the contract alone."""

import pytest
import torch
from conftest import square_target
from custom_adapter import TinySegmenter, TinySegmenterAdapter, tiny_checkpoint

from maskiou import attach_maskiou_head, register_adapter
from maskiou.attach import _registered


def test_second_adapter_trains_one_step_and_infers():
    torch.manual_seed(0)
    model = attach_maskiou_head(TinySegmenter(num_classes=3), adapter=TinySegmenterAdapter(),
                                conv_channels=32, fc_dim=64, score_inputs=2)
    head = model.maskiou_head
    assert head.in_channels == 16 and head.num_classes == 3 and head.score_inputs == 2
    model.train()
    images = torch.rand(2, 3, 64, 64)
    targets = [square_target(), square_target(box=(30, 20, 60, 50), label=2)]
    seen = []
    head.register_forward_hook(lambda m, i, o: seen.append(i[2]))
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_mask", "loss_maskiou"}
    assert losses["loss_maskiou"].item() > 0
    # the head's score inputs in training: the GT class's probability and the maskness
    assert seen[0].shape == (2, 2) and bool(((seen[0] >= 0) & (seen[0] <= 1)).all())
    w0 = head.predictor.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(head.predictor.weight, w0)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert [len(r["scores"]) for r in out] == [20, 20]
    for r in out:
        torch.testing.assert_close(r["scores"], r["cls_scores"] * r["mask_quality"])
        assert bool((r["scores"][:-1] >= r["scores"][1:]).all())


def test_registered_adapter_is_found_without_argument():
    adapter = register_adapter(TinySegmenterAdapter())
    try:
        model = attach_maskiou_head(TinySegmenter(num_classes=2))
        assert model.maskiou_head.num_classes == 2
    finally:
        _registered.remove(adapter)


@pytest.mark.filterwarnings("ignore:the add-on did not beat maskness")  # a random detector
def test_the_add_on_runs_end_to_end_on_the_example_segmenter(tmp_path):
    """maskiou-addon's whole flow on a third framework: its checkpoint, the collection through
    ``collect``, the add-on's default head (the class score and maskness as inputs), the
    recalibration, the add-on checkpoint, and evaluation through ``predict``."""
    from maskiou.addon.config import AddonConfig
    from maskiou.addon.run import train_addon
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.data.synthetic import generate_synthetic_coco
    from maskiou.evaluation.benchmark import evaluate_checkpoint
    from maskiou.models.checkpoint import save_atomic
    from maskiou.models.load import load_trained_model

    data = generate_synthetic_coco(tmp_path / "data", 24, 6, seed=3, image_size=64,
                                   progress=False)
    train = CocoInstanceDataset(data.train_json, data.train_images)
    adapter = register_adapter(TinySegmenterAdapter())
    try:
        torch.manual_seed(0)
        detector = TinySegmenter(num_classes=len(train.class_names))
        save_atomic(tiny_checkpoint(detector, train.class_names, train.label_to_cat_id),
                    tmp_path / "detector.pt")
        cfg = AddonConfig(epochs=2, batch_size=64, zoom="none", crossfit_folds=0)
        assert cfg.head.score_inputs == 2  # the add-on's default head
        path = train_addon(tmp_path / "detector.pt", data.train_json, data.train_images,
                           tmp_path / "addon", cfg, progress=False, log=lambda m: None)
        model, meta = load_trained_model(path)
        assert meta["framework"] == "tiny-segmenter" and meta["maskiou_head"]["score_inputs"] == 2
        assert model.maskiou_head.score_inputs == 2
        # 20 detections on every image, and on the mirror of the 19 the head trains on (a fifth,
        # 5 images, is held out for the recalibration)
        assert meta["addon"]["num_detections"] == (24 + 19) * 20
        # the frozen detector came back bit for bit
        for k, v in detector.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
        val = CocoInstanceDataset(data.val_json, data.val_images)
        m = evaluate_checkpoint(path, val, "cpu", progress=False)
        assert m["framework"] == "tiny-segmenter" and m["has_head"]
        assert {"cls", "maskness", "rescored", "recalibrated", "oracle"} <= set(m["segm"])
        assert m["num_detections"] == 6 * 20
    finally:
        _registered.remove(adapter)
