"""Side-by-side score viewer: Mask R-CNN's classification scores vs MaskIoU-rescored scores.

    python demo/app.py                              # embedded default model, http://127.0.0.1:7860
    python demo/app.py --checkpoint runs/maskiou/model_final.pt --port 8080
    python demo/app.py --host 0.0.0.0 --share       # reachable from other machines / a public link

Left: every detection with its classification confidence; right: the same detections with
cls x predicted MaskIoU. One threshold applies to both, so masks the head judges poor drop out
on the right. The table lists each detection's scores, its rank under each, and, for images of
the embedded validation split, the true MaskIoU against the ground truth.

The page is :func:`build_app`; its handlers are ``demo/handlers.py``; the logic they call,
without any UI, is ``demo/inference.py`` (``run_detection``: detect, draw both scorings, table),
``demo/images.py`` (input checks and conversions) and ``demo/sources.py`` (example images,
ground truth, benchmark summary).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python demo/app.py` from a checkout
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import gradio as gr  # noqa: E402

from demo.handlers import IN_MEMORY, DemoApp  # noqa: E402
from demo.inference import Predictor, run_detection  # noqa: E402
from demo.sources import DEFAULT_METRICS, ValSplit, benchmark_summary  # noqa: E402
from maskiou.training.config import TrainConfig  # noqa: E402
from maskiou.training.paths import cache_dir, default_model_path  # noqa: E402

__all__ = ["IN_MEMORY", "DemoApp", "ValSplit", "benchmark_summary", "build_app", "main",
           "run_detection"]

DEFAULT_THRESHOLD = 0.5
LEFT_TITLE = "Mask R-CNN: classification score"
RIGHT_TITLE = "Mask Scoring R-CNN: classification score x predicted MaskIoU"


def build_app(checkpoint: str | Path | None = None, *, split: ValSplit | None | str = "embedded",
              predictor: Predictor | None = None, metrics_path: str | Path = DEFAULT_METRICS,
              device: str | None = None, train_config: TrainConfig | None = None,
              threshold: float = DEFAULT_THRESHOLD, concurrency: int = 2) -> gr.Blocks:
    """The Gradio page (queue enabled); ``launch()`` it.

    Args:
        checkpoint: selected model (default: the embedded default model, trained on request).
        split: example images + ground truth: "embedded" (the synthetic validation split,
            generated on first use), a :class:`ValSplit`, or None for uploads only.
        predictor: an already loaded model to offer first (tests, notebooks).
        metrics_path: ``results/metrics.json`` of the benchmark, for the summary line.
        device: "cpu", "cuda", ... (default: the GPU when there is one).
        train_config: what the train button trains (default: the ``synthetic-cpu`` preset).
        threshold: initial score threshold.
        concurrency: detections running at once; more requests wait in the queue.
    """
    if split == "embedded":
        split = ValSplit.embedded()
    app = DemoApp(checkpoint, split, predictor, metrics_path, device, train_config)
    with gr.Blocks(title="maskiou: MaskIoU rescoring") as demo:
        demo.maskiou_app = app  # for tests and notebooks
        gr.Markdown("# Classification score vs MaskIoU-rescored score\nMask Scoring R-CNN "
                    "multiplies each detection's classification confidence by the mask IoU "
                    "its MaskIoU head predicts. Masks the head judges poor lose rank and drop "
                    "below the threshold on the right.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Upload an image", type="filepath",
                                 elem_id="upload")
                checkpoint_box = gr.Dropdown(app.checkpoint_choices(), value=app.checkpoint,
                                             label="Checkpoint",
                                             elem_id="checkpoint")
                threshold_box = gr.Slider(0.0, 1.0, value=threshold, step=0.01,
                                          label="Score threshold (both sides)",
                                          elem_id="threshold")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    [] if split is None else split.examples(), elem_id="examples",
                    label="Examples from the validation split (click one)", columns=4,
                    height="auto", allow_preview=False, visible=split is not None)
        status_text, offer_training = app.model_status(app.checkpoint)
        status = gr.Markdown(status_text, elem_id="status")
        train_button = gr.Button("Train the embedded default model", variant="primary",
                                 elem_id="train", visible=offer_training)
        with gr.Row():
            left = gr.AnnotatedImage(label=LEFT_TITLE, elem_id="left", height=460)
            right = gr.AnnotatedImage(label=RIGHT_TITLE, elem_id="right", height=460)
        table = gr.Dataframe(app._table([]), label="Detections (ranks among all detections)",
                             interactive=False, elem_id="table")
        gr.Markdown(benchmark_summary(app.metrics_path), elem_id="summary")
        pred_state, current = gr.State(None), gr.State(None)

        outputs = [left, right, table, status, pred_state, current]
        upload.upload(app.detect, [upload, threshold_box, checkpoint_box], outputs,
                      api_name="detect")
        gallery.select(app.detect_example, [threshold_box, checkpoint_box], outputs,
                       api_name="detect_example")
        threshold_box.release(app.rethreshold, [pred_state, threshold_box],
                              [left, right, table, status], api_name="threshold")
        checkpoint_box.change(app.rerun, [current, threshold_box, checkpoint_box], outputs,
                              api_name="select_checkpoint").then(
            app.train_button_update, [checkpoint_box], [train_button], api_name="train_button")

        def train(progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[Any, ...]:  # noqa: B008
            return app.train_default(progress)

        train_button.click(train, None, [status, train_button, checkpoint_box], api_name="train",
                           concurrency_limit=1, concurrency_id="train")
        demo.load(app.status_update, [checkpoint_box], [status, train_button],
                  api_name="model_status")
    demo.queue(default_concurrency_limit=concurrency)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo/app.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="maskiou-train checkpoint (default: the embedded "
                   f"default model, {default_model_path()})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="default: %(default)s")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU when present)")
    p.add_argument("--metrics", default=str(DEFAULT_METRICS), help="benchmark metrics.json "
                   "for the summary line (default: results/metrics.json)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="initial score threshold (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=2, help="detections running at once")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device:
        import torch

        try:
            torch.empty(0, device=args.device)
        except (RuntimeError, AssertionError) as e:
            print(f"demo/app.py: error: --device {args.device}: {e}", file=sys.stderr)
            return 2
    print(f"maskiou demo: data and models in {cache_dir()}", flush=True)
    if args.checkpoint is None:
        from maskiou.evaluation.benchmark import install_shipped_model
        from maskiou.training.config import resolve
        from maskiou.training.paths import default_model_dir

        if install_shipped_model(resolve("synthetic-cpu", {}), default_model_dir()):
            print("maskiou demo: installed the shipped warm-start model", flush=True)
    demo = build_app(args.checkpoint, metrics_path=args.metrics, device=args.device,
                     threshold=args.threshold, concurrency=args.concurrency)
    split = demo.maskiou_app.split
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                allowed_paths=[str(split.images_dir)] if split is not None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
