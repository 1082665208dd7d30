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
