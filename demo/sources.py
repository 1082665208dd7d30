"""Where the demo's example images, ground truth and benchmark numbers come from."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from demo.inference import GroundTruth
from maskiou.models.config import resolve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METRICS = ROOT / "results" / "metrics.json"
DEFAULT_GALLERY = ROOT / "results" / "gallery.json"


class ValSplit:
    """The embedded validation split: example images and the ground truth of any of its images.

    Args:
        json_path, images_dir: a COCO-format split (default: the embedded synthetic one, generated
            on first use).
        num_examples: how many images the example gallery shows.
    """

    def __init__(self, json_path: str | Path, images_dir: str | Path, num_examples: int = 8
                 ) -> None:
        from maskiou.data.coco import CocoInstanceDataset

        self.dataset = CocoInstanceDataset(json_path, images_dir)
        self.images_dir = Path(images_dir)
        # images with the most instances first: they show the two scorings best
        counts = [len(self.dataset.coco.getAnnIds(imgIds=[image_id], iscrowd=False))
                  for image_id in self.dataset.image_ids]
        order = sorted(range(len(counts)), key=lambda i: (-min(counts[i], 4), i))
        self.example_indices = order[:num_examples]
        self.gallery_size = 0  # how many examples come from the benchmark's gallery.json
        self._hashes: dict[str, int] | None = None
        self._lock = threading.Lock()

    @classmethod
    def embedded(cls, num_examples: int = 8) -> ValSplit:
        """The embedded synthetic split of the default ``synthetic-cpu`` config."""
        from maskiou.models.paths import resolve_split

        json_path, images = resolve_split(resolve("synthetic-cpu", {}), "val")
        return cls(json_path, images, num_examples)

    def examples(self) -> list[tuple[str, str]]:
        """(image path, caption) of the example images."""
        return [(str(self.dataset.image_path(i)), Path(self.dataset.image_path(i)).stem)
                for i in self.example_indices]

    def use_gallery(self, path: str | Path) -> bool:
        """Show first the images of the benchmark's ``gallery.json`` (those whose ranking the
        learned score fixes most), when it was computed on this split. Returns whether it was."""
        try:
            data = json.loads(Path(path).read_text())
            if Path(data["val_json"]).resolve() != self.dataset.ann_file.resolve():
                return False
            index = {int(image_id): i for i, image_id in enumerate(self.dataset.image_ids)}
            picked = [index[int(r["image_id"])] for r in data["images"]]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not picked:
            return False
        rest = [i for i in self.example_indices if i not in picked]
        self.example_indices = (picked + rest)[:max(len(self.example_indices), len(picked))]
        self.gallery_size = len(picked)
        return True

    def index_of_file(self, path: str | Path) -> int | None:
        """Index of the split's image with the same bytes as ``path``, or None."""
        with self._lock:
            if self._hashes is None:
                self._hashes = {_sha1(self.dataset.image_path(i)): i
                                for i in range(len(self.dataset))}
        try:
            return self._hashes.get(_sha1(path))
        except OSError:
            return None

    def ground_truth(self, index: int) -> GroundTruth:
        _, target = self.dataset[index]
        return GroundTruth(target["masks"].numpy(), target["labels"].numpy(),
                           self.dataset.class_names)


def _sha1(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def benchmark_summary(path: str | Path = DEFAULT_METRICS) -> str:
    """One Markdown line: mask AP of the split under each scoring, from ``results/metrics.json``
    (written by ``python benchmarks/coco_eval.py``), or how to get it."""
    path = Path(path)
    if not path.is_file():
        return ("**Benchmark:** none yet. Run `python benchmarks/coco_eval.py` to measure mask AP "
                "under each scoring (it writes "
                f"`{short_path(path)}`).")
    try:
        m = json.loads(path.read_text())
        segm = m["segm"]
        aps = {name: float(segm[name]["AP"]) for name in
               ("cls", "maskness", "rescored", "recalibrated", "oracle") if name in segm}
        aps["cls"], aps["maskness"]  # noqa: B018 - both must be there
    except (OSError, ValueError, KeyError, TypeError) as e:
        name = short_path(path)
        return f"**Benchmark:** `{name}` could not be read ({type(e).__name__}: {e})."
    titles = {"cls": "classification score", "maskness": "× maskness (free)",
              "rescored": "× predicted MaskIoU", "recalibrated": "recalibrated",
              "oracle": "× true MaskIoU (oracle)"}
    parts = [f"{titles[k]} **{v:.1f}**" for k, v in aps.items()]
    line = (f"**Benchmark** ({m.get('num_images', '?')} validation images, "
            f"`{short_path(path)}`), mask AP: " + " · ".join(parts))
    pearson = m.get("correlation", {}).get("head_pearson")
    if pearson is not None:
        line += f". Pearson r of predicted vs true MaskIoU: {float(pearson):.2f}"
    return line + "."


def short_path(path: Path) -> str:
    """``path`` as the page shows it, without this machine's folders (a page may be shared):
    relative to the current folder when it is below it, ``~/...`` below the home folder, else
    its folder and name (``.../addon/model_final.pt``)."""
    resolved = path.resolve()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + resolved.relative_to(base).as_posix()
        except ValueError:
            pass
    return "/".join(["...", *resolved.parts[-2:]])
