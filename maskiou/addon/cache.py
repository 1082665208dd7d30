"""What a frozen detector gives the MaskIoU head, computed once: the samples head-only training
runs on, in memory (:class:`HeadSamples`) or on disk in float16 shards (:class:`DiskSamples`).

A frozen detector's RoI features and mask probabilities never change, so the add-on runs the
detector once over its labeled images and keeps, for every final detection, the head's two
inputs and the detection's true MaskIoU. At COCO scale these do not fit in memory (an R-50-FPN
RoI feature is 256 x 14 x 14 float16, 100 KB: 5,000 images x 100 detections x 2 mirrored is
100 GB), so the collection pass writes them to shards on disk and training reads each batch's
rows with positioned reads (``os.pread``: the page cache holds what fits, the process's own
memory only the batch).

A shard is three files in the cache folder:

- ``<name>.roi_features.bin`` and ``<name>.mask_probs.bin``: raw float16 rows, C x S x S and
  M x M each, in the detector's order;
- ``<name>.rows.npz``: the per-detection scalars (labels, class score, maskness, box share,
  true MaskIoU, image id, view), kept in memory when the cache is opened (41 bytes a detection);
- ``<name>.rles.json``: each detection's pasted mask as a COCO RLE (read only to measure AP on
  the add-on images themselves);
- ``<name>.json``, written last and atomically: its row count and the hash of the cache key.
  A shard without it is unfinished and is written again.

``manifest.json`` lists the shards in order with the cache key (the detector's SHA-1, the image
fingerprints, what was collected): a cache opened for another key is refused
(:class:`CacheKeyError`), never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FEATURES = ("roi_features", "mask_probs")  # float16 rows, read from disk per batch
SCALARS: dict[str, Any] = {"labels": np.int64, "cls_scores": np.float32,
                           "maskness": np.float32, "rel_areas": np.float32,
                           "targets": np.float32, "image_ids": np.int64, "views": np.int8}
CACHE_FORMAT = 4
# ``views``: how the detector saw the image of each detection (0: as it is, the test-time view
# the recalibration fits on; others: augmented views, see maskiou.addon.views.VIEWS)


class CacheKeyError(ValueError):
    """A cache folder written for another detector, other images or another collection."""


def key_hash(key: dict[str, Any]) -> str:
    """SHA-1 of a cache key (a JSON-able dict), the same for equal keys."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass
class HeadSamples:
    """Detections of a frozen detector with the MaskIoU head's inputs, D rows, in memory.

    Attributes:
        roi_features: Tensor[D, C, S, S] float16, the mask branch's RoI features.
        mask_probs: Tensor[D, M, M] float16, the predicted class's mask probabilities.
        labels: Tensor[D] int64, predicted classes (contiguous labels).
        cls_scores: Tensor[D] float32, classification confidence.
        maskness: Tensor[D] float32, :func:`maskiou.maskness` of the mask.
        rel_areas: Tensor[D] float32, box area / image area.
        targets: Tensor[D] float32, true MaskIoU of the pasted mask with the best GT instance
            of its class in its image (0 when none: a false positive).
        image_ids: Tensor[D] int64, the dataset's image id of each detection.
        views: Tensor[D] int8, the view of the image the detector saw (0: the image itself).
    """

    roi_features: Tensor
    mask_probs: Tensor
    labels: Tensor
    cls_scores: Tensor
    maskness: Tensor
    rel_areas: Tensor
    targets: Tensor
    image_ids: Tensor
    views: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> HeadSamples:
        return HeadSamples(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def batch(self, rows: Tensor) -> HeadSamples:
        """The samples at ``rows`` (Tensor[B] int64), in that order."""
        return self.subset(rows.to(self.labels.device))

    def to(self, device: str | torch.device, non_blocking: bool = False) -> HeadSamples:
        return HeadSamples(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                              for f in fields(self)})

    def pin_memory(self) -> HeadSamples:
        """Page-locked copies (the DataLoader calls this with ``pin_memory=True``)."""
        return HeadSamples(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    @staticmethod
    def concat(parts: list[HeadSamples]) -> HeadSamples:
        return HeadSamples(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                              for f in fields(HeadSamples)})

    @staticmethod
    def from_numpy(rows: dict[str, np.ndarray]) -> HeadSamples:
        """Rows as :meth:`ShardWriter.append` takes them, in the dtypes the cache stores."""
        dtypes = {**dict.fromkeys(FEATURES, np.float16), **SCALARS}
        return HeadSamples(**{f: torch.from_numpy(np.ascontiguousarray(rows[f], dtype=dtypes[f]))
                              for f in dtypes})


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Writes one shard: :meth:`append` batches of rows, then :meth:`close` (or :meth:`abort`).

    The files are written under temporary names and renamed at :meth:`close`, the JSON last: an
    interrupted collection leaves no shard that looks complete.
    """

    def __init__(self, directory: str | Path, name: str, key: str) -> None:
        self.directory, self.name, self.key = Path(directory), name, key
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files = {f: open(self._tmp(f"{f}.bin"), "wb") for f in FEATURES}
        self._scalars: dict[str, list[np.ndarray]] = {f: [] for f in SCALARS}
        self._rles: list[dict[str, Any]] = []
        self._shapes: dict[str, list[int]] = {}
        self.rows = 0

    def _tmp(self, suffix: str) -> Path:
        return self.directory / f".{self.name}.{suffix}.tmp"

    def append(self, rows: dict[str, np.ndarray], rles: list[dict[str, Any]] | None = None
               ) -> None:
        """Add n rows: ``roi_features`` [n, C, S, S] and ``mask_probs`` [n, M, M] (stored as
        float16), one [n] array per scalar field and, when given, the n pasted masks' RLEs."""
        n = len(rows["labels"])
        if rles is not None and len(rles) != n:
            raise ValueError(f"shard {self.name}: {len(rles)} masks for {n} detections")
        self._rles.extend(rles or [None] * n)
        for f in FEATURES:
            arr = np.ascontiguousarray(rows[f], dtype=np.float16)
            if len(arr) != n:
                raise ValueError(f"shard {self.name}: {len(arr)} rows of {f} for {n} detections")
            shape = list(arr.shape[1:])
            if self._shapes.setdefault(f, shape) != shape:
                raise ValueError(f"shard {self.name}: {f} rows of shape {shape}, "
                                 f"earlier {self._shapes[f]}")
            arr.tofile(self._files[f])
        for f, dtype in SCALARS.items():
            self._scalars[f].append(np.asarray(rows[f], dtype=dtype).reshape(n))
        self.rows += n

    def close(self) -> dict[str, Any]:
        """Finish the shard; returns its JSON record (rows, key hash, row shapes)."""
        for f, handle in self._files.items():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(self._tmp(f"{f}.bin"), self.directory / f"{self.name}.{f}.bin")
        scalars = {f: (np.concatenate(v) if v else np.zeros(0, SCALARS[f]))
                   for f, v in self._scalars.items()}
        with open(self._tmp("rows.npz"), "wb") as handle:
            np.savez(handle, **scalars)
        os.replace(self._tmp("rows.npz"), self.directory / f"{self.name}.rows.npz")
        self._tmp("rles.json").write_text(json.dumps(self._rles))
        os.replace(self._tmp("rles.json"), self.directory / f"{self.name}.rles.json")
        record = {"name": self.name, "rows": self.rows, "key": self.key, "shapes": self._shapes}
        _atomic_write_text(self.directory / f"{self.name}.json", json.dumps(record) + "\n")
        return record

    def abort(self) -> None:
        for f, handle in self._files.items():
            handle.close()
            self._tmp(f"{f}.bin").unlink(missing_ok=True)


def shard_record(directory: str | Path, name: str, key: str) -> dict[str, Any] | None:
    """The JSON record of a complete shard written for ``key`` (a :func:`key_hash`), or None."""
    path = Path(directory) / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    complete = all((Path(directory) / f"{name}.{f}.bin").is_file() for f in FEATURES) and \
        (Path(directory) / f"{name}.rows.npz").is_file()
    return record if complete and record.get("key") == key else None


def write_manifest(directory: str | Path, key: dict[str, Any], names: list[str],
                   shapes: dict[str, list[int]]) -> None:
    """List the complete shards ``names`` (in order) as the cache of ``key``."""
    _atomic_write_text(Path(directory) / "manifest.json", json.dumps(
        {"format": CACHE_FORMAT, "key": key, "shards": names, "shapes": shapes}) + "\n")


class DiskSamples:
    """The samples of a cache folder: the scalars in memory, the RoI features and mask
    probabilities read from disk per batch (:meth:`batch`). Same interface as
    :class:`HeadSamples` for training and prediction; picklable (DataLoader workers open their
    own file handles).

    Args:
        directory: the cache folder (``manifest.json`` and its shards).
        key: the cache key it must have been written for (None: any).

    Raises:
        CacheKeyError: the folder is the cache of another key.
        FileNotFoundError: no complete cache there.
    """

    def __init__(self, directory: str | Path, key: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.directory}: no add-on cache here (no manifest.json)")
        manifest = json.loads(path.read_text())
        if key is not None and (manifest.get("format") != CACHE_FORMAT
                                or manifest.get("key") != key):
            raise CacheKeyError(
                f"{self.directory}: this cache was written for another detector, other images "
                "or another collection (its key differs); it is not mixed with this one")
        self.key = manifest["key"]
        self.shapes = {f: tuple(s) for f, s in manifest["shapes"].items()}
        self.shards: list[str] = manifest["shards"]
        h = key_hash(self.key)
        counts, scalars = [], {f: [] for f in SCALARS}
        for name in self.shards:
            record = shard_record(self.directory, name, h)
            if record is None:
                raise FileNotFoundError(f"{self.directory}: shard {name} is missing or "
                                        "unfinished; collect again")
            counts.append(record["rows"])
            with np.load(self.directory / f"{name}.rows.npz") as z:
                for f in SCALARS:
                    scalars[f].append(z[f])
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        for f, dtype in SCALARS.items():
            arr = np.concatenate(scalars[f]) if scalars[f] else np.zeros(0, dtype)
            setattr(self, f, torch.from_numpy(arr))
        self.row_bytes = {f: int(np.prod(self.shapes.get(f, (0,)))) * 2 for f in FEATURES}
        self._fds: dict[tuple[int, str], int] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the feature rows on disk."""
        return len(self) * sum(self.row_bytes.values())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def _fd(self, shard: int, field: str) -> int:
        if (shard, field) not in self._fds:
            path = self.directory / f"{self.shards[shard]}.{field}.bin"
            self._fds[shard, field] = os.open(path, os.O_RDONLY)
        return self._fds[shard, field]

    def read_features(self, rows: np.ndarray, field: str) -> np.ndarray:
        """float16 [len(rows), *shape] of ``field`` at the global ``rows``, in that order: rows
        sorted, runs of consecutive rows read with one ``os.preadv`` each."""
        size = self.row_bytes[field]
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), size // 2), dtype=np.float16)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        if len(srt) and (srt[0] < 0 or srt[-1] >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        sorted_out = np.empty_like(out)
        shard_of = np.searchsorted(self.offsets, srt, side="right") - 1
        # a run: consecutive rows of one shard (a repeated row starts a new run)
        breaks = np.flatnonzero((np.diff(srt) != 1) | (np.diff(shard_of) != 0)) + 1
        for run in np.split(np.arange(len(srt)), breaks):
            if not len(run):
                continue
            shard = int(shard_of[run[0]])
            first = int(srt[run[0]] - self.offsets[shard])
            view = memoryview(sorted_out[run[0]:run[-1] + 1]).cast("B")
            got = os.preadv(self._fd(shard, field), [view], first * size)
            if got != len(run) * size:
                raise OSError(f"{self.directory}/{self.shards[shard]}.{field}.bin: short read")
        out[order] = sorted_out
        return out.reshape(len(rows), *self.shapes[field])

    def rles(self, rows: Tensor) -> list[dict[str, Any] | None]:
        """The pasted masks (COCO RLEs) of the detections at ``rows``, in that order."""
        out: list[dict[str, Any] | None] = []
        loaded: dict[int, list[Any]] = {}
        for row in rows.tolist():
            shard = int(np.searchsorted(self.offsets, row, side="right") - 1)
            if shard not in loaded:
                path = self.directory / f"{self.shards[shard]}.rles.json"
                loaded[shard] = json.loads(path.read_text())
            out.append(loaded[shard][row - int(self.offsets[shard])])
        return out

    def batch(self, rows: Tensor) -> HeadSamples:
        """The samples at ``rows`` (Tensor[B] int64), in that order, as :class:`HeadSamples`."""
        idx = rows.cpu().numpy()
        feats = {f: torch.from_numpy(self.read_features(idx, f)) for f in FEATURES}
        return HeadSamples(**feats, **{f: getattr(self, f)[rows.cpu()] for f in SCALARS})

    def load(self, rows: Tensor | None = None, device: str | torch.device = "cpu",
             chunk: int = 4096) -> HeadSamples:
        """The samples at ``rows`` (default: all) in memory on ``device``, read ``chunk`` rows at
        a time (host memory holds one chunk)."""
        rows = torch.arange(len(self)) if rows is None else rows.cpu()
        return HeadSamples.concat([self.batch(rows[i:i + chunk]).to(device)
                                   for i in range(0, max(len(rows), 1), chunk)])
