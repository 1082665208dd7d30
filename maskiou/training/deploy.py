"""Deployment formats of a trained model: TorchScript and ONNX (inference only).

An attached torchvision Mask R-CNN scripts and exports wherever torchvision's own does: the
MaskIoU branch adds three outputs (``cls_scores``, ``mask_quality``, ``maskness``) and the final
``scores``. ONNX uses the TorchScript-based exporter with torchvision's own recipe (opset 17,
dynamic image and detection axes); the ``torch.export``-based exporter (``dynamo=True``) fails on
torchvision's plain Mask R-CNN on this torch release (a data-dependent guard in the RPN), so it is
not used. ONNX needs the ``export`` extra: ``pip install "maskiou[export]"``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maskiou.attach import find_maskiou_head

DETECTION_FIELDS = ("boxes", "labels", "scores", "masks")
MASKIOU_FIELDS = ("cls_scores", "mask_quality", "maskness")
ONNX_OPSET = 17


def output_names(model: nn.Module) -> list[str]:
    """Names of one image's outputs, in the order the model's result dict holds them."""
    extra = MASKIOU_FIELDS if find_maskiou_head(model) is not None else ()
    return [*DETECTION_FIELDS, *extra]


def script_model(model: nn.Module, path: str | Path | None = None) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of ``model`` in eval mode, saved to ``path`` when given.

    A scripted torchvision detector returns ``(losses, detections)``, as torchvision's does.
    """
    scripted = torch.jit.script(model.eval())
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path))
    return scripted


def export_onnx(model: nn.Module, example: list[Tensor], path: str | Path | None = None
                ) -> bytes:
    """Export ``model`` (eval mode) for one image at a time; returns the ONNX bytes.

    Args:
        model: a torchvision Mask R-CNN, with or without the head.
        example: ``[Tensor[3, H, W]]``, float in [0, 1]; H and W stay dynamic in the graph.
        path: also write the bytes there.

    The graph's input is ``image`` (Tensor[3, H, W]) and its outputs are
    :func:`output_names` (n detections each; ``masks`` Tensor[n, 1, H, W]).
    """
    if len(example) != 1:
        raise ValueError("export_onnx: give one example image; the graph takes one image")
    names = output_names(model)
    axes: dict[str, Any] = {"image": {1: "height", 2: "width"}}
    axes.update({name: {0: "detections"} for name in names})
    axes["masks"] = {0: "detections", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model.eval(), (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                          do_constant_folding=True, input_names=["image"],
                          output_names=names, dynamic_axes=axes)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def run_onnx(data: bytes | str | Path, image: Tensor) -> dict[str, Tensor]:
    """Run an exported graph with onnxruntime on one image; returns the output dict."""
    import onnxruntime

    source = data if isinstance(data, bytes) else str(data)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: image.cpu().numpy()})
    return {o.name: torch.from_numpy(v) for o, v in zip(session.get_outputs(), outputs)}
