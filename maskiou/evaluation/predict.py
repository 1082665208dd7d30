"""One inference pass over a dataset, kept as compact per-detection records
(:class:`maskiou.records.Detections`): shared by the benchmarks and the demo."""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from maskiou.attach import find_adapter
from maskiou.contract import require
from maskiou.keep import kept
from maskiou.records import Detections, output_to_detections


def predictor(model: torch.nn.Module) -> Any:
    """``run(images) -> outputs``: the model run through its adapter (capability ``predict``:
    maskiou's images in, maskiou's detection records out, whatever the framework; see
    :mod:`maskiou.contract`). A model no adapter matches is called as it is: it must take and
    return those itself."""
    try:
        adapter = find_adapter(model)
    except TypeError:
        return model
    require(adapter, "predict", "running the model on images")
    return lambda images: adapter.predict(model, images)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: Any, indices: list[int] | None = None, *,
            device: str | torch.device = "cpu", batch_size: int = 4, progress: bool = True,
            desc: str = "inference", keep: bool = False) -> Detections:
    """Run ``model`` over ``dataset`` items (all, or ``indices``) in batches; with ``keep``,
    only the masks worth keeping (:func:`maskiou.kept`: each class's threshold stored in the
    model's head; the model needs one). The model's own switch (:func:`maskiou.set_keep`) is
    not touched: a model switched to ``"worth"`` returns only those masks either way."""
    model.eval().to(device)
    indices = list(range(len(dataset))) if indices is None else indices
    parts = []
    run = predictor(model)
    for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress,
                      dynamic_ncols=True):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        outputs = run([img.to(device) for img, _ in batch])
        if keep:
            outputs = kept(outputs, model)
        for (_, target), out in zip(batch, outputs):
            parts.append(output_to_detections(out, int(target["image_id"]),
                                              dataset.label_to_cat_id))
    return Detections.concat(parts)
