"""The views of an add-on image the detector can be run on in the collection pass, and the way
back from a view's detections to the image's own pixels.

A view shows the detector the same objects in another way, so that one labeled image gives
several sets of detections to train the head on:

- ``image``: the image itself (what the detector meets at test time; the only view the
  recalibration and every held-out measurement use);
- ``mirror``: the image mirrored left to right;
- ``photometric``: a brightness and contrast jitter;
- ``zoom-in``: a crop of 60-85% of the image's sides, which the detector's own resize enlarges
  to its test size (objects 1.2-1.7x larger);
- ``zoom-out``: the image pasted into a canvas 1/0.6-1/0.85 times its sides, filled with the
  image's mean colour, which the detector's resize shrinks to its test size (objects 0.6-0.85x).

The two zoom views are scale jitter: a detector's transform resizes every input to its test
size, so resizing the image itself would change nothing; cropping and pasting does. Each draw
(factor and place) is fixed by the image id, so a collection is the same every time it runs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import clip_boxes_to_image

VIEWS = ("image", "mirror", "photometric", "zoom-in", "zoom-out")
SHARD_PREFIX = {"image": "orig", "mirror": "flip", "photometric": "photo", "zoom-in": "zin",
                "zoom-out": "zout"}
# the share of the image's sides a zoom view keeps (zoom-in) or gives (zoom-out): drawn in
ZOOM_RANGE = (0.6, 0.85)
_SALT = {"zoom-in": 1, "zoom-out": 2, "photometric": 0}


def _draws(image_id: int, view: str, n: int) -> list[float]:
    """``n`` uniform numbers in [0, 1) fixed by (image id, view)."""
    g = torch.Generator().manual_seed(int(image_id) + 1_000_003 * _SALT[view])
    return torch.rand(n, generator=g).tolist()


def photometric(image: Tensor, image_id: int) -> Tensor:
    """A brightness and contrast jitter of ``image`` (Tensor[3, H, W] in [0, 1]), the same for
    an image id every time: contrast x0.7-1.3 around the image's mean, brightness x0.75-1.25."""
    u = _draws(image_id, "photometric", 2)
    contrast, brightness = 0.7 + 0.6 * u[0], 0.75 + 0.5 * u[1]
    mean = image.mean()
    return ((image - mean) * contrast + mean * brightness).clamp(0.0, 1.0)


def zoom_geometry(view: str, image_id: int, height: int, width: int
                  ) -> tuple[int, int, int, int]:
    """Where a zoom view lies against its image: ``(dx, dy, view_height, view_width)`` with
    image pixel = view pixel + (dx, dy). ``zoom-in``: a crop (dx, dy >= 0, the view smaller than
    the image); ``zoom-out``: a canvas (dx, dy <= 0, the view larger)."""
    u = _draws(image_id, view, 3)
    f = ZOOM_RANGE[0] + (ZOOM_RANGE[1] - ZOOM_RANGE[0]) * u[0]
    if view == "zoom-in":
        vh, vw = max(1, round(height * f)), max(1, round(width * f))
        return round((width - vw) * u[1]), round((height - vh) * u[2]), vh, vw
    if view == "zoom-out":
        vh, vw = round(height / f), round(width / f)
        return -round((vw - width) * u[1]), -round((vh - height) * u[2]), vh, vw
    raise ValueError(f"not a zoom view: {view!r}")


def visible_window(view: str, image_id: int, height: int, width: int
                   ) -> tuple[int, int, int, int] | None:
    """The part of the image a view shows, ``(x0, y0, x1, y1)``, where it is not all of it
    (``zoom-in``); None for the other views. An object the crop cuts is judged against its
    visible part: the truth the detector could see, as at the border of any image."""
    if view != "zoom-in":
        return None
    dx, dy, vh, vw = zoom_geometry(view, image_id, height, width)
    return dx, dy, dx + vw, dy + vh


def view_of(image: Tensor, view: str, image_id: int) -> Tensor:
    """``image`` (Tensor[3, H, W] in [0, 1]) as the detector sees it in ``view`` (see
    :data:`VIEWS`)."""
    if view == "image":
        return image
    if view == "mirror":
        return image.flip(-1)
    if view == "photometric":
        return photometric(image, image_id)
    if view in ("zoom-in", "zoom-out"):  # the image on the view's frame: a crop or a canvas
        dx, dy, vh, vw = zoom_geometry(view, image_id, *image.shape[-2:])
        return reframe(image, -dx, -dy, vh, vw, fill=image.mean(dim=(1, 2), keepdim=True))
    raise ValueError(f"view must be one of {VIEWS}, got {view!r}")


def flip_back(output: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    """Detections of a mirrored image, mirrored back onto the original image (boxes and pasted
    masks; the head's inputs stay as the detector saw them)."""
    out = dict(output)
    b = output["boxes"]
    out["boxes"] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
    out["masks"] = output["masks"].flip(-1)
    return out


def reframe(x: Tensor, dx: int, dy: int, height: int, width: int,
            fill: Tensor | None = None) -> Tensor:
    """``x`` (Tensor[..., h, w]) placed on a frame Tensor[..., height, width], frame pixel =
    ``x`` pixel + (dx, dy): cut where it falls outside the frame, ``fill`` (broadcast to the
    frame, e.g. a colour Tensor[C, 1, 1]; default zero) where nothing of ``x`` lands."""
    framed = x.new_zeros(*x.shape[:-2], height, width)
    if fill is not None:
        framed[...] = fill
    x0, y0, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    w = min(width - x0, x.shape[-1] - sx)
    h = min(height - y0, x.shape[-2] - sy)
    if w > 0 and h > 0:
        framed[..., y0:y0 + h, x0:x0 + w] = x[..., sy:sy + h, sx:sx + w]
    return framed


def shift_back(output: dict[str, Tensor], dx: int, dy: int, height: int, width: int
               ) -> dict[str, Tensor]:
    """Detections of a zoom view moved onto the image (image pixel = view pixel + (dx, dy)):
    boxes shifted and clipped to the image, masks Tensor[n, 1, h, w] re-framed to
    Tensor[n, 1, height, width] (zero where the view did not show the image, cut where the
    view's canvas lay outside it)."""
    out = dict(output)
    shift = torch.tensor([dx, dy, dx, dy], dtype=output["boxes"].dtype,
                         device=output["boxes"].device)
    out["boxes"] = clip_boxes_to_image(output["boxes"] + shift, (height, width))
    out["masks"] = reframe(output["masks"], dx, dy, height, width)
    return out


def to_image(output: dict[str, Tensor], view: str, image_id: int, height: int, width: int
             ) -> dict[str, Tensor]:
    """One image's detections in ``view`` brought back to the image's own pixels."""
    if view == "mirror":
        return flip_back(output, width)
    if view in ("zoom-in", "zoom-out"):
        dx, dy, _, _ = zoom_geometry(view, image_id, height, width)
        return shift_back(output, dx, dy, height, width)
    return output
