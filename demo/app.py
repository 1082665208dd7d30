"""Why the ranking changed: the same detections under every scoring, side by side.

    python demo/app.py                              # embedded default models, http://127.0.0.1:7860
    python demo/app.py --detector plain.pt --checkpoint addon.pt --port 8080
    python demo/app.py --host 0.0.0.0 --share       # reachable from other machines: no training

Panels: the classification score (Mask R-CNN), cls x maskness (free), cls x the head's output,
the final score the model returns (``model(images)``'s ``scores``: the head's recalibration of
these signals), and, for images with ground truth, cls x the true MaskIoU (the oracle). Each
shows the detections whose score clears the threshold, numbered as in the table, which ranks
every detection under every scoring and highlights those the final score moves; detections the
model's per-class thresholds drop (the masks worth keeping, ``maskiou.kept``) are drawn grey and
marked "dropped" (a checkbox hides them). The gallery opens on
the validation images where the head fixes the ranking most (from the benchmark's gallery.json).

The page is :func:`build_app`; its handlers are ``demo/handlers.py``; the logic they call,
without any UI, is ``demo/inference.py``, ``demo/draw.py``, ``demo/images.py`` and
``demo/sources.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python demo/app.py` from a checkout
    sys.path.insert(0, str(ROOT))

try:
    import gradio as gr
except ImportError as missing:  # run as a program without the extra: one line, exit 2
    if __name__ != "__main__":
        raise
    print(f"demo/app.py: error: the demo needs the demo extra: pip install -e '.[demo]' "
          f"({missing})", file=sys.stderr)
    sys.exit(2)

from demo.handlers import (  # noqa: E402
    IN_MEMORY,
    MAX_UPLOAD_BYTES,
    UPLOAD_TYPES,
    DemoApp,
    training_allowed,
)
from demo.inference import PANELS, Predictor  # noqa: E402
from demo.sources import DEFAULT_GALLERY, DEFAULT_METRICS, ValSplit, benchmark_summary  # noqa: E402
from maskiou.models.paths import cache_dir  # noqa: E402

UPLOAD_NAMES = sorted({t.lstrip(".").upper().replace("JPEG", "JPG").replace("TIFF", "TIF")
                       for t in UPLOAD_TYPES})

__all__ = ["IN_MEMORY", "DemoApp", "ValSplit", "benchmark_summary", "build_app", "main"]

DEFAULT_THRESHOLD = 0.3
ORDERS = [("classification score", "cls"), ("maskness", "maskness"),
          ("cls × the head's output", "rescored"), ("final score (what the model returns)",
                                                    "final"), ("true MaskIoU (oracle)", "oracle")]


def build_app(detectors: list[str] | None = None, heads: list[str] | None = None, *,
              split: ValSplit | None | str = "embedded", predictor: Predictor | None = None,
              metrics_path: str | Path = DEFAULT_METRICS,
              gallery_path: str | Path = DEFAULT_GALLERY, device: str | None = None,
              allow_training: bool = False, train_args: dict[str, Any] | None = None,
              threshold: float = DEFAULT_THRESHOLD, concurrency: int = 2) -> gr.Blocks:
    """The Gradio page (queue enabled); ``launch()`` it.

    Args:
        detectors, heads: offered checkpoints (see :class:`demo.handlers.DemoApp`).
        split: example images + ground truth: "embedded" (the synthetic validation split), a
            :class:`ValSplit`, or None for uploads only.
        predictor: an already loaded model to offer as the head (tests, notebooks).
        metrics_path, gallery_path: the benchmark's metrics.json and gallery.json.
        allow_training: show the train button (only for a page this machine alone reaches).
        threshold: initial score threshold; concurrency: detections running at once.
    """
    if split == "embedded":
        split = ValSplit.embedded()
    if split is not None:
        split.use_gallery(gallery_path)
    app = DemoApp(detectors, heads, split, predictor, metrics_path, device, allow_training,
                  train_args)
    # analytics off for this app alone (nothing leaves the machine; no environment variable set)
    with gr.Blocks(title="maskiou: why the ranking changed", analytics_enabled=False) as demo:
        demo.maskiou_app = app  # for tests and notebooks
        gr.Markdown("# Why the ranking changed\nMask R-CNN ranks each mask by the confidence of "
                    "its *class*. The MaskIoU head predicts how good the mask is; the final "
                    "score the model returns combines the two. Same detections, "
                    f"{len(PANELS)} scorings.")
        gr.Markdown(benchmark_summary(app.metrics_path), elem_id="summary")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                label = ("Where the head fixes the ranking (validation images)"
                         if split is not None and split.gallery_size else
                         "Validation images (click one)")
                gallery = gr.Gallery([] if split is None else split.examples(), label=label,
                                     elem_id="examples", columns=3, height="auto",
                                     allow_preview=False, visible=split is not None)
                # types and size are checked by the handler, so that a refused file gets the
                # same one-line message on the page as any other bad input
                upload = gr.File(label=f"Upload an image ({', '.join(UPLOAD_NAMES)}; at most "
                                 f"{MAX_UPLOAD_BYTES // 2**20} MiB)", type="filepath",
                                 elem_id="upload")
                detector_box = gr.Dropdown(app.detector_choices(), value=app.detectors[0],
                                           label="Detector (plain Mask R-CNN)",
                                           elem_id="detector")
                head_default = IN_MEMORY if predictor is not None else app.heads[0]
                head_box = gr.Dropdown(app.head_choices(), value=head_default,
                                       label="MaskIoU head (add-on or end-to-end checkpoint)",
                                       elem_id="head")
                threshold_box = gr.Slider(0.0, 1.0, value=threshold, step=0.01,
                                          label="Score threshold (every panel)",
                                          elem_id="threshold")
                order_box = gr.Radio(ORDERS, value="final", label="Rank the table by",
                                     elem_id="order")
                gt_box = gr.Checkbox(False, label="Show the ground truth (white contours)",
                                     elem_id="show_gt")
                kept_box = gr.Checkbox(False, label="Only the masks worth keeping (the "
                                       "model's per-class thresholds; else dropped ones grey)",
                                       elem_id="only_kept")
                train_button = None
                if app.allow_training:
                    train_button = gr.Button("Train the add-on head (detector frozen; minutes "
                                             "on a CPU)", elem_id="train")
            with gr.Column(scale=4):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    panels = [gr.Image(label=title, elem_id=f"panel-{name}", interactive=False,
                                       buttons=[], height=300)
                              for name, title in PANELS.items()]
                with gr.Row():
                    table = gr.Dataframe(label="Detections: rank under each scoring (green: the "
                                         "final score moves it up, red: down)", interactive=False,
                                         elem_id="table", wrap=True, scale=3, max_height=420)
                    plot = gr.Image(label="The head's output vs the true MaskIoU", elem_id="plot",
                                    interactive=False, buttons=[], scale=1)
        pred_state, current = gr.State(None), gr.State(None)
        view = [*panels, table, plot, status]
        outputs = [*view, pred_state, current]
        settings = [threshold_box, order_box, gt_box, kept_box]
        models = [detector_box, head_box]
        upload.upload(app.detect, [upload, *models, *settings], outputs, api_name="detect")

        def pick(evt: gr.SelectData, detector: str, head: str, threshold: float, order: str,
                 show_gt: bool, only_kept: bool) -> tuple[Any, ...]:
            return app.example(evt.index, detector, head, threshold, order, show_gt, only_kept)

        gallery.select(pick, [*models, *settings], outputs, api_name=False)
        # the same as a gallery click, for API clients (a click's event data has no API form)
        example_number = gr.Number(0, precision=0, visible=False)
        example_button = gr.Button(visible=False)
        example_button.click(lambda n, d, h, t, o, g, k: app.example(n, d, h, t, o, g, k),
                             [example_number, *models, *settings], outputs, api_name="example")
        for box in settings:
            box.change(app.redraw, [pred_state, *settings], view, api_name=False)
        for box in models:
            box.change(app.rerun, [current, *models, *settings], outputs, api_name=False)
        if split is not None and len(split.example_indices):
            demo.load(lambda d, h, t, o, g, k: app.example(0, d, h, t, o, g, k),
                      [*models, *settings], outputs, api_name="first_example")

        def train(progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[Any, ...]:  # noqa: B008
            return app.train_addon(progress)

        if train_button is not None:
            train_button.click(train, None, [status, head_box], api_name="train",
                               concurrency_limit=1, concurrency_id="train")
    demo.queue(default_concurrency_limit=concurrency)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo/app.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", action="append", help="plain detector checkpoint to offer "
                   "(repeatable; default: the embedded plain detector)")
    p.add_argument("--checkpoint", action="append", help="checkpoint with a MaskIoU head to "
                   "offer: add-on or end to end (repeatable; default: the embedded ones)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "127.0.0.1, this machine only; 0.0.0.0 for every interface, which switches "
                   "training off)")
    p.add_argument("--port", type=int, default=7860, help="default: %(default)s")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link "
                   "(switches training off)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU when present)")
    p.add_argument("--metrics", default=str(DEFAULT_METRICS), help="benchmark metrics.json "
                   "for the summary line (default: results/metrics.json)")
    p.add_argument("--gallery", default=str(DEFAULT_GALLERY), help="benchmark gallery.json "
                   "(default: results/gallery.json)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="initial score threshold (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=2, help="detections running at once")
    p.add_argument("--max-pixels", type=int, help="refuse images of more pixels (width x "
                   "height), read from their header before decoding (default: "
                   "MASKIOU_MAX_PIXELS, else 8192 x 8192 = 67,108,864)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from maskiou.data.coco import set_max_pixels

    args = parse_args(argv)
    try:
        set_max_pixels(args.max_pixels)
    except ValueError as e:
        print(f"demo/app.py: error: {e}", file=sys.stderr)
        return 2
    if args.device:
        import torch

        try:
            torch.empty(0, device=args.device)
        except (RuntimeError, AssertionError) as e:
            print(f"demo/app.py: error: --device {args.device}: {e}", file=sys.stderr)
            return 2
    print(f"maskiou demo: data and models in {cache_dir()}", flush=True)
    if args.detector is None:
        from maskiou.evaluation.benchmark import (
            default_detector,
            default_end_to_end,
            install_shipped_addon,
        )

        default_detector(progress=False)  # installs the shipped models (no training)
        default_end_to_end(progress=False)
        if install_shipped_addon():
            print("maskiou demo: installed the shipped add-on head (python benchmarks/"
                  "coco_eval.py trains the same one)", flush=True)
    allow = training_allowed(args.host, args.share)
    if not allow:
        print("maskiou demo: reachable from other machines: training from the page is off",
              flush=True)
    demo = build_app(args.detector, args.checkpoint, metrics_path=args.metrics,
                     gallery_path=args.gallery, device=args.device, allow_training=allow,
                     threshold=args.threshold, concurrency=args.concurrency)
    split = demo.maskiou_app.split
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                max_file_size=MAX_UPLOAD_BYTES,
                allowed_paths=[str(split.images_dir)] if split is not None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
