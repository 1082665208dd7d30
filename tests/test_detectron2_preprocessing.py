"""The detectron2 adapter's ``predict`` takes an image through detectron2's own test-time path
(``DefaultPredictor``'s: the uint8 image in ``INPUT.FORMAT``, ``ResizeShortestEdge`` to
``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``), so that a plain model's detections are
``DefaultPredictor``'s, on images larger and smaller than the test size. The model is the shipped
plain detectron2 detector (a trained one: real detections), its test size 128 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see "
                    "docs/frameworks/detectron2.md)")

from detectron2.engine import DefaultPredictor  # noqa: E402
from PIL import Image  # noqa: E402

from maskiou.attach import find_adapter  # noqa: E402
from maskiou.data.coco import CocoInstanceDataset  # noqa: E402
from maskiou.evaluation.benchmark import embedded_val  # noqa: E402
from maskiou.models.load import load_trained_model  # noqa: E402
from maskiou.models.paths import shipped_model_path  # noqa: E402
from maskiou_integrations.detectron2_models import config_from_yaml  # noqa: E402
from maskiou_integrations.detectron2_rcnn import uint8_image  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def test_uint8_image_gives_back_the_bytes_an_image_file_had():
    """The COCO reader's image is bytes / 255 in float32; back to bytes by rounding (0.4 of a
    byte below or above still rounds to it; truncation would give k - 1 for some k)."""
    k = torch.arange(256, dtype=torch.float32)
    exact = (k / 255.0).expand(3, 4, 256)
    assert torch.equal(torch.from_numpy(uint8_image(exact)).permute(2, 0, 1).long(),
                       k.long().expand(3, 4, 256))
    near = torch.tensor([[[(7 - 0.4) / 255, (7 + 0.4) / 255, -0.1, 1.2]]]).expand(3, 1, 4)
    assert uint8_image(near)[0, :, 0].tolist() == [7, 7, 0, 255]
    assert uint8_image(near).shape == (1, 4, 3) and uint8_image(near).dtype == np.uint8


@pytest.fixture(scope="module")
def shipped_plain():
    """The shipped plain detector through maskiou's loader, and a DefaultPredictor of the same
    config holding the same weights."""
    path = shipped_model_path("detectron2_plain")
    model, meta = load_trained_model(path)
    from maskiou.models.checkpoint import load_checkpoint

    cfg = config_from_yaml(load_checkpoint(path)["detector"]["config"])
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FORMAT) == \
        (128, 128, "BGR")
    predictor = DefaultPredictor(cfg)  # MODEL.WEIGHTS is empty: random weights, replaced here
    predictor.model.load_state_dict(model.state_dict())
    return model, predictor


def embedded_images(n: int) -> list[np.ndarray]:
    """The first ``n`` embedded validation images as their files hold them (uint8 HWC RGB)."""
    val_json, val_images = embedded_val(progress=False)
    data = CocoInstanceDataset(val_json, val_images)
    return [np.asarray(Image.open(data.image_path(i)).convert("RGB")) for i in range(n)]


def resized(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def test_predict_of_a_plain_model_equals_default_predictor_above_and_below_the_test_size(
        shipped_plain):
    model, predictor = shipped_plain
    adapter = find_adapter(model)
    originals = embedded_images(3)  # 128 x 128, the test size
    cases = [resized(originals[0], 384, 384),   # 3x: detectron2 shrinks it (antialiased)
             resized(originals[1], 64, 64),     # 0.5x: detectron2 enlarges it
             resized(originals[2], 384, 256)]   # 3x 2x: MAX_SIZE_TEST bounds the long side
    bgr = [np.ascontiguousarray(rgb[:, :, ::-1]) for rgb in cases]  # DefaultPredictor's input
    images = [torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255 for rgb in cases]
    rng_state = np.random.get_state()
    records = adapter.predict(model, images)  # one call: the two 128 x 128 ones in a batch
    after = np.random.get_state()
    total = 0
    for rgb, image, batched in zip(bgr, images, records):
        with torch.no_grad():
            want = predictor(rgb)["instances"]
        (got,) = adapter.predict(model, [image])  # one image, as DefaultPredictor takes it
        n = len(want)
        total += n
        assert len(got["boxes"]) == n, rgb.shape
        assert got["labels"].tolist() == (want.pred_classes + 1).tolist()  # same order
        assert torch.equal(got["scores"], want.scores)
        assert (got["boxes"] - want.pred_boxes.tensor).abs().max() <= 0.5
        assert got["masks"].shape == (n, 1, *rgb.shape[:2])
        assert torch.equal(got["masks"][:, 0].bool(), want.pred_masks)
        # in a batch of several images: the same detections (a batch of one size is one
        # computation; the floats of a batch of two differ from one's in the last bits)
        assert batched["labels"].tolist() == got["labels"].tolist()
        assert torch.allclose(batched["scores"], got["scores"], rtol=0, atol=1e-5)
        assert (batched["boxes"] - got["boxes"]).abs().max() <= 0.5
    assert total >= 15  # a trained detector: the comparison is not of empty lists
    # DefaultPredictor's ResizeShortestEdge draws its fixed size from numpy's global random
    # state; the adapter builds the same transform without touching it
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(rng_state, after))



def test_collect_on_images_of_several_sizes_keeps_each_detections_head_inputs(shipped_plain):
    """The add-on's collection on a list of images the model sees at different sizes (run one
    batch per size): each record's head inputs are its own detections' (the head applied to
    them gives ``predict``'s ``mask_quality``, row for row)."""
    import copy

    from maskiou import attach_maskiou_head

    model = copy.deepcopy(shipped_plain[0])
    torch.manual_seed(0)
    attach_maskiou_head(model, score_inputs=2)
    model.eval()
    adapter = find_adapter(model)
    rgb = embedded_images(2)
    images = [torch.from_numpy(x.copy()).permute(2, 0, 1).float() / 255
              for x in (resized(rgb[0], 256, 256), rgb[1], resized(rgb[0], 64, 96))]
    model.roi_heads.maskiou_rescore = False  # predict in the detector's order, as collect
    predicted = adapter.predict(model, images)
    collected = adapter.collect(model, images)
    head = model.roi_heads.maskiou_head
    for p, c in zip(predicted, collected):
        assert len(c["boxes"]) == len(p["boxes"]) > 0
        assert torch.equal(c["boxes"], p["boxes"]) and torch.equal(c["scores"], p["cls_scores"])
        with torch.no_grad():
            pred = head(c["roi_features"], c["mask_probs"],
                        torch.stack([c["scores"], c["maskness"]], 1))
        quality = pred[torch.arange(len(pred)), c["labels"]].clamp(0, 1)
        assert torch.allclose(quality, p["mask_quality"], atol=1e-5)


def test_at_the_test_size_the_model_sees_what_it_saw_before(shipped_plain):
    """The embedded images are 128 px, the shipped detector's test size: nothing is resized,
    and the uint8 round trip gives the model the very tensor the adapter gave it before
    (bytes / 255 * 255, BGR), so the main job's detectron2 figures do not move."""
    from maskiou_integrations.detectron2_rcnn import _model_inputs

    model = shipped_plain[0]
    val_json, val_images = embedded_val(progress=False)
    data = CocoInstanceDataset(val_json, val_images)
    images = [data[i][0] for i in range(16)]
    for image, x in zip(images, _model_inputs(model, images)):
        assert image.shape[-2:] == (128, 128)
        assert torch.equal(x["image"], (image * 255.0).flip(0))
        assert (x["height"], x["width"]) == (128, 128)
