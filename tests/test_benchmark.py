import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import coco_eval  # noqa: E402

SCORES = {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_end_to_end_on_a_tiny_synthetic_split(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results"
    args = ["--max-iters", "2", "--synthetic-train", "8", "--synthetic-val", "4",
            "--output-dir", str(out), "--no-progress", "--batch-size", "2"]
    assert coco_eval.main([*args, "--train-baseline"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for iou_type in ("segm", "bbox"):
        assert set(metrics[iou_type]) == {"cls", "rescored", "oracle"}
        for scoring in metrics[iou_type].values():
            assert set(scoring) == SCORES
    assert {"pearson", "spearman", "cls_pearson", "ece_cls", "ece_rescored"} <= \
        set(metrics["correlation"])
    assert metrics["num_images"] == 4 and metrics["num_detections"] >= 0
    assert set(metrics["baseline"]["segm"]) == SCORES
    for name in ("report.md", "maskiou_correlation.png", "score_vs_maskiou.png",
                 "results_segm_rescored.json", "results_bbox_cls.json"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "| MS R-CNN (cls x predicted MaskIoU) |" in printed
    # the second run reuses the cached model instead of training again
    assert coco_eval.main(args) == 0
    assert "reusing trained model" in capsys.readouterr().out


def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code = coco_eval.main(["--checkpoint", str(tmp_path / "none.pt"), "--val-json", str(bad),
                           "--val-images", str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.pt" in err[0]
    code = coco_eval.main(["--val-json", str(bad), "--val-images", str(tmp_path)])
    assert code == 2 and "--checkpoint" in capsys.readouterr().err


def test_export_and_shipped_warm_start(tmp_path, monkeypatch, capsys):
    import torch

    from maskiou.data.synthetic import generate_synthetic_coco
    from maskiou.evaluation import benchmark
    from maskiou.training.config import resolve
    from maskiou.training.export import export_checkpoint
    from maskiou.training.models import load_trained_model
    from maskiou.training.trainer import Trainer

    data = generate_synthetic_coco(tmp_path / "syn", 8, 4, seed=1, image_size=64, progress=False)
    cfg = resolve("synthetic-cpu", dict(synthetic_dir=str(data.root), synthetic_train=8,
                                        synthetic_val=4, synthetic_image_size=64, min_size=64,
                                        max_size=64, batch_size=2, max_iters=1, workers=0))
    Trainer(cfg, tmp_path / "run", progress=False).train()
    shipped = tmp_path / "shipped.pt"
    size = export_checkpoint(tmp_path / "run" / "model_final.pt", shipped)
    assert size < (tmp_path / "run" / "last.pt").stat().st_size / 4  # fp16, no optimizer
    monkeypatch.setattr(benchmark, "shipped_model_path", lambda: shipped)

    other = resolve("synthetic-cpu", {**cfg.to_dict(), "lr": 1.0})
    assert benchmark.install_shipped_model(other, tmp_path / "other") is None
    path = benchmark.train_or_reuse(cfg, tmp_path / "default", progress=False)
    assert "using the shipped warm-start model" in capsys.readouterr().out
    full, _ = load_trained_model(tmp_path / "run" / "model_final.pt")
    slim, meta = load_trained_model(path)
    assert meta["iteration"] == 1
    for (k, a), b in zip(full.state_dict().items(), slim.state_dict().values()):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), atol=1e-2), k


def test_distributed_evaluation_matches_single_process(tmp_path):
    """torchrun with 2 gloo processes: each rank a shard, gathered on rank 0, same metrics."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKIOU_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    common = ["--max-iters", "2", "--synthetic-train", "8", "--synthetic-val", "6",
              "--no-progress", "--batch-size", "1"]  # same batches in both: same numerics
    single = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "coco_eval.py"), *common,
                             "--output-dir", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29533", str(ROOT / "benchmarks" / "coco_eval.py"),
                           *common, "--output-dir", str(tmp_path / "two")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["num_images"] == 6 and two["num_detections"] == one["num_detections"]
    assert two["segm"] == one["segm"] and two["bbox"] == one["bbox"]
