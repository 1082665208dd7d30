"""The page's state and event handlers: plain methods returning values or Gradio updates."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from demo.images import ImageInputError
from demo.inference import TABLE_HEADERS, Prediction, Predictor, predict, render
from demo.sources import DEFAULT_METRICS, ValSplit, short_path
from maskiou.training.checkpoint import CheckpointError
from maskiou.training.config import TrainConfig, resolve
from maskiou.training.paths import default_model_path

IN_MEMORY = "in-memory model"


class DemoApp:
    """State and event handlers of the page; each handler returns plain values or updates.

    Args:
        checkpoint: the checkpoint selected at start (default: the embedded default model).
        split: where example images and ground truth come from (None: uploads only).
        predictor: an already loaded model, offered as "in-memory model" (tests, notebooks).
        metrics_path: the benchmark's metrics.json for the summary line.
        device: where models run (default: the GPU when there is one).
        train_config: what the "train" button trains (default: the ``synthetic-cpu`` preset).
    """

    def __init__(self, checkpoint: str | Path | None = None, split: ValSplit | None = None,
                 predictor: Predictor | None = None, metrics_path: str | Path = DEFAULT_METRICS,
                 device: str | None = None, train_config: TrainConfig | None = None) -> None:
        self.default_checkpoint = str(default_model_path())
        self.checkpoint = IN_MEMORY if predictor is not None and checkpoint is None else \
            str(checkpoint or self.default_checkpoint)
        self.split = split
        self.metrics_path = Path(metrics_path)
        self.device = device
        self.train_config = train_config or resolve("synthetic-cpu", {})
        self._models: dict[tuple[str, float], Predictor] = {}
        self._memory = predictor
        self._load_lock = threading.Lock()
        self._train_lock = threading.Lock()

    # --- models ------------------------------------------------------------------------------

    def checkpoint_choices(self) -> list[tuple[str, str]]:
        """(label, path) pairs for the dropdown: the default model, the one given at start, and
        any ``runs/*/model_final.pt`` below the current folder."""
        choices = [(f"embedded default model ({short_path(Path(self.default_checkpoint))})",
                    self.default_checkpoint)]
        if self._memory is not None:
            choices.insert(0, (IN_MEMORY, IN_MEMORY))
        found = sorted(str(p) for p in Path.cwd().glob("runs/*/model_final.pt"))
        for path in [self.checkpoint, *found]:
            if path not in [c[1] for c in choices]:
                choices.append((short_path(Path(path)), path))
        return choices

    def predictor(self, checkpoint: str) -> Predictor:
        """The model of ``checkpoint``, loaded once (again when the file changes).

        Raises:
            FileNotFoundError: no such checkpoint yet. CheckpointError: not offered,
                unreadable or wrong.
        """
        if checkpoint == IN_MEMORY and self._memory is not None:
            return self._memory
        if checkpoint not in {path for _, path in self.checkpoint_choices()}:
            # loading a checkpoint unpickles it: only files the operator offered, never a path
            # a visitor typed (or uploaded)
            raise CheckpointError(f"{checkpoint}: not one of the offered checkpoints; start "
                                  "the app with --checkpoint PATH to offer it")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(checkpoint)
        key = (str(path.resolve()), path.stat().st_mtime)
        with self._load_lock:
            if key not in self._models:
                self._models = {key: Predictor.from_checkpoint(path, self.device)}
            return self._models[key]

    def model_status(self, checkpoint: str) -> tuple[str, bool]:
        """(status Markdown, whether to offer the train button) for the selected checkpoint."""
        if checkpoint == IN_MEMORY or Path(checkpoint).expanduser().is_file():
            return f"Model: `{short_path(Path(checkpoint))}`.", False
        if checkpoint == self.default_checkpoint:
            return (f"⚠️ The embedded default model is not trained yet (`{checkpoint}`). "
                    "Train it with the button below (on a CPU this takes a while; the progress "
                    "shows here), or run `python benchmarks/coco_eval.py`, which also trains it.",
                    True)
        return f"⚠️ Checkpoint not found: `{checkpoint}`.", False

    def train_button_update(self, checkpoint: str) -> Any:
        """Show the train button only while the default model is missing."""
        return gr.update(visible=self.model_status(checkpoint)[1])

    def status_update(self, checkpoint: str) -> tuple[str, Any]:
        """(status Markdown, train-button update): on page load and checkpoint change."""
        text, offer = self.model_status(checkpoint)
        return text, gr.update(visible=offer)

    def train_default(self, progress: Any = None) -> tuple[str, Any, Any]:
        """Train the embedded default model into its cache folder (resumes an interrupted run).

        Returns (status Markdown, train-button update, checkpoint-dropdown update)."""
        from maskiou.evaluation.benchmark import train_or_reuse

        if progress is not None:
            progress(0, desc="preparing the embedded dataset")
        if not self._train_lock.acquire(blocking=False):
            return ("⚠️ The default model is already being trained; its progress shows in the "
                    "first window.", gr.update(), gr.update())
        try:
            out = train_or_reuse(self.train_config, Path(self.default_checkpoint).parent,
                                 progress=True)
        except Exception as e:  # noqa: BLE001 - shown on the page, the app stays up
            return f"⚠️ Training failed: {type(e).__name__}: {e}", gr.update(), gr.update()
        finally:
            self._train_lock.release()
        return (f"Trained the default model: `{out}`.", gr.update(visible=False),
                gr.update(value=self.default_checkpoint))

    # --- detection ---------------------------------------------------------------------------

    def analyse(self, source: str | None, example: int | None, threshold: float,
                checkpoint: str) -> tuple[Any, ...]:
        """Run the selected model on a file path or split image ``example``.

        Returns the outputs of the page: left, right, table, status, prediction, current input.
        """
        current = {"source": source, "example": example}
        empty = (None, None, self._table([]), None, current)
        if source is None and example is None:
            return (*empty[:3], "Upload an image or click an example.", *empty[3:])
        try:
            predictor = self.predictor(checkpoint)
        except FileNotFoundError:
            return (*empty[:3], self.model_status(checkpoint)[0], *empty[3:])
        except CheckpointError as e:
            return self._fail(f"Cannot use this checkpoint: {e}", empty)
        gt, where = None, ""
        if self.split is not None:
            index = example if example is not None else self.split.index_of_file(source)
            if index is not None:
                source = str(self.split.dataset.image_path(index))
                gt = self.split.ground_truth(index)
                where = f"; validation image {Path(source).stem}, with ground truth"
        try:
            pred = predict(source, predictor, gt)
        except ImageInputError as e:
            return self._fail(str(e), empty)
        pred.caption = f"Model: `{short_path(Path(predictor.source or checkpoint))}`{where}."
        return *self._render(pred, threshold), pred, current

    def detect(self, file: str | None, threshold: float, checkpoint: str) -> tuple[Any, ...]:
        """Handler of an upload (and the ``/detect`` API endpoint)."""
        return self.analyse(file, None, threshold, checkpoint)

    def example(self, number: int, threshold: float, checkpoint: str) -> tuple[Any, ...]:
        """Run on example image ``number`` of the gallery (0-based)."""
        return self.analyse(None, self.split.example_indices[number], threshold, checkpoint)

    def detect_example(self, threshold: float, checkpoint: str, evt: gr.SelectData
                       ) -> tuple[Any, ...]:
        """Handler of a click on the example gallery."""
        return self.example(evt.index, threshold, checkpoint)

    def rerun(self, current: dict[str, Any] | None, threshold: float, checkpoint: str
              ) -> tuple[Any, ...]:
        """Run the current input again (after the checkpoint changed)."""
        if not current or (current.get("source") is None and current.get("example") is None):
            return (gr.update(), gr.update(), gr.update(), self.model_status(checkpoint)[0],
                    None, current)
        return self.analyse(current["source"], current["example"], threshold, checkpoint)

    def rethreshold(self, pred: Prediction | None, threshold: float) -> tuple[Any, ...]:
        """Redraw at a new threshold without running the model again."""
        if pred is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        return self._render(pred, threshold)

    def _render(self, pred: Prediction, threshold: float
                ) -> tuple[Any, Any, pd.DataFrame, str]:
        """(left, right, table, status) of ``pred`` at ``threshold``."""
        left, right, rows, (lc, rc) = render(pred, threshold)
        table = self._table(rows)
        status = (f"{len(pred)} detections; {len(rows)} with classification score ≥ "
                  f"{threshold:.2f}, {int((table['shown'] == 'both').sum())} of them also "
                  f"with the rescored score. {pred.caption}")
        if pred.notes:
            status += "  \nNote: " + "; ".join(pred.notes) + "."
        return (gr.update(value=left, color_map=lc), gr.update(value=right, color_map=rc),
                table, status)

    @staticmethod
    def _table(rows: list[list[Any]]) -> pd.DataFrame:
        return pd.DataFrame(rows, columns=TABLE_HEADERS)

    @staticmethod
    def _fail(message: str, empty: tuple[Any, ...]) -> tuple[Any, ...]:
        gr.Warning(message)
        return (*empty[:3], f"⚠️ {message}", *empty[3:])
