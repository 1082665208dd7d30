"""Size and FLOPs of the MaskIoU head next to the mask head, per RoI."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from maskiou.attach import find_adapter, find_maskiou_head
from maskiou.contract import has_capability


def count_flops(fn: Any, *args: Any) -> int:
    """FLOPs of one call as torch counts them (a multiply-add is 2 FLOPs)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


def head_cost(model: nn.Module) -> dict[str, Any]:
    """Parameters and per-RoI GFLOPs of the MaskIoU head and of the mask head (+ predictor).

    The paper's "0.39 vs 0.53 GFLOPs" counts multiply-adds; ``*_gmacs_per_roi`` is that
    convention, ``*_gflops_per_roi`` is torch's (2 per multiply-add).
    """
    head = find_maskiou_head(model)
    if head is None:
        raise ValueError("the model has no MaskIoU head")
    param = next(head.parameters())
    s = head.roi_size
    roi = torch.zeros(1, head.in_channels, s, s, device=param.device, dtype=param.dtype)
    probs = torch.zeros(1, head.mask_size, head.mask_size, device=param.device, dtype=param.dtype)
    scores = (torch.zeros(1, head.score_inputs, device=param.device, dtype=param.dtype)
              if head.score_inputs else None)
    head_flops = count_flops(head, roi, probs, scores)
    out: dict[str, Any] = {
        "head_params": sum(p.numel() for p in head.parameters()),
        "model_params": sum(p.numel() for p in model.parameters()),
        "head_gflops_per_roi": head_flops / 1e9,
        "head_gmacs_per_roi": head_flops / 2e9,
    }
    adapter = find_adapter(model)
    if has_capability(adapter, "cost"):
        mask_flops = count_flops(adapter.mask_branch(model), roi)
        out["mask_head_gflops_per_roi"] = mask_flops / 1e9
        out["mask_head_gmacs_per_roi"] = mask_flops / 2e9
    return out
