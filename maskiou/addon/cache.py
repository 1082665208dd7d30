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
- ``<name>.json``, written last and atomically: its row count, the hash of the cache key, and
  each of the four files' size and checksum (xxHash's XXH3-128, computed on the bytes as they
  are written). A shard without it is unfinished and is written again.

``manifest.json`` lists the shards in order with the cache key (the detector's SHA-1, the image
fingerprints, what was collected): a cache opened for another key is refused
(:class:`CacheKeyError`), never mixed.

What the cache proves (docs/robustness.md): a shard's files are checked against its record
(sizes, then checksums) when the shard is first read by a process; one that differs is named
(:class:`CacheCorruptError`), and the collection moves it aside into ``damaged/`` and writes it
again. No NaN or infinite value is written (the writer refuses, naming the image ids). A finished
cache is only read (the manifest is rewritten only when it changes), so it can be used from
read-only storage. Processes sharing a cache write each shard under their own temporary names,
holding an ``fcntl`` lock on ``.<name>.lock``; whoever takes a shard's lock first writes it, the
others find it finished (and checked) when the lock is free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import secrets
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from torch import Tensor

FEATURES = ("roi_features", "mask_probs")  # float16 rows, read from disk per batch
SCALARS: dict[str, Any] = {"labels": np.int64, "cls_scores": np.float32,
                           "maskness": np.float32, "rel_areas": np.float32,
                           "targets": np.float32, "image_ids": np.int64, "views": np.int8,
                           "boxes": np.float32}
SCALAR_SHAPES: dict[str, tuple[int, ...]] = {"boxes": (4,)}  # per row; the others one value
CACHE_FORMAT = 6  # 5: each shard's record holds its files' sizes and checksums; 6: boxes


def no_rows(field: str) -> np.ndarray:
    """An empty array of scalar field ``field``: its dtype and row shape."""
    return np.zeros((0, *SCALAR_SHAPES.get(field, ())), SCALARS[field])
# ``views``: how the detector saw the image of each detection (0: as it is, the test-time view
# the recalibration fits on; others: augmented views, see maskiou.addon.views.VIEWS)
SHARD_FILES = tuple(f"{f}.bin" for f in FEATURES) + ("rows.npz", "rles.json")
CHECKSUM = "xxh3_128"  # 10 GB/s here, against blake2b's 0.4 (research/checksum_cost.py)
_READONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


class CacheError(ValueError):
    """A cache that cannot be used as it is; the message is one line naming the folder or shard."""


class CacheKeyError(CacheError):
    """A cache folder written for another detector, other images or another collection."""


class CacheCorruptError(CacheError):
    """A shard whose files are not those its record describes (size or checksum)."""


def checksum() -> Any:
    """A new hasher of the cache's checksum (``update(bytes)``, ``hexdigest()``)."""
    return xxhash.xxh3_128()


def file_checksum(path: str | Path, chunk: int = 16 * 2**20) -> str:
    """The cache checksum of a file's bytes, read ``chunk`` bytes at a time."""
    h, buf = checksum(), bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def nonfinite_rows(arr: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``arr`` (float16 [n, ...] or float [n]) holding a NaN or an
    infinity. Float16 is tested on its bits (exponent all ones), 8x faster than np.isfinite."""
    n = len(arr)
    if n == 0 or arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.float16:
        bits = arr.reshape(n, -1).view(np.uint16) & np.uint16(0x7FFF)
        if int(bits.max()) < 0x7C00:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero((bits >= 0x7C00).any(axis=1))
    return np.flatnonzero(~np.isfinite(np.asarray(arr, dtype=np.float64).reshape(n, -1)).all(1))


def check_finite(rows: dict[str, np.ndarray], where: str, features: bool = True) -> None:
    """Refuse rows (as :meth:`ShardWriter.append` takes them) with a NaN or infinite feature
    (unless not ``features``) or score: CacheError naming the field and the image ids."""
    dtypes = {**(dict.fromkeys(FEATURES, np.float16) if features else {}),
              **{f: d for f, d in SCALARS.items() if np.dtype(d).kind == "f"}}
    for f, dtype in dtypes.items():
        bad = nonfinite_rows(np.asarray(rows[f], dtype=dtype))
        if len(bad):
            ids = sorted({int(i) for i in np.asarray(rows["image_ids"])[bad]})
            shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
            raise CacheError(
                f"{where}: {len(bad)} detections have NaN or infinite {f}"
                + (" in float16 (beyond +-65504, or not finite from the detector)"
                   if f in FEATURES else "") + f" (image ids {shown})")


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
        boxes: Tensor[D, 4] float32, (x1, y1, x2, y2) in the image's pixels (a view's brought
            back onto the image).
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
    boxes: Tensor

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
    def from_numpy(rows: dict[str, np.ndarray], where: str = "collection") -> HeadSamples:
        """Rows as :meth:`ShardWriter.append` takes them, in the dtypes the cache stores
        (CacheError for a NaN or infinite value, see :func:`check_finite`)."""
        check_finite(rows, where)
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


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class ShardWriter:
    """Writes one shard: :meth:`append` batches of rows, then :meth:`close` (or :meth:`abort`).

    The files are written under temporary names of this writer alone (process id and a random
    token) and renamed at :meth:`close`, the JSON record last: an interrupted collection leaves
    no shard that looks complete, and two processes never write the same file. Each file's
    checksum is computed on its bytes as they are written.
    """

    def __init__(self, directory: str | Path, name: str, key: str) -> None:
        self.directory, self.name, self.key = Path(directory), name, key
        self.directory.mkdir(parents=True, exist_ok=True)
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._files = {f: open(self._tmp(f"{f}.bin"), "wb") for f in FEATURES}
        self._sums = {f: checksum() for f in FEATURES}
        self._scalars: dict[str, list[np.ndarray]] = {f: [] for f in SCALARS}
        self._rles: list[dict[str, Any]] = []
        self._shapes: dict[str, list[int]] = {}
        self.rows = 0

    def _tmp(self, suffix: str) -> Path:
        return self.directory / f".{self.name}.{suffix}.{self._token}.tmp"

    def append(self, rows: dict[str, np.ndarray], rles: list[dict[str, Any]] | None = None
               ) -> None:
        """Add n rows: ``roi_features`` [n, C, S, S] and ``mask_probs`` [n, M, M] (stored as
        float16), one [n] array per scalar field and, when given, the n pasted masks' RLEs.
        Refuses (CacheError) rows with a NaN or infinite value."""
        n = len(rows["labels"])
        if rles is not None and len(rles) != n:
            raise ValueError(f"shard {self.name}: {len(rles)} masks for {n} detections")
        arrays = {f: np.ascontiguousarray(rows[f], dtype=np.float16) for f in FEATURES}
        for f, arr in arrays.items():
            if len(arr) != n:
                raise ValueError(f"shard {self.name}: {len(arr)} rows of {f} for {n} detections")
            shape = list(arr.shape[1:])
            if self._shapes.setdefault(f, shape) != shape:
                raise ValueError(f"shard {self.name}: {f} rows of shape {shape}, "
                                 f"earlier {self._shapes[f]}")
        check_finite({**rows, **arrays}, f"{self.directory}: shard {self.name} (not written)")
        self._rles.extend(rles or [None] * n)
        for f, arr in arrays.items():
            self._sums[f].update(arr.reshape(-1).view(np.uint8))
            arr.tofile(self._files[f])
        for f, dtype in SCALARS.items():
            self._scalars[f].append(np.asarray(rows[f], dtype=dtype).reshape(
                (n, *SCALAR_SHAPES.get(f, ()))))
        self.rows += n

    def close(self) -> dict[str, Any]:
        """Finish the shard; returns its JSON record (rows, key hash, row shapes, and each
        file's size and checksum)."""
        files: dict[str, dict[str, Any]] = {}
        for f, handle in self._files.items():
            handle.flush()
            os.fsync(handle.fileno())
            files[f"{f}.bin"] = {"bytes": handle.tell(), CHECKSUM: self._sums[f].hexdigest()}
            handle.close()
        scalars = {f: (np.concatenate(v) if v else no_rows(f))
                   for f, v in self._scalars.items()}
        buf = io.BytesIO()
        np.savez(buf, **scalars)
        blobs = {"rows.npz": buf.getvalue(), "rles.json": json.dumps(self._rles).encode()}
        for suffix, data in blobs.items():
            _write_bytes(self._tmp(suffix), data)
            h = checksum()
            h.update(data)
            files[suffix] = {"bytes": len(data), CHECKSUM: h.hexdigest()}
        for suffix in SHARD_FILES:
            os.replace(self._tmp(suffix), self.directory / f"{self.name}.{suffix}")
        record = {"name": self.name, "rows": self.rows, "key": self.key, "shapes": self._shapes,
                  "files": files}
        _atomic_write_text(self.directory / f"{self.name}.json", json.dumps(record) + "\n")
        return record

    def abort(self) -> None:
        for handle in self._files.values():
            handle.close()
        for suffix in SHARD_FILES:
            self._tmp(suffix).unlink(missing_ok=True)


def shard_record(directory: str | Path, name: str, key: str) -> dict[str, Any] | None:
    """The JSON record of a complete shard written for ``key`` (a :func:`key_hash`), or None
    (its files are not checked: :func:`shard_problem`)."""
    path = Path(directory) / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    complete = all((Path(directory) / f"{name}.{f}.bin").is_file() for f in FEATURES) and \
        (Path(directory) / f"{name}.rows.npz").is_file()
    return record if complete and isinstance(record, dict) and record.get("key") == key \
        else None


def shard_problem(directory: str | Path, name: str, record: dict[str, Any],
                  files: Iterable[str] = SHARD_FILES, sizes_only: bool = False) -> str | None:
    """What differs between a shard's ``files`` on disk and its record (a missing file, a size,
    a checksum: read whole), in words; None when they match."""
    want = record.get("files")
    if not isinstance(want, dict) or any(not isinstance(want.get(f), dict) for f in files):
        return "its record has no sizes and checksums"
    for suffix in files:
        path = Path(directory) / f"{name}.{suffix}"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path.name} is missing"
        if size != want[suffix].get("bytes"):
            return f"{path.name} has {size} bytes where {want[suffix].get('bytes')} were written"
    for suffix in () if sizes_only else files:
        if file_checksum(Path(directory) / f"{name}.{suffix}") != want[suffix].get(CHECKSUM):
            return f"{name}.{suffix} is damaged (its checksum is not the one written)"
    return None


def check_shard(directory: str | Path, name: str, key: str) -> tuple[str, str | None]:
    """(state, why) of shard ``name``: ``("ok", None)`` complete and intact (every file read
    and checksummed), ``("absent", None)`` unfinished (no record yet), ``("damaged", why)``."""
    path = Path(directory) / f"{name}.json"
    if not path.exists():
        return "absent", None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return "damaged", f"{path.name} is unreadable"
    if record.get("key") != key:
        return "damaged", f"{path.name} was written for another cache key"
    problem = shard_problem(directory, name, record)
    return ("ok", None) if problem is None else ("damaged", problem)


def move_aside(directory: str | Path, name: str) -> Path:
    """Move a damaged shard's files (its record first) into ``directory/damaged/``; returns the
    folder they went to."""
    directory = Path(directory)
    dest = directory / "damaged" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in ("json", *SHARD_FILES):
        path = directory / f"{name}.{suffix}"
        if path.exists():
            os.replace(path, dest / path.name)
    return dest


def require_writable(directory: Path, why: str) -> None:
    """CacheError (one line) unless files can be created in ``directory`` (or its nearest
    existing parent): a read-only cache is used as it is or refused, never half-written."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise CacheError(f"{directory}: the cache is read-only and {why}; collect into a "
                         "writable --cache-dir (or repair the cache where it is writable)")


@contextlib.contextmanager
def shard_lock(directory: str | Path, name: str, blocking: bool) -> Iterator[bool]:
    """Hold an exclusive ``fcntl`` lock on ``directory/.<name>.lock`` (yields True), or, not
    ``blocking``, yield False at once when another process holds it."""
    path = Path(directory) / f".{name}.lock"
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    except OSError as e:
        if e.errno in _READONLY:
            raise CacheError(f"{path}: cannot create the shard's lock file ({e.strerror}): "
                             "the cache is read-only") from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def claim_shards(directory: Path, shards: list[Any], key: str, log: Any = print
                 ) -> Iterator[Any]:
    """The shards (tuples whose first item is the name) this process must write, each yielded
    while this process holds its lock. Shards another process is writing are skipped at first
    and waited for at the end; one found finished meanwhile is checked, not written again; a
    damaged one is moved aside (:func:`move_aside`), said so, and yielded."""
    if shards:
        directory.mkdir(parents=True, exist_ok=True)
    waiting = []
    for blocking, todo in ((False, shards), (True, waiting)):
        for shard in todo:
            with shard_lock(directory, shard[0], blocking) as held:
                if not held:
                    waiting.append(shard)
                    continue
                state, why = check_shard(directory, shard[0], key)
                if state == "ok":
                    continue
                if state == "damaged":
                    dest = move_aside(directory, shard[0])
                    log(f"add-on cache: shard {shard[0]}: {why}; moved aside to {dest} and "
                        "collected again")
                yield shard


def write_manifest(directory: str | Path, key: dict[str, Any], names: list[str],
                   shapes: dict[str, list[int]]) -> None:
    """List the complete shards ``names`` (in order) as the cache of ``key``; a manifest that
    says so already is left as it is (a finished cache on read-only storage is only read)."""
    manifest = {"format": CACHE_FORMAT, "key": key, "shards": names, "shapes": shapes}
    path = Path(directory) / "manifest.json"
    try:
        if json.loads(path.read_text()) == manifest:
            return
    except (OSError, ValueError):
        pass
    require_writable(Path(directory), "its manifest.json is missing or out of date")
    _atomic_write_text(path, json.dumps(manifest) + "\n")


class DiskSamples:
    """The samples of a cache folder: the scalars in memory, the RoI features and mask
    probabilities read from disk per batch (:meth:`batch`). Same interface as
    :class:`HeadSamples` for training and prediction; picklable (DataLoader workers open their
    own file handles).

    Each shard's files are checked against its record the first time this process reads them
    (``rows.npz`` when the cache is opened, the feature files and ``rles.json`` when first
    read), except the shards in ``verified`` (just checked or written by the collection: their
    sizes only).

    Args:
        directory: the cache folder (``manifest.json`` and its shards).
        key: the cache key it must have been written for (None: any).
        verified: names of shards whose checksums need not be read again.

    Raises:
        CacheKeyError: the folder is the cache of another key.
        CacheCorruptError: a shard's file differs from its record.
        FileNotFoundError: no complete cache there.
    """

    def __init__(self, directory: str | Path, key: dict[str, Any] | None = None,
                 verified: Iterable[str] = ()) -> None:
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.directory}: no add-on cache here (no manifest.json)")
        try:
            manifest = json.loads(path.read_text())
            manifest["key"], manifest["shapes"], manifest["shards"]  # noqa: B018
        except (ValueError, KeyError, TypeError):
            raise CacheCorruptError(f"{path}: unreadable manifest; collect again") from None
        if key is not None and (manifest.get("format") != CACHE_FORMAT
                                or manifest.get("key") != key):
            raise CacheKeyError(
                f"{self.directory}: this cache was written for another detector, other images "
                "or another collection (its key differs); it is not mixed with this one")
        self.key = manifest["key"]
        self.shapes = {f: tuple(s) for f, s in manifest["shapes"].items()}
        self.shards: list[str] = manifest["shards"]
        self._verified = set(verified)
        self._records: list[dict[str, Any]] = []
        h = key_hash(self.key)
        counts, scalars = [], {f: [] for f in SCALARS}
        for name in self.shards:
            record = shard_record(self.directory, name, h)
            if record is None:
                raise FileNotFoundError(f"{self.directory}: shard {name} is missing or "
                                        "unfinished; collect again")
            self._records.append(record)
            self._check(len(self._records) - 1, SHARD_FILES, sizes_only=True)
            counts.append(record["rows"])
            for f, arr in self._rows_npz(name, record).items():
                scalars[f].append(arr)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        for f in SCALARS:
            arr = np.concatenate(scalars[f]) if scalars[f] else no_rows(f)
            setattr(self, f, torch.from_numpy(arr))
        self.row_bytes = {f: int(np.prod(self.shapes.get(f, (0,)))) * 2 for f in FEATURES}
        self._fds: dict[tuple[int, str], int] = {}

    def _check(self, shard: int, files: Iterable[str], sizes_only: bool = False) -> None:
        name = self.shards[shard]
        problem = shard_problem(self.directory, name, self._records[shard], files,
                                sizes_only=sizes_only or name in self._verified)
        if problem:
            raise CacheCorruptError(f"{self.directory}: shard {name}: {problem}; run "
                                    "maskiou-addon on this cache to collect it again")

    def _rows_npz(self, name: str, record: dict[str, Any]) -> dict[str, np.ndarray]:
        """The scalars of a shard, its ``rows.npz`` checked against the record first."""
        path = self.directory / f"{name}.rows.npz"
        data = path.read_bytes()
        if name not in self._verified:
            h = checksum()
            h.update(data)
            if h.hexdigest() != record["files"]["rows.npz"].get(CHECKSUM):
                raise CacheCorruptError(f"{self.directory}: shard {name}: {path.name} is "
                                        "damaged (its checksum is not the one written); run "
                                        "maskiou-addon on this cache to collect it again")
        try:
            with np.load(io.BytesIO(data)) as z:
                out = {f: z[f] for f in SCALARS}
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
            raise CacheCorruptError(f"{path}: unreadable ({e})") from None
        check_finite(out, str(path), features=False)
        return out

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
            self._check(shard, [f"{field}.bin"])  # the first read of this file here
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
                raise CacheCorruptError(f"{self.directory}/{self.shards[shard]}.{field}.bin: "
                                        "shorter than its record says (changed after it was "
                                        "checked?)")
        out[order] = sorted_out
        return out.reshape(len(rows), *self.shapes[field])

    def rles(self, rows: Tensor) -> list[dict[str, Any] | None]:
        """The pasted masks (COCO RLEs) of the detections at ``rows``, in that order."""
        out: list[dict[str, Any] | None] = []
        loaded: dict[int, list[Any]] = {}
        for row in rows.tolist():
            shard = int(np.searchsorted(self.offsets, row, side="right") - 1)
            if shard not in loaded:
                self._check(shard, ["rles.json"])
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
