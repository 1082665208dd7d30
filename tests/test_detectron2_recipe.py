"""The detectron2 recipe on data it was not tuned on: the input size it takes from the images,
and what detectron2's own data path makes of a third-party COCO file (600-px images, polygon
masks, boolean ``iscrowd``, an unused ``background`` category with id 0). No training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("detectron2", reason="detectron2 is not installed (see "
                    "docs/frameworks/detectron2.md)")

from maskiou_integrations.detectron2_models import (  # noqa: E402
    EMBEDDED_RECIPE,
    RECIPE_INPUT_SIZE,
    embedded_config,
    input_size_for,
    input_size_values,
    register_dataset,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def test_the_input_size_is_the_images_median_longer_side_at_most_128():
    assert RECIPE_INPUT_SIZE == 128
    assert input_size_for([(128, 128)] * 5) == 128  # the embedded images: unchanged
    assert input_size_for([(600, 600), (600, 450), (450, 600)]) == 128  # capped
    assert input_size_for([(48, 64), (64, 64), (96, 64)]) == 64  # median longer side
    assert input_size_for([(40, 30), (100, 90)]) == 40  # lower median of an even count
    assert input_size_for([(600, 600)], cap=256) == 256
    with pytest.raises(ValueError, match="no image sizes"):
        input_size_for([])


def test_the_embedded_size_gives_the_recipe_the_shipped_detector_was_trained_with():
    cfg = embedded_config(7, **input_size_values(128))
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == EMBEDDED_RECIPE["INPUT.MIN_SIZE_TRAIN"] == (128,)
    assert cfg.INPUT.MAX_SIZE_TRAIN == cfg.INPUT.MIN_SIZE_TEST == cfg.INPUT.MAX_SIZE_TEST == 128
    cfg = embedded_config(7, **input_size_values(96))
    assert (tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST,
            cfg.INPUT.MAX_SIZE_TEST) == ((96,), 96, 96, 96)


def _third_party(tmp_path):
    """One 600 x 600 image: a 300 x 150 rectangle of category 2 at (60, 90), a 150 x 150
    square of category 5 at (300, 300), a crowd region (``iscrowd`` true) of category 2 and
    the unused ``background`` category with id 0."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((600, 600, 3), 127, np.uint8)).save(images / "a.png")

    def rect(x, y, w, h):
        return [[x, y, x + w, y, x + w, y + h, x, y + h]]

    anns = [
        {"id": 1, "image_id": 7, "category_id": 2, "segmentation": rect(60, 90, 300, 150),
         "bbox": [60, 90, 300, 150], "area": 45000.0, "iscrowd": False},
        {"id": 2, "image_id": 7, "category_id": 5, "segmentation": rect(300, 300, 150, 150),
         "bbox": [300, 300, 150, 150], "area": 22500.0, "iscrowd": False},
        {"id": 3, "image_id": 7, "category_id": 2, "segmentation": rect(0, 480, 600, 120),
         "bbox": [0, 480, 600, 120], "area": 72000.0, "iscrowd": True},
    ]
    cats = [{"id": 0, "name": "background"}, {"id": 2, "name": "box"},
            {"id": 5, "name": "square"}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.png", "height": 600,
                                            "width": 600}],
                                "annotations": anns, "categories": cats}))
    return path, images


def test_a_third_party_file_reaches_detectron2_at_the_recipes_size_with_maskious_classes(
        tmp_path):
    """Through detectron2's DatasetMapper as DefaultTrainer runs it: the image at 128 px, the
    crowd region left out, categories 2 and 5 as classes 0 and 1 (background id 0 skipped),
    the polygons rasterised at the new size."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    from maskiou.data.coco import CocoInstanceDataset

    json_path, images = _third_party(tmp_path)
    data = CocoInstanceDataset(json_path, images)
    assert data.class_names == ["__background__", "box", "square"]
    size = input_size_for([data.get_height_and_width(i) for i in range(len(data))])
    assert size == 128
    cfg = embedded_config(data.num_classes - 1, **input_size_values(size))
    (record,) = DatasetCatalog.get(register_dataset(data))
    assert [(a["category_id"], bool(a["iscrowd"])) for a in record["annotations"]] == [
        (0, False), (1, False), (0, True)]
    cfg.INPUT.RANDOM_FLIP = "none"  # the recipe's resize alone, from its config
    mapper = DatasetMapper(cfg, is_train=True)
    out = mapper(record)
    assert tuple(out["image"].shape) == (3, 128, 128)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 1]  # the crowd region is not a target
    scale = 128 / 600
    boxes = inst.gt_boxes.tensor.numpy()
    np.testing.assert_allclose(boxes, np.array([[60, 90, 360, 240], [300, 300, 450, 450]])
                               * scale, atol=1e-4)
    areas = inst.gt_masks.tensor.sum(dim=(1, 2)).numpy()
    np.testing.assert_allclose(areas, [45000 * scale ** 2, 22500 * scale ** 2], rtol=0.06)


def test_whole_pixel_coordinates_are_registered_as_floats_and_survive_the_resize():
    """detectron2's ResizeTransform scales coordinates in place in an array of the input's
    dtype: whole-pixel boxes and polygons came out truncated (12.8 -> 12)."""
    from detectron2.data import transforms as T

    from maskiou_integrations.detectron2_models import float_coordinates

    ann = {"bbox": [60, 90, 300, 150], "segmentation": [[60, 90, 360, 90, 360, 240]],
           "category_id": 1}
    out = float_coordinates(ann)
    assert out["bbox"] == [60.0, 90.0, 300.0, 150.0] and ann["bbox"] == [60, 90, 300, 150]
    assert all(isinstance(v, float) for v in out["bbox"] + out["segmentation"][0])
    resize = T.ResizeTransform(600, 600, 128, 128)
    xy = np.array([[60, 90], [360, 240]])
    assert resize.apply_coords(xy.copy()).tolist() == [[12, 19], [76, 51]]  # the truncation
    np.testing.assert_allclose(resize.apply_coords(xy.astype(float)),
                               [[12.8, 19.2], [76.8, 51.2]])
    rle = {"size": [4, 4], "counts": "abc"}
    assert float_coordinates({"segmentation": rle})["segmentation"] is rle  # RLE as it is


def test_the_adamw_trainer_builds_adamw_with_the_torchvision_recipes_values():
    import torch

    from maskiou_integrations.detectron2_models import (
        ADAMW_VALUES,
        _adamw_trainer,
        build_detector,
        train_embedded,
    )

    cfg = embedded_config(2, **ADAMW_VALUES)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (
        0.003, 50, 0.01)
    opt = _adamw_trainer().build_optimizer(cfg, build_detector(cfg))
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["lr"] for g in opt.param_groups} == {0.003}
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4, 0.0}  # none on norms
    with pytest.raises(ValueError, match="optimizer must be sgd or adamw"):
        train_embedded("unused", optimizer="adam")


def test_the_recipe_trains_with_adamw_and_the_shipped_detector_again_with_sgd(monkeypatch):
    """``train`` (the command and ``train_embedded``) uses AdamW unless told ``--optimizer
    sgd``; ``coco_eval.py --retrain`` (the adapter's ``train_embedded``) trains the shipped
    detector the way it was trained, with SGD."""
    import inspect

    import maskiou_integrations.detectron2_models as models
    from maskiou_integrations.detectron2_rcnn import Detectron2RCNNAdapter

    assert inspect.signature(models.train_embedded).parameters["optimizer"].default == "adamw"
    calls = []

    def fake(output_dir, **kwargs):
        calls.append(kwargs["optimizer"])
        return output_dir + "/model_final.pt"

    monkeypatch.setattr(models, "train_embedded", fake)
    assert models.main(["train", "--output-dir", "out"]) == 0
    assert models.main(["train", "--output-dir", "out", "--optimizer", "sgd"]) == 0
    assert Detectron2RCNNAdapter().train_embedded("out") == "out/model_final.pt"
    assert calls == ["adamw", "sgd", models.SHIPPED_OPTIMIZER] == ["adamw", "sgd", "sgd"]
