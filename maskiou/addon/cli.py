"""``maskiou-addon``: attach the MaskIoU head to a trained detector and train only the head, on
the cached detections of labeled images the detector did not train on.

    maskiou-addon --detector runs/plain/model_final.pt --train-json ann.json \\
        --train-images imgs/ --output-dir runs/addon
    maskiou-addon --detector-config d2/config.yaml --detector d2/model_final.pth \\
        --train-json ann.json --train-images imgs/ --output-dir runs/addon   # detectron2
    maskiou-addon --detector runs/segment/train/weights/best.pt \\
        --train-json ann.json --train-images imgs/ --output-dir runs/addon   # ultralytics
    torchrun --nproc_per_node=8 -m maskiou.addon --detector ... --device cuda   # the collection
                                                 # pass on 8 processes; rank 0 trains the head

The detections are cached on disk (``--cache-dir``, default OUTPUT_DIR/cache) in float16 shards,
reused by a later run with the same detector, images and collection settings, resumed after an
interruption, and streamed to the head's training: memory stays bounded whatever the number of
images.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from maskiou.configs import HeadConfig
from maskiou.options import ArgumentParser, ConfigError

from .config import AddonConfig

HEAD_SET_BY_ADDON = ("output", "target")  # follow --addon-loss and --addon-target


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One ``--addon-<field>`` flag per :class:`AddonConfig` and :class:`HeadConfig` field
    (default: the config's)."""
    from maskiou.models.config import add_dataclass_arguments

    add_dataclass_arguments(p, AddonConfig, "add-on head training (default: AddonConfig's values)",
                            prefix="addon_", skip=("head",))
    add_dataclass_arguments(p, HeadConfig, "add-on head (default: AddonConfig's head)",
                            prefix="addon_", skip=HEAD_SET_BY_ADDON)


def config_from_args(args: argparse.Namespace, base: AddonConfig | None = None) -> AddonConfig:
    names = [f.name for f in dataclasses.fields(AddonConfig) if f.name != "head"] + \
        [f.name for f in dataclasses.fields(HeadConfig) if f.name not in HEAD_SET_BY_ADDON]
    values = {n: getattr(args, f"addon_{n}") for n in names}
    return (base or AddonConfig()).replace(**{k: v for k, v in values.items() if v is not None})


def converted_detector(args: argparse.Namespace) -> str:
    """The maskiou checkpoint of ``--detector-config``/``--detector``: converted once, by the
    main process, into the output folder; the other ranks then find it there."""
    from maskiou import distributed as D
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.models.load import convert_detector

    def convert() -> str:
        return str(convert_detector(args.detector_framework, args.detector_config,
                                    args.detector, dataset, args.output_dir))

    dataset = CocoInstanceDataset(args.train_json, args.train_images)
    path = convert() if D.is_main() else None
    D.barrier()
    return path or convert()


# packages whose pickled names say nothing about a file's framework
_NOT_FRAMEWORKS = frozenset({"torch", "numpy", "builtins", "__builtin__", "collections",
                             "_codecs", "copyreg"})


def own_weights_framework(path: str) -> str | None:
    """The framework whose own weights file ``path`` is: a file that is not a maskiou
    checkpoint but pickles classes of a package whose adapter converts its files (capability
    ``convert``, its ``framework`` the package's name; a trainer's ``best.pt`` that pickles its
    model object). None for anything else, a maskiou checkpoint among them."""
    from pathlib import Path

    import torch

    from maskiou.attach import UnknownFrameworkError, framework_adapter
    from maskiou.contract import AdapterContractError

    if not Path(path).is_file():
        return None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a torch file: reading it as a checkpoint says so
        return None
    packages = sorted({n.split(".")[0] for n in names} - _NOT_FRAMEWORKS
                      - set(sys.stdlib_module_names))
    for package in packages:
        try:
            framework_adapter(package, "convert")
        except (UnknownFrameworkError, AdapterContractError):
            continue
        return package
    return None


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="maskiou-addon", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", required=True, help="plain detector checkpoint (maskiou-train "
                   "--no-maskiou, or the shipped "
                   "maskiou/pretrained/synthetic_cpu_torchvision_plain.pt), or "
                   "with --detector-config the framework's own weights file (detectron2: "
                   "model_final.pth), or a framework's own weights file that pickles its "
                   "model (ultralytics: runs/segment/train/weights/best.pt, args.yaml read "
                   "from its run folder)")
    p.add_argument("--detector-config", help="the detector's config file in its framework's "
                   "format (detectron2: the YAML its trainer wrote, cfg.dump())")
    p.add_argument("--detector-framework", default="detectron2", help="with --detector-config: "
                   "the framework whose adapter reads it (default detectron2)")
    p.add_argument("--train-json", required=True, help="labeled images the detector did not "
                   "train on: the head trains on its detections there")
    p.add_argument("--train-images", required=True)
    p.add_argument("--output-dir", default="runs/addon")
    p.add_argument("--cache-dir", help="where the detections are cached (default: "
                   "OUTPUT_DIR/cache); one subfolder per detector, images and settings")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto; under torchrun "
                   "each rank takes its local GPU")
    p.add_argument("--workers", type=int, default=None, help="DataLoader processes reading the "
                   "cache during head training (0: read in this process; default: 0 on a CPU, "
                   "2 on a GPU)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-pixels", type=int, help="refuse images of more pixels (width x "
                   "height), read from their header before decoding (default: "
                   "MASKIOU_MAX_PIXELS, else 8192 x 8192 = 67,108,864)")
    add_config_flags(p)
    args = p.parse_args(argv)
    try:  # a bad value is refused here, before torch is imported
        cfg = config_from_args(args)
    except ConfigError as e:
        p.error(str(e))
    # the heavy part: torch, the detector
    from maskiou import distributed as D
    from maskiou.attach import UnknownFrameworkError
    from maskiou.contract import AdapterContractError
    from maskiou.data.coco import CocoFormatError, one_line, set_max_pixels
    from maskiou.models.checkpoint import CheckpointError

    from .cache import CacheKeyError
    from .run import train_addon

    try:
        set_max_pixels(args.max_pixels)
        _, _, device = D.init_distributed(args.device)
        detector = args.detector
        own = None if args.detector_config else own_weights_framework(args.detector)
        if own is not None:  # the framework's own weights alone: its adapter converts them
            args.detector_framework = own
        if args.detector_config or own is not None:
            detector = converted_detector(args)
        path = train_addon(detector, args.train_json, args.train_images, args.output_dir,
                           cfg, device=device, progress=not args.no_progress,
                           cache_dir=args.cache_dir, workers=args.workers,
                           log=lambda msg: print(msg, flush=True) if D.is_main() else None)
    except (CocoFormatError, CheckpointError, CacheKeyError, ValueError, FileNotFoundError,
            UnknownFrameworkError, AdapterContractError) as e:
        print(f"maskiou-addon: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        D.cleanup()
    if path is not None:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
