"""Cost of the MaskIoU head, each figure a ratio measured side by side in one run.

    python benchmarks/speed.py                    # CPU (and CUDA too when a GPU is present)
    python benchmarks/speed.py --device cuda --model maskrcnn_resnet50_fpn --size 800 1333

Interleaved repeats (with, without, with, ...) and medians, so drift hits both sides alike.
Prints a table and writes JSON (default results/speed.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskiou import attach_maskiou_head  # noqa: E402
from maskiou.evaluation.cost import head_cost  # noqa: E402
from maskiou.targets import mask_iou_targets, project_masks  # noqa: E402
from maskiou.training.builders import MODEL_NAMES, build_maskrcnn  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device
                ) -> dict[str, float]:
    """Median seconds of each function, calling them in turn ``repeats`` times (after one
    warm-up call each)."""
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
    return {k: statistics.median(v) for k, v in times.items()}


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


def mask_iou_targets_reference(
    mask_logits: Tensor, proposals: Tensor, gt_masks: Tensor, matched_idxs: Tensor
) -> Tensor:
    """The same targets computed one RoI at a time on the CPU, the way public ports do.

    Slow on purpose: it is the reference the vectorized version is checked and timed against.
    Shapes as in :func:`mask_iou_targets`.
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


def model_timings(name: str, h: int, w: int, device: torch.device, repeats: int
                  ) -> dict[str, Any]:
    torch.manual_seed(0)
    # Group norm: a random network without normalization (frozen BN at identity) overflows and
    # detects nothing; with GN it gives the full 100 detections, the case the head costs most.
    plain = build_maskrcnn(name, 81, norm="gn", min_size=min(h, w), max_size=max(h, w),
                           box_score_thresh=0.0).to(device)
    scored = attach_maskiou_head(copy.deepcopy(plain))
    images, targets = scene(h, w, 10, device)

    def infer(m):
        m.eval()
        with torch.no_grad():
            return m(images[:1])

    def train_step(m, opt):
        m.train()
        loss = sum(m(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    opt_p = torch.optim.SGD(plain.parameters(), lr=1e-5)
    opt_s = torch.optim.SGD(scored.parameters(), lr=1e-5)
    inf = interleaved({"without": lambda: infer(plain), "with": lambda: infer(scored)}, repeats,
                      device)
    tr = interleaved({"without": lambda: train_step(plain, opt_p),
                      "with": lambda: train_step(scored, opt_s)}, repeats, device)
    n_det = len(infer(scored)[0]["boxes"])
    return {"inference_s": inf, "inference_ratio": inf["with"] / inf["without"],
            "train_step_s": tr, "train_step_ratio": tr["with"] / tr["without"],
            "detections_per_image": n_det, "cost": head_cost(scored)}


def target_timings(device: torch.device, repeats: int, n: int = 512) -> dict[str, Any]:
    """mask_iou_targets vectorized vs the per-RoI loop, 512 RoIs on 800x1333 images."""
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
    return {"seconds": t, "speedup": t["loop"] / t["vectorized"],
            "max_abs_difference": float((fast.cpu() - slow).abs().max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="maskrcnn_resnet50_fpn", choices=MODEL_NAMES)
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="image size (default 512 853 on CPU, 800 1333 on CUDA)")
    p.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda if present")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", default="results/speed.json")
    args = p.parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results: dict[str, Any] = {}
    for name in devices:
        device = torch.device(name)
        h, w = args.size or ((512, 853) if device.type == "cpu" else (800, 1333))
        print(f"[{name}] {args.model} at {h}x{w}, {args.repeats} interleaved repeats ...",
              flush=True)
        r = model_timings(args.model, h, w, device, args.repeats)
        r["targets"] = target_timings(device, args.repeats)
        r.update(model=args.model, size=[h, w], device=torch.cuda.get_device_name(device)
                 if device.type == "cuda" else "cpu", torch_threads=torch.get_num_threads())
        results[name] = r
    print(table(results))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def table(results: dict[str, Any]) -> str:
    lines = ["| device | measure | without head | with head | ratio (goal) |",
             "|---|---|---|---|---|"]
    for dev, r in results.items():
        i, t, g = r["inference_s"], r["train_step_s"], r["targets"]
        lines += [
            f"| {dev} | inference, 1 image {r['size'][0]}x{r['size'][1]}, "
            f"{r['detections_per_image']} detections | {i['without'] * 1e3:.0f} ms | "
            f"{i['with'] * 1e3:.0f} ms | {r['inference_ratio']:.3f}x (<= 1.02x) |",
            f"| {dev} | training step, 2 images | {t['without'] * 1e3:.0f} ms | "
            f"{t['with'] * 1e3:.0f} ms | {r['train_step_ratio']:.3f}x (<= 1.05x) |",
            f"| {dev} | mask_iou_targets, 512 RoIs, 800x1333 (loop vs vectorized) | "
            f"{g['seconds']['loop'] * 1e3:.1f} ms | {g['seconds']['vectorized'] * 1e3:.1f} ms | "
            f"{g['speedup']:.0f}x faster (>= 20x), max diff {g['max_abs_difference']:.1e} |",
            f"| {dev} | GMACs per RoI: mask head (without column) vs MaskIoU head (with "
            f"column); paper 0.53 vs 0.39 | {r['cost']['mask_head_gmacs_per_roi']:.3f} | "
            f"{r['cost']['head_gmacs_per_roi']:.3f} | "
            f"{r['cost']['head_gmacs_per_roi'] / r['cost']['mask_head_gmacs_per_roi']:.2f}x |",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
