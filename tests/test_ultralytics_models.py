"""ultralytics YOLO-seg models: the maskiou checkpoint (plain tensors and JSON-like values,
float16) and the model rebuilt from it, prediction as ultralytics' predictor makes it (NMS
indices, masks equal to its process_mask), the neck features the adapter will read, and
training with no network attempt. Small random-weight YOLO11n-seg models at 64 px."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from offline_ultralytics import require_offline_ultralytics
from PIL import Image

require_offline_ultralytics()  # a skip without ultralytics; no network attempt, ever

from ultralytics.nn.tasks import SegmentationModel  # noqa: E402
from ultralytics.utils import nms, ops  # noqa: E402

from maskiou.models.checkpoint import save_atomic  # noqa: E402
from maskiou_integrations import ultralytics_models as um  # noqa: E402
from maskiou_integrations.ultralytics_predict import soft_masks, split_output  # noqa: E402
from maskiou_integrations.ultralytics_yolo import detect  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["__background__", "a", "b", "c"]
LABEL_TO_CAT = {1: 5, 2: 6, 3: 9}


def tiny_model(confident: bool = True) -> SegmentationModel:
    """A YOLO11n-seg of 3 classes with random weights and batch-norm statistics; with
    ``confident`` its class logits start at 0 (scores near 0.5), so NMS keeps detections."""
    torch.manual_seed(0)
    model = SegmentationModel(um.ARCHITECTURE, nc=3, verbose=False)
    model.names = dict(enumerate(NAMES[1:]))
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 64, 64))  # running statistics that are not the defaults
        if confident:
            for branch in model.model[-1].cv3:
                branch[-1].bias.zero_()
    return model.eval()


def ultralytics_weights(model: SegmentationModel, path: Path) -> Path:
    """The model as ultralytics' trainer leaves ``best.pt`` (optimizer stripped: float16)."""
    torch.save({"model": copy.deepcopy(model).half(), "ema": None, "epoch": -1,
                "train_args": {"imgsz": 64, "task": "segment"}}, path)
    return path


def test_checkpoint_is_plain_float16_and_rebuilds_the_model(tmp_path):
    model = tiny_model()
    ckpt = um.checkpoint_from_ultralytics(ultralytics_weights(model, tmp_path / "best.pt"),
                                          NAMES, LABEL_TO_CAT, {"train_split": "embedded"})
    save_atomic(ckpt, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # no pickled objects
    assert loaded["framework"] == "ultralytics" and loaded["schema"] == um.SCHEMA
    assert loaded["maskiou_head"] is None
    assert loaded["class_names"] == NAMES and loaded["label_to_cat_id"] == LABEL_TO_CAT
    detector = loaded["detector"]
    assert json.loads(json.dumps(detector)) == detector  # JSON-like
    assert (detector["imgsz"], detector["conf"], detector["iou"], detector["max_det"]) == \
        (64, 0.001, 0.7, 100)
    floats = [v for v in loaded["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    rebuilt = um.load_model(loaded)
    assert not rebuilt.training and next(rebuilt.parameters()).dtype == torch.float32
    assert rebuilt.names == model.names
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = split_output(rebuilt(x))
        rounded = split_output(copy.deepcopy(model).half().float()(x))
        full = split_output(model(x))
    for a, b, c in zip(out, rounded, full):
        assert torch.equal(a, b)  # the float16 weights, exactly
        assert torch.allclose(a, c, atol=0.02, rtol=0.01)  # float16 rounding of the weights


def test_a_model_of_other_classes_is_refused(tmp_path):
    path = ultralytics_weights(tiny_model(), tmp_path / "best.pt")
    with pytest.raises(ValueError, match="classes"):
        um.checkpoint_from_ultralytics(path, ["__background__", "a", "c", "b"], LABEL_TO_CAT)


def test_weights_naming_anything_but_module_classes_are_refused_unread(tmp_path):
    """ultralytics' ``best.pt`` is a pickle; only torch.nn / ultralytics.nn module classes may
    be named in it, checked before anything is unpickled."""
    marker = tmp_path / "ran"
    path = tmp_path / "best.pt"
    torch.save({"model": tiny_model(), "ema": None, "train_args": {"imgsz": 64},
                "payload": Payload(str(marker))}, path)
    with pytest.raises(ValueError, match=r"refused: it would unpickle builtins\.getattr, "
                       r"pathlib\.Path, pathlib\.PosixPath, and only torch\.nn or "
                       r"ultralytics\.nn module classes are allowed$"):
        um.checkpoint_from_ultralytics(path, NAMES, LABEL_TO_CAT)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="not found"):
        um.read_ultralytics_weights(tmp_path / "missing.pt")


class Payload:
    """Runs code when unpickled (``__reduce__`` calls ``Path.touch``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_the_tests_opt_in_puts_pil_and_torch_save_back(tmp_path):
    """ultralytics patches ``PIL.Image.open`` (an unidentified file makes it pip-install
    pi-heif) and ``torch.save`` when imported; the tests' opt-in (tests/offline_ultralytics.py)
    puts both back, so that maskiou's own messages are what the tests see."""
    from offline_ultralytics import offline_ultralytics
    from ultralytics.utils import patches

    offline_ultralytics()
    assert Image.open is patches._image_open and torch.save is patches._torch_save
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not an image")
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(fake)


def image(height: int = 64, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    im = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    im[10:40, 12:44] = 220
    return im


def predict(model: SegmentationModel, im: np.ndarray, imgsz: int = 64, max_det: int = 20
            ) -> dict[str, torch.Tensor]:
    """The adapter's one prediction function on one image."""
    model.maskiou_predict = {"imgsz": imgsz, "conf": 0.001, "iou": 0.7, "max_det": max_det}
    return detect(model, [im])[0]


def test_prediction_is_ultralytics_nms_and_process_mask():
    model = tiny_model()
    out = predict(model, image())
    x = torch.from_numpy(image().transpose(2, 0, 1).copy())[None].float() / 255
    with torch.no_grad():
        predictions, protos = split_output(model(x))
    (det,) = nms.non_max_suppression(predictions, 0.001, 0.7, nc=3, max_det=20)
    masks = ops.process_mask(protos[0], det[:, 6:], det[:, :4], (64, 64), upsample=True)
    keep = masks.flatten(1).amax(1) > 0
    assert 0 < int(keep.sum()) <= 20
    # the predictor's boxes: scaled back to the image (here 1:1) and clipped to it
    assert torch.equal(out["boxes"], ops.scale_boxes((64, 64), det[keep, :4].clone(), (64, 64)))
    assert torch.equal(out["scores"], det[keep, 4])
    assert torch.equal(out["labels"], det[keep, 5].long() + 1)
    assert torch.equal(out["masks"][:, 0] > 0.5, masks[keep].bool())  # bit for bit
    probs, on = out["masks"][:, 0], out["masks"][:, 0] > 0.5
    assert (probs[~on] <= 0.5).all()
    assert ((out["maskness"] > 0.5) & (out["maskness"] <= 1)).all()  # of the 28 x 28 probs


def test_detections_without_a_mask_are_dropped_as_the_predictor_drops_them():
    model = tiny_model()
    for branch in model.model[-1].cv4:  # every coefficient 0: every mask logit 0, no pixel on
        branch[-1].weight.data.zero_()
        branch[-1].bias.data.zero_()
    out = predict(model, image())
    assert len(out["boxes"]) == len(out["masks"]) == len(out["maskness"]) == 0


def test_soft_masks_threshold_to_process_mask_inside_every_box():
    torch.manual_seed(0)
    protos, coefficients = torch.randn(32, 16, 16), torch.randn(4, 32)
    boxes = torch.tensor([[10.0, 12.0, 40.0, 50.0], [0.0, 0.0, 64.0, 64.0],
                          [20.5, 3.25, 33.75, 60.5], [30.0, 30.0, 31.0, 31.0]])
    binary, probs = soft_masks(protos, coefficients, boxes, (64, 64), (64, 64))
    expected = ops.process_mask(protos, coefficients, boxes, (64, 64), upsample=True)
    assert torch.equal(binary, expected.bool())
    assert torch.equal(probs > 0.5, binary)
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[12:50, 10:40] = False
    assert (probs[0][outside] == 0).all() and (probs[0][~outside] > 0).all()


def test_a_letterboxed_image_gets_masks_and_boxes_in_its_own_pixels():
    out = predict(tiny_model(), image(40, 64))
    assert len(out["boxes"]) > 0 and out["masks"].shape[-2:] == (40, 64)
    assert (out["boxes"][:, [1, 3]] <= 40).all() and (out["boxes"] >= 0).all()


def test_hooks_on_the_layers_the_segment_head_reads_give_p3_p4_p5():
    model = tiny_model()
    head = model.model[-1]
    assert head.f == [16, 19, 22]  # YOLO11 (v8: 15, 18, 21)
    seen = {}
    hooks = [model.model[i].register_forward_hook(
        lambda mod, args, output, i=i: seen.__setitem__(i, output)) for i in head.f]
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 64))[1]
    for h in hooks:
        h.remove()
    assert [tuple(seen[i].shape) for i in head.f] == [(1, 64, 8, 8), (1, 128, 4, 4),
                                                       (1, 256, 2, 2)]
    assert all(torch.equal(seen[i], f) for i, f in zip(head.f, raw["feats"]))
    assert tuple(raw["proto"].shape) == (1, 32, 16, 16)
    assert tuple(raw["mask_coefficient"].shape) == (1, 32, 64 + 16 + 4)


def test_split_output_reads_the_dict_and_the_older_tuple_format():
    y, p, feats = torch.zeros(1, 39, 84), torch.ones(1, 32, 16, 16), [torch.zeros(1)]
    assert split_output(((y, p), {"proto": p}))[1] is p
    older = (y, (feats, torch.zeros(1, 32, 84), p))  # ultralytics 8.0 to 8.3
    assert split_output(older)[0] is y and split_output(older)[1] is p


def write_tiny_coco(root: Path) -> tuple[Path, Path]:
    """Four 64 x 64 images of one square each, three categories."""
    images = root / "images"
    images.mkdir(parents=True)
    anns, entries = [], []
    for k in range(4):
        x0 = 8 + 6 * k
        im = np.zeros((64, 64, 3), np.uint8)
        im[x0:x0 + 24, x0:x0 + 24] = 200
        Image.fromarray(im).save(images / f"{k}.png")
        entries.append({"id": k, "file_name": f"{k}.png", "height": 64, "width": 64})
        anns.append({"id": k + 1, "image_id": k, "category_id": 5 + k % 3, "iscrowd": 0,
                     "segmentation": [[x0, x0, x0 + 24, x0, x0 + 24, x0 + 24, x0, x0 + 24]]})
    cats = [{"id": 5 + c, "name": n} for c, n in enumerate(NAMES[1:])]
    ann = root / "train.json"
    ann.write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    return ann, images


NO_NETWORK = """
import json, socket, sys
attempts = []
def guard(name):
    def blocked(*args, **kwargs):
        attempts.append(name)
        raise OSError("the test blocks the network")
    return blocked
for name in ("getaddrinfo", "gethostbyname", "create_connection"):
    setattr(socket, name, guard(name))
socket.socket.connect = guard("connect")
from offline_ultralytics import offline_ultralytics
offline_ultralytics()  # the tests' opt-in (the library does none of it)
from maskiou_integrations.ultralytics_data import convert
from maskiou_integrations.ultralytics_models import train_embedded
out, ann, images = sys.argv[1:4]
data = convert(out + "/yolo", {"train": (ann, images), "val": (ann, images)})
train_embedded(out + "/run", epochs=1, data=data, imgsz=64, batch=4, threads=1)
print("ATTEMPTS", json.dumps(attempts))
"""


def test_training_makes_no_network_attempt(tmp_path):
    """A fresh process with the tests' opt-in (ultralytics imported for the first time, its
    config folder new: no settings, no font) trains and validates one epoch with every socket
    call recorded."""
    ann, images = write_tiny_coco(tmp_path / "coco")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YOLO_", "PYTEST_"))}  # as outside the test runner
    env.update(YOLO_CONFIG_DIR=str(tmp_path / "config"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                           env.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", NO_NETWORK, str(tmp_path), str(ann),
                          str(images)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    attempts = [line for line in run.stdout.splitlines() if line.startswith("ATTEMPTS")]
    assert attempts == ["ATTEMPTS []"]
    assert (tmp_path / "config" / "Ultralytics" / "Arial.ttf").is_file()
    curve = um.training_curve(tmp_path / "run" / "train" / "results.csv")
    assert [r["epoch"] for r in curve] == [1]
    log = (tmp_path / "run" / "train" / "maskiou_training.jsonl").read_text().splitlines()
    assert json.loads(log[0])["versions"]["ultralytics"]


SHIPPED = ROOT / "weights" / "synthetic_cpu_ultralytics_plain.pt"  # never in the wheel: AGPL
MEASURED = ROOT / "docs" / "measurements" / "yolo_plain_eval.json"


def test_the_shipped_detector_is_small_plain_and_recorded():
    from maskiou.data.synthetic import CATEGORIES

    assert SHIPPED.stat().st_size < 8_000_000
    ckpt = torch.load(SHIPPED, weights_only=True)
    assert ckpt["framework"] == "ultralytics" and ckpt["detector"]["imgsz"] == 128
    cats = sorted(CATEGORIES, key=lambda c: c["id"])
    assert ckpt["class_names"] == ["__background__"] + [c["name"] for c in cats]
    assert ckpt["label_to_cat_id"] == {k + 1: c["id"] for k, c in enumerate(cats)}
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    stem = SHIPPED.with_suffix("")
    record = json.loads(Path(f"{stem}.training.json").read_text())
    curve = um.training_curve(f"{stem}.train_log.csv")
    assert record["shipped"] == "best.pt" and record["shipped_epoch"] == um.best_epoch(curve)
    assert record["epochs_run"] == len(curve) == record["train_args"]["epochs"]
    assert record["train_args"]["pretrained"] is False and record["train_args"]["imgsz"] == 128
    assert Path(f"{stem}.config.yaml").read_text().startswith("task: segment")


def test_the_shipped_detector_gives_its_recorded_mask_ap():
    """The shipped detector's mask AP under its class score, recorded when it was shipped,
    recomputed the benchmark's way (the adapter's ``predict`` on maskiou's images: its cls row
    measures the detector users have; about a minute on 2 cores)."""
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.evaluation.cocoeval import evaluate_scorings
    from maskiou.evaluation.predict import predict
    from maskiou.models.load import load_trained_model
    from maskiou_integrations.ultralytics_data import embedded_splits

    measured = json.loads(MEASURED.read_text())
    dataset = CocoInstanceDataset(*embedded_splits()["val"])
    model, _ = load_trained_model(SHIPPED)
    dets = predict(model, dataset, progress=False)
    assert len(dets) == measured["detections"]
    segm = evaluate_scorings(dets, dataset.coco, {"cls": dets.cls_scores})["segm"]["cls"]
    assert segm["AP"] == pytest.approx(measured["segm"]["cls"]["AP"], abs=0.05)
    assert segm["AP"] >= 30.0
