"""The views of an add-on image (maskiou.addon.views): each is seeded by the image id, and a
view's detections come back onto the image exactly, judged against what the view showed."""

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from maskiou.addon.views import (
    ZOOM_RANGE,
    photometric,
    shift_back,
    to_image,
    view_of,
    visible_window,
    zoom_geometry,
)
from maskiou.records import encode_masks, output_to_detections, true_mask_ious

H, W = 40, 60


def test_photometric_view_is_a_seeded_brightness_and_contrast_jitter():
    flat = torch.full((3, 4, 4), 0.5)
    g = torch.Generator().manual_seed(7)
    u = torch.rand(2, generator=g).tolist()
    assert torch.allclose(photometric(flat, 7), torch.full((3, 4, 4), 0.5 * (0.75 + 0.5 * u[1])))
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = view_of(img, "photometric", 3)
    assert torch.equal(out, view_of(img, "photometric", 3)) and not torch.equal(out, img)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(view_of(img, "mirror", 3), img.flip(-1))
    with pytest.raises(ValueError, match="view must be one of"):
        view_of(img, "rotate", 3)


@pytest.mark.parametrize("image_id", range(20))
def test_zoom_views_crop_inside_and_paste_around_the_image_by_a_seeded_factor(image_id):
    img = torch.rand(3, H, W, generator=torch.Generator().manual_seed(image_id))
    dx, dy, vh, vw = zoom_geometry("zoom-in", image_id, H, W)
    assert (dx, dy, vh, vw) == zoom_geometry("zoom-in", image_id, H, W)
    assert ZOOM_RANGE[0] - 0.03 <= vh / H <= ZOOM_RANGE[1] + 0.03
    assert 0 <= dx <= W - vw and 0 <= dy <= H - vh
    crop = view_of(img, "zoom-in", image_id)
    assert torch.equal(crop, img[:, dy:dy + vh, dx:dx + vw])
    assert visible_window("zoom-in", image_id, H, W) == (dx, dy, dx + vw, dy + vh)

    dx, dy, vh, vw = zoom_geometry("zoom-out", image_id, H, W)
    assert ZOOM_RANGE[0] - 0.03 <= H / vh <= ZOOM_RANGE[1] + 0.03
    assert -(vw - W) <= dx <= 0 and -(vh - H) <= dy <= 0
    canvas = view_of(img, "zoom-out", image_id)
    assert canvas.shape == (3, vh, vw)
    assert torch.equal(canvas[:, -dy:-dy + H, -dx:-dx + W], img)  # the image, untouched
    outside = torch.ones(vh, vw, dtype=torch.bool)
    outside[-dy:-dy + H, -dx:-dx + W] = False
    if outside.any():  # the rest of the canvas is the image's mean colour
        assert torch.allclose(canvas[:, outside], img.mean(dim=(1, 2))[:, None].expand(3, -1))
    assert visible_window("zoom-out", image_id, H, W) is None


def test_shift_back_moves_boxes_and_reframes_masks_by_hand():
    masks = torch.ones(1, 1, 4, 4)
    out = shift_back({"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "masks": masks,
                      "scores": torch.tensor([0.9])}, dx=2, dy=1, height=5, width=5)
    assert out["boxes"].tolist() == [[2.0, 1.0, 5.0, 5.0]]  # x2 = 6 is clipped to the image
    expected = torch.zeros(1, 1, 5, 5)
    expected[..., 1:5, 2:5] = 1
    assert torch.equal(out["masks"], expected)
    assert torch.equal(out["scores"], torch.tensor([0.9]))
    back = shift_back({"boxes": torch.tensor([[3.0, 2.0, 6.0, 4.0]]),
                       "masks": torch.ones(1, 1, 8, 8)},
                      dx=-3, dy=-2, height=4, width=4)  # a canvas: the image is at (3, 2)
    assert back["boxes"].tolist() == [[0.0, 0.0, 3.0, 2.0]]
    assert torch.equal(back["masks"], torch.ones(1, 1, 4, 4))


def _coco(mask: torch.Tensor, image_id: int) -> COCO:
    rle = encode_masks(mask[None])[0]
    coco = COCO()
    coco.dataset = {"images": [{"id": image_id, "file_name": "a.png", "height": H, "width": W}],
                    "categories": [{"id": 3, "name": "thing"}],
                    "annotations": [{"id": 1, "image_id": image_id, "category_id": 3,
                                     "segmentation": rle, "area": float(mask.sum()),
                                     "bbox": [0, 0, W, H], "iscrowd": 0}]}
    coco.createIndex()
    return coco


@pytest.mark.parametrize("view", ["zoom-in", "zoom-out", "mirror"])
@pytest.mark.parametrize("image_id", [1, 5, 12])
def test_the_ground_truth_seen_in_a_view_comes_back_with_true_mask_iou_one(view, image_id):
    """The perfect detection in a view: the GT mask as the view shows it. Brought back onto the
    image it has MaskIoU exactly 1 (against the visible part of the GT in a crop)."""
    gt = torch.zeros(H, W, dtype=torch.bool)
    gt[5:35, 3:57] = True  # large: a crop cuts it
    seen = view_of(gt[None].float(), view, image_id)[0] if view != "zoom-out" else None
    if view == "zoom-out":
        dx, dy, vh, vw = zoom_geometry(view, image_id, H, W)
        seen = torch.zeros(vh, vw)
        seen[-dy:-dy + H, -dx:-dx + W] = gt.float()
    ys, xs = torch.where(seen > 0)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    out = {"boxes": box, "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
           "masks": seen[None, None], "maskness": torch.tensor([1.0])}
    back = to_image(out, view, image_id, H, W)
    assert back["masks"].shape == (1, 1, H, W)
    dets = output_to_detections(back, image_id, {1: 3})
    window = visible_window(view, image_id, H, W)
    windows = {image_id: window} if window else None
    assert true_mask_ious(dets, _coco(gt, image_id), windows) == pytest.approx(np.array([1.0]))
    if view == "zoom-in":  # against the whole GT: only the share the crop showed
        x0, y0, x1, y1 = window
        shown = gt[y0:y1, x0:x1].sum().item() / gt.sum().item()
        assert shown < 1
        assert true_mask_ious(dets, _coco(gt, image_id)) == pytest.approx(np.array([shown]))
