"""``maskiou-convert``: rewrite a checkpoint written by an older maskiou in the current form
(schema :data:`~maskiou.models.checkpoint.SCHEMA`: tensors and JSON-like values, loadable with
``torch.load(weights_only=True)``).

    maskiou-convert old/model_final.pt new/model_final.pt

maskiou before schema 2 stored the add-on's recalibration as a pickled scikit-learn model (and
the trainer's resume state a NumPy random state), which ``weights_only=True`` refuses to
unpickle. This command reads such a file with an allow-list of exactly those classes
(``LogisticRegression`` and NumPy arrays), so even here nothing else in a file is ever run,
turns them into plain values (the recalibration's weights become tensors in the head), and writes
the new file atomically. Convert only files you trust: the allow-list limits what is built, not
what the weights do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import CheckpointError, load_allowing, migrate, named_object, save_atomic

LEGACY_GLOBALS = ("numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                  "numpy.core.multiarray._reconstruct",
                  "sklearn.linear_model._logistic.LogisticRegression")
"""What files of maskiou before schema 2 need beyond plain data (checked by name before
anything is loaded)."""


_DTYPE_CLASSES = {type(np.dtype(t)).__name__: type(np.dtype(t))
                  for t in ("float64", "float32", "int64", "int32", "uint32", "bool", "float16",
                            "uint8", "int8")}
"""The dtype classes NumPy pickles arrays with (``numpy.dtypes.Float64DType``, ...): built while
an array is unpickled, so allowed whether or not the file names them."""


def _legacy_object(name: str) -> Any:
    """What a legacy file may unpickle under ``name``: one of :data:`LEGACY_GLOBALS`, or a
    dtype class of :data:`_DTYPE_CLASSES`; None for anything else."""
    if name in LEGACY_GLOBALS:
        return named_object(name)
    if name.startswith("numpy.dtypes."):
        return _DTYPE_CLASSES.get(name.rpartition(".")[2])
    return None


def read_legacy(path: str | Path) -> dict[str, Any]:
    """A checkpoint of any maskiou version as a dict, unpickling nothing but
    :data:`LEGACY_GLOBALS` (and NumPy's dtype classes); a file that needs anything else is
    refused, naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    ckpt = load_allowing(path, _legacy_object, "checkpoint",
                         "which no maskiou checkpoint contains",
                         also=tuple(_DTYPE_CLASSES.values()))
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a maskiou checkpoint (no 'model' entry)")
    return _plain(ckpt, path)


def _plain(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """The legacy objects of a checkpoint as plain values: the recalibration's logistic model
    as its weights and bias, NumPy random states as tensors."""
    out = dict(ckpt)
    addon = out.get("addon")
    if isinstance(addon, dict) and isinstance(addon.get("recalibration"), dict):
        recal = dict(addon["recalibration"])
        model = recal.pop("model", None)
        if model is not None:
            if recal.get("kind") != "logistic":
                raise CheckpointError(f"{path}: its {recal.get('kind')} recalibration is no longer "
                                      "supported (only the logistic one runs inside the model): "
                                      "train the add-on again")
            recal["weights"] = [float(w) for w in model.coef_[0]]
            recal["bias"] = float(model.intercept_[0])
        out["addon"] = {**addon, "recalibration": recal}
    if "rng" in out:
        from .checkpoint import plain_rng_state

        states = out["rng"] if isinstance(out["rng"], list) else [out["rng"]]
        out["rng"] = [plain_rng_state(s) for s in states]
    return out


def convert_checkpoint(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Read ``src`` (any maskiou version, :func:`read_legacy`), migrate it to the current schema
    and write it to ``dst`` atomically; returns the new checkpoint."""
    ckpt = migrate(read_legacy(src), src)
    save_atomic(ckpt, dst)
    return ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="maskiou-convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a checkpoint written by an older maskiou (that you trust)")
    p.add_argument("dst", help="where the converted checkpoint goes")
    args = p.parse_args(argv)
    try:
        convert_checkpoint(args.src, args.dst)
    except CheckpointError as e:
        print(f"maskiou-convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} (schema 2: loads with weights_only=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
