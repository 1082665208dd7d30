"""The page's state and event handlers: plain methods returning values or Gradio updates.

Every handler turns a bad argument (a path that is not an upload, a gallery number out of range,
a threshold that is not a number, ...) into a message on the page, never a traceback. Only
files in Gradio's upload folder and the split's own images are ever opened.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from demo.images import ImageInputError
from demo.inference import (
    PANELS,
    Prediction,
    Predictor,
    iou_plot,
    panel,
    predict,
    rank_changes,
    style_moves,
    table,
)
from demo.sources import DEFAULT_METRICS, ValSplit, short_path
from maskiou.data.coco import CocoFormatError
from maskiou.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from maskiou.models.load import model_kind
from maskiou.models.paths import default_model, model_dir

IN_MEMORY = "in-memory model"
NO_HEAD = "none: the detector's own scores"
MAX_UPLOAD_BYTES = 20 * 2**20
UPLOAD_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def training_allowed(host: str, share: bool) -> bool:
    """Training runs minutes of CPU work: only from a page that this machine alone can reach."""
    return host in LOCAL_HOSTS and not share


def checkpoint_kind(path: str | Path) -> str:
    """``"plain"``, ``"add-on"`` or ``"end to end"``, for every framework alike (reads the
    checkpoint's ``maskiou_head`` and ``addon`` entries)."""
    return model_kind(read_checkpoint(path))


class DemoApp:
    """State and event handlers of the page; each handler returns plain values or updates.

    Args:
        detectors: plain detector checkpoints offered (default: the embedded plain detector).
        heads: checkpoints with a MaskIoU head offered: add-ons trained on a detector, or
            end-to-end models (default: the embedded add-on and end-to-end models).
        split: where example images and ground truth come from (None: uploads only).
        predictor: an already loaded model, offered as "in-memory model" (tests, notebooks).
        metrics_path: the benchmark's metrics.json for the summary line.
        device: where models run (default: the GPU when there is one).
        allow_training: offer the "train the add-on head" button (only for a page reachable
            from this machine alone: see :func:`training_allowed`).
        train_args: what the button trains (``addon_images``, ``AddonConfig`` overrides).
        upload_dirs: the folders uploads arrive in; a path elsewhere (other than the split's
            own images) is refused unopened (default: Gradio's upload folder).
    """

    def __init__(self, detectors: list[str] | None = None, heads: list[str] | None = None,
                 split: ValSplit | None = None, predictor: Predictor | None = None,
                 metrics_path: str | Path = DEFAULT_METRICS, device: str | None = None,
                 allow_training: bool = False, train_args: dict[str, Any] | None = None,
                 upload_dirs: list[str | Path] | None = None) -> None:
        self.default_detector = str(model_dir(default_model("plain")) / "model_final.pt")
        self.default_head = str(model_dir(default_model("addon")) / "model_final.pt")
        self.detectors = [str(p) for p in (detectors or [self.default_detector])]
        heads = [str(p) for p in heads] if heads is not None else [
            self.default_head, str(model_dir(default_model("end_to_end")) / "model_final.pt")]
        self.heads = ([IN_MEMORY] if predictor is not None else []) + heads
        self.split = split
        self.metrics_path = Path(metrics_path)
        self.device = device
        self.allow_training = allow_training
        self.train_args = train_args or {}
        self._models: dict[tuple[str, float], Predictor] = {}
        self._memory = predictor
        self._load_lock = threading.Lock()
        self._train_lock = threading.Lock()
        self.trainings = 0  # how many trainings this app started (tests)
        from gradio.utils import get_upload_folder

        self.upload_dirs = [Path(d).resolve() for d in (upload_dirs or [get_upload_folder()])]

    # --- models ------------------------------------------------------------------------------

    def detector_choices(self) -> list[tuple[str, str]]:
        return [(f"{short_path(Path(p))}", p) for p in self.detectors]

    def head_choices(self) -> list[tuple[str, str]]:
        return [(NO_HEAD, NO_HEAD)] + [(p if p == IN_MEMORY else short_path(Path(p)), p)
                                       for p in self.heads]

    def _load(self, checkpoint: str) -> Predictor:
        if checkpoint == IN_MEMORY and self._memory is not None:
            return self._memory
        if checkpoint not in self.detectors + self.heads:
            # loading a checkpoint unpickles it: only files the operator offered, never a path
            # a visitor typed (or uploaded)
            raise CheckpointError(f"{checkpoint}: not one of the offered checkpoints; start "
                                  "the app with --detector PATH or --checkpoint PATH to offer it")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(checkpoint)
        key = (str(path.resolve()), path.stat().st_mtime)
        with self._load_lock:
            if key not in self._models:
                self._models[key] = Predictor.from_checkpoint(path, self.device)
                while len(self._models) > 3:  # keep a few models, not every one ever chosen
                    self._models.pop(next(iter(self._models)))
            return self._models[key]

    def model(self, detector: str, head: str) -> tuple[Predictor, list[str]]:
        """The model the two choices make, and notes for the page.

        With a head the head's checkpoint is used (it embeds its detector); a head trained on
        another detector than the chosen one is said so. Raises ``CheckpointError`` for a
        checkpoint that cannot be used, FileNotFoundError for one that does not exist yet.
        """
        if head in (None, "", NO_HEAD):
            predictor = self._load(detector)
            if predictor.kind not in ("plain", ""):
                return predictor, [f"`{short_path(Path(detector))}` has a MaskIoU head: it is "
                                   "shown with its head"]
            return predictor, []
        predictor = self._load(head)
        if predictor.kind == "plain":
            raise CheckpointError(f"{head}: this checkpoint has no MaskIoU head; choose it as "
                                  "the detector, or choose an add-on checkpoint as the head")
        notes = []
        if head != IN_MEMORY and predictor.kind == "add-on" and Path(detector).is_file():
            from maskiou.records import file_sha1

            trained_on = load_checkpoint(head)["addon"].get("detector_sha1")
            if trained_on and trained_on != file_sha1(detector):
                notes.append("this head was trained on another detector than the one chosen: "
                             "it is shown with its own, which its checkpoint embeds")
        elif predictor.kind == "end to end":
            notes.append("an end-to-end model brings its own detector")
        return predictor, notes

    def model_status(self, detector: str, head: str) -> tuple[str, bool]:
        """(status Markdown, whether the page may offer training) for the chosen models."""
        missing = [p for p in (detector, head) if p not in (NO_HEAD, IN_MEMORY, "", None)
                   and not (isinstance(p, str) and Path(p).expanduser().is_file())]
        if not missing:
            return "", False
        hint = ("Run `python benchmarks/coco_eval.py` once: it installs the shipped detector and "
                "trains the add-on head (minutes on a CPU)")
        if self.allow_training and head == self.default_head:
            hint += ", or press the button below"
        return f"⚠️ Not there yet: `{'`, `'.join(missing)}`. {hint}.", self.allow_training

    # --- training ----------------------------------------------------------------------------

    def train_addon(self, progress: Any = None) -> tuple[str, Any]:
        """Train the add-on head of the embedded default (the detector frozen; minutes on a CPU).

        Refused unless the app listens on this machine only (``allow_training``).
        Returns (status Markdown, head-dropdown update)."""
        if not self.allow_training:
            return ("⚠️ Training is switched off: this page can be reached from other machines "
                    "(--host or --share). Train with `python benchmarks/coco_eval.py` on the "
                    "server.", gr.update())
        if not self._train_lock.acquire(blocking=False):
            return "⚠️ The add-on head is already being trained.", gr.update()
        try:
            from maskiou.addon.fit import AddonConfig
            from maskiou.evaluation.benchmark import addon_or_reuse, addon_split, default_detector

            self.trainings += 1
            if progress is not None:
                progress(0, desc="detector and add-on images")
            images = int(self.train_args.get("addon_images", 1600))
            cfg = AddonConfig.from_dict(self.train_args.get("config", {}))
            detector = default_detector(progress=True)
            train_json, train_images = addon_split(images, progress=True)
            path = addon_or_reuse(detector, train_json, train_images,
                                  Path(self.default_head).parent, cfg, progress=True)
        except Exception as e:  # noqa: BLE001 - shown on the page, the app stays up
            return f"⚠️ Training failed: {type(e).__name__}: {e}", gr.update()
        finally:
            self._train_lock.release()
        if str(path) not in self.heads:
            self.heads.append(str(path))
        return (f"Trained the add-on head: `{short_path(path)}`.",
                gr.update(choices=self.head_choices(), value=str(path)))

    # --- detection ---------------------------------------------------------------------------

    def analyse(self, source: str | None, example: int | None, detector: str, head: str
                ) -> tuple[Prediction | None, str]:
        """Run the chosen model on a file path or split image ``example``: (prediction or None,
        status Markdown)."""
        if source is None and example is None:
            return None, "Upload an image or click one in the gallery."
        if example is not None and (self.split is None or _index(example,
                                                                  len(self.split.dataset)) is None):
            return None, f"⚠️ {example!r}: not an image of this app's validation split"
        if source is not None and example is None:
            problem = self.source_problem(source)
            if problem:
                return None, f"⚠️ {problem}"
        try:
            predictor, notes = self.model(detector, head)
        except FileNotFoundError:
            return None, self.model_status(detector, head)[0]
        except CheckpointError as e:
            return None, f"⚠️ Cannot use this checkpoint: {e}"
        gt, where = None, ""
        if self.split is not None:
            index = example if example is not None else self.split.index_of_file(source)
            if index is not None:
                source = str(self.split.dataset.image_path(index))
                if self.split.dataset.class_names != predictor.class_names:
                    return None, (f"⚠️ Cannot use this checkpoint: its classes "
                                  f"{predictor.class_names[1:]} are not the dataset's "
                                  f"{self.split.dataset.class_names[1:]}")
                try:
                    gt = self.split.ground_truth(index)  # names the image id if unreadable
                except CocoFormatError as e:
                    return None, f"⚠️ {e}"
                where = f"; validation image {Path(source).stem}, with ground truth"
        try:
            pred = predict(source, predictor, gt)
        except ImageInputError as e:
            return None, f"⚠️ {e}"
        pred.notes[:0] = notes
        kind = f" ({predictor.kind})" if predictor.kind else ""
        pred.caption = f"Model: `{short_path(Path(predictor.source or head))}`{kind}{where}."
        return pred, ""

    def source_problem(self, source: Any) -> str | None:
        """One line saying why ``source`` is not opened, or None: it must be a file uploaded
        through the page (in :attr:`upload_dirs`) or one of the split's own images, of an image
        type and size (:func:`upload_problem`)."""
        if not isinstance(source, (str, Path)):
            return f"expected an uploaded image file, got {type(source).__name__}"
        path = Path(source)
        try:
            real = path.resolve()
        except (OSError, RuntimeError, ValueError):
            return f"{path.name}: not a file uploaded through this page"
        inside = [*self.upload_dirs] + ([self.split.images_dir.resolve()] if self.split else [])
        if not any(real.is_relative_to(d) for d in inside):
            return (f"{path.name}: not a file uploaded through this page; the demo opens only "
                    "uploads and its own example images")
        return upload_problem(real)

    def view(self, pred: Prediction | None, status: str, threshold: float, order_by: str,
             show_gt: bool, only_kept: bool = False) -> tuple[Any, ...]:
        """Every output of the page for ``pred``: the panels (one per scoring of
        :data:`~demo.inference.PANELS`; ``only_kept``: without the detections the model's
        stored thresholds drop, else those dimmed), the table, the plot, the status line."""
        blank = (None,) * len(PANELS)
        problem = settings_problem(threshold, order_by)
        if problem or not (pred is None or isinstance(pred, Prediction)):
            return (*blank, pd.DataFrame(), None, f"⚠️ {problem or 'no result to show'}")
        threshold = float(threshold)
        if pred is None:
            return (*blank, pd.DataFrame(), None, status)
        scores = pred.scores()
        panels = tuple(panel(pred, name, threshold, show_gt, bool(only_kept))
                       if name in scores else None for name in PANELS)
        df = table(pred, order_by)
        moves = rank_changes(pred)
        text = (f"{len(pred)} detections; the final score the model returns changes the rank "
                f"of {moves}. " if "final" in scores else f"{len(pred)} detections. ") \
            + kept_line(pred) + pred.caption
        if pred.notes:
            text += "  \nNote: " + "; ".join(pred.notes) + "."
        return (*panels, style_moves(df), iou_plot(pred), text)

    def detect(self, file: str | None, detector: str, head: str, threshold: float,
               order_by: str, show_gt: bool, only_kept: bool = False) -> tuple[Any, ...]:
        """Handler of an upload (and the ``/detect`` API endpoint)."""
        pred, status = self.analyse(file, None, detector, head)
        return (*self.view(pred, status, threshold, order_by, show_gt, only_kept), pred,
                {"source": file, "example": None})

    def example(self, number: int, detector: str, head: str, threshold: float, order_by: str,
                show_gt: bool, only_kept: bool = False) -> tuple[Any, ...]:
        """Run on gallery image ``number`` (0-based)."""
        count = len(self.split.example_indices) if self.split is not None else 0
        k = _index(number, count)
        if k is None:
            status = (f"⚠️ {number!r}: no such gallery image (this app has {count}, numbered "
                      f"0 to {count - 1})" if count else "⚠️ this app has no gallery images")
            return (*self.view(None, status, threshold, order_by, show_gt, only_kept), None,
                    {"source": None, "example": None})
        index = self.split.example_indices[k]
        pred, status = self.analyse(None, index, detector, head)
        return (*self.view(pred, status, threshold, order_by, show_gt, only_kept), pred,
                {"source": None, "example": index})

    def rerun(self, current: dict[str, Any] | None, detector: str, head: str, threshold: float,
              order_by: str, show_gt: bool, only_kept: bool = False) -> tuple[Any, ...]:
        """Run the current input again (after a model choice changed)."""
        current = current if isinstance(current, dict) else {}
        pred, status = self.analyse(current.get("source"), current.get("example"), detector,
                                    head)
        if pred is None and not status:
            status = self.model_status(detector, head)[0]
        return (*self.view(pred, status, threshold, order_by, show_gt, only_kept), pred,
                current)

    def redraw(self, pred: Prediction | None, threshold: float, order_by: str, show_gt: bool,
               only_kept: bool = False) -> tuple[Any, ...]:
        """Redraw at a new threshold, order, ground-truth or kept-only toggle without running
        the model."""
        if pred is None and settings_problem(threshold, order_by) is None:
            return (gr.update(),) * (len(PANELS) + 3)
        return self.view(pred, "", threshold, order_by, show_gt, only_kept)


def kept_line(pred: Prediction) -> str:
    """How many detections the model's stored thresholds keep ("" without a head)."""
    if pred.kept is None:
        return ""
    return (f"{int(pred.kept.sum())} of {len(pred)} are worth keeping by the per-class "
            "thresholds stored in the model. ")


def _index(value: Any, count: int) -> int | None:
    """``value`` as an index into ``count`` items (a whole number 0..count-1), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not (math.isfinite(value) and float(value).is_integer() and 0 <= value < count):
        return None
    return int(value)


def settings_problem(threshold: Any, order_by: Any) -> str | None:
    """One line saying why the display settings cannot be used, or None."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold):
        return f"score threshold {threshold!r}: expected a number between 0 and 1"
    if not isinstance(order_by, str):
        return f"rank the table by {order_by!r}: expected one of the scorings' names"
    return None


def upload_problem(path: str | Path) -> str | None:
    """One line saying why an upload is refused before it is opened, or None."""
    p = Path(path)
    if not p.is_file():
        return f"{p.name}: file not found"
    if p.suffix.lower() not in UPLOAD_TYPES:
        return (f"{p.name}: not an image file (accepted: "
                f"{', '.join(t.lstrip('.').upper() for t in UPLOAD_TYPES)})")
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        return (f"{p.name}: {p.stat().st_size / 2**20:.1f} MiB is over the "
                f"{MAX_UPLOAD_BYTES // 2**20} MiB upload limit")
    return None
