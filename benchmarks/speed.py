"""Cost of the MaskIoU head, each figure a ratio measured side by side in one run.

    python benchmarks/speed.py                    # CPU (and CUDA too when a GPU is present)
    python benchmarks/speed.py --sizes 800x1333 --repeats 7 --device cuda

For every image size: R-50-FPN inference without a head, with the paper's head and with the
light head (100 detections per image); one training step without and with the head; scripted
against eager inference; then ``mask_iou_targets`` against a per-RoI loop. Interleaved repeats
(A, B, C, A, B, C, ...), so drift hits every side alike; each figure is given as min and
median, and ratios are of medians. Prints the machine, the threads and a table; writes JSON
(default results/speed.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskiou import attach_maskiou_head, find_maskiou_head  # noqa: E402
from maskiou.evaluation.cost import head_cost  # noqa: E402
from maskiou.models.builders import MODEL_NAMES, build_maskrcnn  # noqa: E402
from maskiou.targets import mask_iou_targets, project_masks  # noqa: E402

# the light head for CPU deployment (the "light" row of research/ablation.py): a 1x1
# convolution to 32 channels, two 3x3 convolutions of 32 (the last with stride 2), FC 256
LIGHT_HEAD = {"reduce_channels": 32, "conv_channels": 32, "num_convs": 2, "fc_dim": 256}


def mask_iou_targets_reference(
    mask_logits: Tensor, proposals: Tensor, gt_masks: Tensor, matched_idxs: Tensor
) -> Tensor:
    """The same targets computed one RoI at a time on the CPU, the way public ports do.

    Slow on purpose: it is what the vectorized version is timed against.
    Shapes as in :func:`maskiou.mask_iou_targets`.
    """
    m = mask_logits.shape[-1]
    out = []
    masks = gt_masks.cpu()
    h, w = masks.shape[-2:]
    for logits, box, g in zip(mask_logits.cpu(), proposals.cpu().float(), matched_idxs.cpu()):
        gt = masks[int(g)]
        proj = project_masks(gt[None], box[None], torch.zeros(1, dtype=torch.int64), m)[0] >= 0.5
        pred = logits > 0
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        x1, y1 = min(max(x1, 0), w), min(max(y1, 0), h)
        x2, y2 = max(min(max(x2, 0), w), x1), max(min(max(y2, 0), h), y1)
        total = float((gt != 0).sum())
        inside = float((gt[y1:y2, x1:x2] != 0).sum())
        box_area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
        inter = float((pred & proj).sum())
        union = float(pred.sum()) + float(proj.sum()) + (total - inside) * m * m / box_area - inter
        out.append(inter / union if union > 0 else 0.0)
    return torch.tensor(out, dtype=torch.float32).clamp(0.0, 1.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device
                ) -> dict[str, dict[str, float]]:
    """Min and median seconds of each function, calling them in turn ``repeats`` times (after
    one warm-up call each)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: {"min": min(v), "median": statistics.median(v)} for k, v in times.items()}


def scene(h: int, w: int, n_gt: int, device: torch.device, seed: int = 0):
    """Images, and targets with ``n_gt`` random rectangles per image."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(2):
        xy = torch.rand(n_gt, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(n_gt, 2, generator=g) * torch.tensor([w * 0.25, h * 0.25]) + 16
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(n_gt, h, w, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        images.append(torch.rand(3, h, w, generator=g).to(device))
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(
            1, 5, (n_gt,), generator=g).to(device), "masks": masks.to(device)})
    return images, targets


def head_alone_timings(heads: dict[str, torch.nn.Module], n: int, device: torch.device,
                       repeats: int) -> dict[str, dict[str, float]]:
    """Seconds of each MaskIoU head's own forward on ``n`` RoIs of random inputs.

    Small and steady where a whole-model ratio is lost in the noise of a shared CPU: the
    head's share of inference is this time over the plain model's."""
    fns = {}
    for name, head in heads.items():
        s, m = head.roi_size, head.mask_size
        g = torch.Generator().manual_seed(0)
        roi = torch.rand(n, head.in_channels, s, s, generator=g).to(device)
        probs = torch.rand(n, m, m, generator=g).to(device)
        scores = torch.rand(n, head.score_inputs, generator=g).to(device) \
            if head.score_inputs else None

        def run(head=head, roi=roi, probs=probs, scores=scores):
            with torch.no_grad():
                return head(roi, probs, scores)
        fns[name] = run
    return interleaved(fns, repeats, device)


def model_timings(name: str, h: int, w: int, device: torch.device, repeats: int,
                  train: bool = True, scripted: bool = True) -> dict[str, Any]:
    torch.manual_seed(0)
    # Group norm: a random network without normalization (frozen BN at identity) overflows and
    # detects nothing; with GN it gives the full 100 detections, the case the head costs most.
    plain = build_maskrcnn(name, 81, norm="gn", min_size=min(h, w), max_size=max(h, w),
                           box_score_thresh=0.0).to(device).eval()
    full = attach_maskiou_head(copy.deepcopy(plain)).eval()
    light = attach_maskiou_head(copy.deepcopy(plain), **LIGHT_HEAD).eval()
    images, targets = scene(h, w, 10, device)

    def infer(m):
        with torch.no_grad():
            return m(images[:1])

    fns = {"no head": lambda: infer(plain), "paper head": lambda: infer(full),
           "light head": lambda: infer(light)}
    if scripted:
        script = torch.jit.script(copy.deepcopy(full))
        fns["paper head, TorchScript"] = lambda: infer(script)
    r: dict[str, Any] = {"inference_s": interleaved(fns, repeats, device),
                         "detections_per_image": len(infer(full)[0]["boxes"]),
                         "cost": head_cost(full), "light_cost": head_cost(light)}
    med = {k: v["median"] for k, v in r["inference_s"].items()}
    n = r["detections_per_image"]
    r["head_alone_s"] = head_alone_timings(
        {"paper head": find_maskiou_head(full), "light head": find_maskiou_head(light)},
        n, device, 4 * repeats)
    r["head_share"] = r["head_alone_s"]["paper head"]["median"] / med["no head"]
    r["light_head_share"] = r["head_alone_s"]["light head"]["median"] / med["no head"]
    r["inference_ratio"] = med["paper head"] / med["no head"]
    r["light_inference_ratio"] = med["light head"] / med["no head"]
    if scripted:
        r["scripted_ratio"] = med["paper head, TorchScript"] / med["paper head"]
    if train:
        def train_step(m, opt):
            m.train()
            loss = sum(m(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()

        trained = attach_maskiou_head(copy.deepcopy(plain))
        opt_p = torch.optim.SGD(plain.parameters(), lr=1e-5)
        opt_s = torch.optim.SGD(trained.parameters(), lr=1e-5)
        tr = interleaved({"no head": lambda: train_step(plain, opt_p),
                          "paper head": lambda: train_step(trained, opt_s)}, repeats, device)
        r["train_step_s"] = tr
        r["train_step_ratio"] = tr["paper head"]["median"] / tr["no head"]["median"]
    return r


def target_timings(device: torch.device, repeats: int, n: int = 512) -> dict[str, Any]:
    """mask_iou_targets vectorized vs the per-RoI loop, ``n`` RoIs on 800x1333 images."""
    g = torch.Generator().manual_seed(0)
    h, w, n_gt = 800, 1333, 20
    gt = torch.zeros(n_gt, h, w, dtype=torch.uint8)
    boxes = []
    for i in range(n_gt):
        x1, y1 = int(torch.randint(0, w - 300, (1,), generator=g)), int(
            torch.randint(0, h - 300, (1,), generator=g))
        x2, y2 = x1 + 50 + int(torch.randint(0, 250, (1,), generator=g)), y1 + 50 + int(
            torch.randint(0, 250, (1,), generator=g))
        gt[i, y1:y2, x1:x2] = 1
        boxes.append([x1, y1, x2, y2])
    idx = torch.randint(0, n_gt, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 15
    proposals = torch.tensor(boxes, dtype=torch.float32)[idx] + jitter
    logits = torch.randn(n, 28, 28, generator=g)
    args = [t.to(device) for t in (logits, proposals, gt, idx)]
    fast = mask_iou_targets(*args)
    slow = mask_iou_targets_reference(*args)
    t = interleaved({"loop": lambda: mask_iou_targets_reference(*args),
                     "vectorized": lambda: mask_iou_targets(*args)}, repeats, device)
    return {"seconds": t, "speedup": t["loop"]["median"] / t["vectorized"]["median"], "rois": n,
            "max_abs_difference": float((fast.cpu() - slow).abs().max())}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="maskrcnn_resnet50_fpn", choices=MODEL_NAMES)
    p.add_argument("--sizes", nargs="+", default=["512x853", "800x1333"], metavar="HxW",
                   help="image sizes (default: 512x853 and the paper's 800x1333)")
    p.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda if present")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target-rois", type=int, default=512,
                   help="RoIs of the mask_iou_targets timing (default: %(default)s)")
    p.add_argument("--no-train", action="store_true", help="skip the training-step figure")
    p.add_argument("--output", default="results/speed.json")
    args = p.parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results: dict[str, Any] = {}
    for name in devices:
        device = torch.device(name)
        results[name] = {"machine": machine(device), "torch": torch.__version__,
                         "model": args.model, "sizes": {}}
        print(f"[{name}] {results[name]['machine']}, torch {torch.__version__}", flush=True)
        for i, size in enumerate(args.sizes):
            h, w = (int(v) for v in size.lower().split("x"))
            print(f"[{name}] {args.model} at {h}x{w}, {args.repeats} interleaved repeats ...",
                  flush=True)
            results[name]["sizes"][size] = model_timings(
                args.model, h, w, device, args.repeats, train=not args.no_train and i == 0)
        results[name]["targets"] = target_timings(device, args.repeats, args.target_rois)
    print(table(results))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _ms(t: dict[str, float]) -> str:
    return f"{t['min'] * 1e3:.0f} / {t['median'] * 1e3:.0f} ms"


def table(results: dict[str, Any]) -> str:
    lines = ["| device | measure | without | with | ratio of medians (goal) |",
             "|---|---|---|---|---|"]
    for dev, r in results.items():
        for size, s in r["sizes"].items():
            i = s["inference_s"]
            n = s["detections_per_image"]
            lines += [
                f"| {dev} | inference {size}, {n} dets: paper head (min / median) | "
                f"{_ms(i['no head'])} | {_ms(i['paper head'])} | "
                f"{s['inference_ratio']:.3f}x |",
                f"| {dev} | inference {size}, {n} dets: light head | {_ms(i['no head'])} | "
                f"{_ms(i['light head'])} | {s['light_inference_ratio']:.3f}x (<= 1.05x) |",
            ]
            a = s["head_alone_s"]
            lines += [
                f"| {dev} | {size}: the head's own forward on {n} RoIs, paper / light head | "
                f"{_ms(a['paper head'])} | {_ms(a['light head'])} | "
                f"+{s['head_share']:.1%} / +{s['light_head_share']:.2%} of no-head inference |",
            ]
            if "scripted_ratio" in s:
                lines.append(f"| {dev} | inference {size}: TorchScript vs eager (paper head) | "
                             f"{_ms(i['paper head'])} | {_ms(i['paper head, TorchScript'])} | "
                             f"{s['scripted_ratio']:.3f}x |")
            if "train_step_s" in s:
                t = s["train_step_s"]
                lines.append(f"| {dev} | training step {size}, 2 images | {_ms(t['no head'])} | "
                             f"{_ms(t['paper head'])} | {s['train_step_ratio']:.3f}x (<= 1.05x) |")
        g, c, lc = r["targets"], next(iter(r["sizes"].values()))["cost"], \
            next(iter(r["sizes"].values()))["light_cost"]
        lines += [
            f"| {dev} | mask_iou_targets, {g['rois']} RoIs, 800x1333 (loop vs vectorized) | "
            f"{_ms(g['seconds']['loop'])} | {_ms(g['seconds']['vectorized'])} | "
            f"{g['speedup']:.1f}x faster (>= 20x), max diff {g['max_abs_difference']:.1e} |",
            f"| {dev} | GMACs per RoI: mask head vs paper head / light head | "
            f"{c['mask_head_gmacs_per_roi']:.3f} | {c['head_gmacs_per_roi']:.3f} / "
            f"{lc['head_gmacs_per_roi']:.4f} | |",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
