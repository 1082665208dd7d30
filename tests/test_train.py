import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskiou.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    save_atomic,
)
from maskiou.models.config import resolve
from maskiou.models.load import build_model, load_trained_model
from maskiou.training.cli import main
from maskiou.training.trainer import Trainer, lr_factor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from maskiou.data.synthetic import generate_synthetic_coco

    return generate_synthetic_coco(tmp_path_factory.mktemp("syn"), 8, 4, seed=1, image_size=64,
                                   progress=False)


def tiny_args(data, out, *extra):
    return ["--output-dir", str(out), "--synthetic-dir", str(data.root), "--synthetic-train", "8",
            "--synthetic-val", "4", "--synthetic-image-size", "64", "--min-size", "64",
            "--max-size", "64", "--batch-size", "2", "--log-every", "1", "--no-progress",
            "--workers", "0", *extra]


def tiny_cfg(data, **kw):
    base = dict(synthetic_dir=str(data.root), synthetic_train=8, synthetic_val=4,
                synthetic_image_size=64, min_size=64, max_size=64, batch_size=2, log_every=1,
                workers=0, max_iters=4, checkpoint_every=2)
    return resolve("synthetic-cpu", {**base, **kw})


def test_lr_schedule_values():
    cfg = resolve("coco-r50-1x", {"warmup_iters": 100, "lr_steps": [200, 300]})
    assert lr_factor(cfg, 0, 400) == pytest.approx(0.001)
    assert lr_factor(cfg, 50, 400) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(cfg, 150, 400) == 1.0
    assert lr_factor(cfg, 250, 400) == pytest.approx(0.1)
    assert lr_factor(cfg, 350, 400) == pytest.approx(0.01)
    cos = resolve("synthetic-cpu", {"warmup_iters": 0})
    assert lr_factor(cos, 50, 100) == pytest.approx(0.5)
    assert cfg.scaled_lr(world_size=1) == pytest.approx(0.02 * 2 / 16)


def test_synthetic_cpu_config_trains_and_checkpoint_loads(tiny_data, tmp_path):
    assert main(tiny_args(tiny_data, tmp_path, "--max-iters", "2")) == 0
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 2 and "loss_maskiou" in log[-1]
    model, meta = load_trained_model(tmp_path / "model_final.pt")
    assert meta["iteration"] == 2 and meta["class_names"][0] == "__background__"
    assert model.roi_heads.maskiou_head.convs[0].out_channels == 64
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])[0]
    assert {"cls_scores", "mask_quality"} <= set(out)


def test_coco_recipe_shape_and_baseline(tiny_data, tmp_path):
    args = tiny_args(tiny_data, tmp_path, "--config", "coco-r50-1x", "--dataset", "synthetic",
                     "--weights-backbone", "none", "--max-iters", "1", "--no-maskiou",
                     "--rpn-post-nms-top-n-train", "100", "--box-batch-size-per-image", "32")
    assert main(args) == 0
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"]["model"] == "maskrcnn_resnet50_fpn"
    assert not any("maskiou" in k for k in ckpt["model"])


@pytest.mark.threads
def test_resume_is_exact(tiny_data, tmp_path, monkeypatch):
    straight = Trainer(tiny_cfg(tiny_data), tmp_path / "a", progress=False)
    straight.train()
    first = Trainer(tiny_cfg(tiny_data), tmp_path / "b", progress=False)
    real_step = Trainer.step

    def interrupted(self, images, targets):
        if self.iteration == 3:  # killed during iteration 4, after the checkpoint at 2
            raise KeyboardInterrupt
        return real_step(self, images, targets)

    monkeypatch.setattr(Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    monkeypatch.undo()
    resumed = Trainer(tiny_cfg(tiny_data), tmp_path / "b", progress=False)
    resumed.resume(tmp_path / "b" / "last.pt")
    assert resumed.iteration == 2
    resumed.train()
    # the same batches, seeds and steps in one process: the same computation, bit for bit
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_freeze_detector_from_checkpoint(tiny_data, tmp_path):
    assert main(tiny_args(tiny_data, tmp_path / "det", "--max-iters", "1", "--no-maskiou")) == 0
    det = tmp_path / "det" / "model_final.pt"
    trainer = Trainer(tiny_cfg(tiny_data, freeze_detector=True, detector_checkpoint=str(det),
                               max_iters=1), tmp_path / "head", progress=False)
    before = load_checkpoint(det)["model"]
    trainer.train()
    after = trainer.model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "iteration": 1}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"model": {"w": torch.zeros(2)}, "iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_mismatched_checkpoint_says_so_in_one_line(tiny_data, tmp_path):
    assert main(tiny_args(tiny_data, tmp_path, "--max-iters", "1")) == 0
    path = tmp_path / "model_final.pt"
    ckpt = load_checkpoint(path)
    n = len(ckpt["class_names"])
    other = build_model(tiny_cfg(tiny_data), num_classes=n - 2)
    with pytest.raises(CheckpointError, match=rf"cls_score.*checkpoint has {n} classes, this "
                       rf"model {n - 2}") as e:
        load_model_state(other, ckpt["model"], path)
    assert "\n" not in str(e.value)
    ckpt["class_names"] = ckpt["class_names"][:-1]
    torch.save(ckpt, tmp_path / "fewer.pt")
    trainer = Trainer(tiny_cfg(tiny_data), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="trained on classes"):
        trainer.resume(tmp_path / "fewer.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_bad_input_exits_nonzero(tmp_path, capsys):
    code = main(["--output-dir", str(tmp_path), "--train-json", str(tmp_path / "nope.json"),
                 "--train-images", str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.json" in err[0]


def _weights(path: Path) -> torch.Tensor:
    state = load_checkpoint(path)["model"]
    return torch.cat([v.flatten().float() for k, v in sorted(state.items())
                      if v.is_floating_point()])


def test_two_gloo_processes_update_like_one_process_with_the_same_global_batch(tiny_data,
                                                                               tmp_path):
    """torchrun, 2 processes x 1 image against 1 process x 2 images, 2 SGD steps.

    Made deterministic: group norm (no batch statistics), every anchor and proposal sampled
    (no random RoI subsets), no flips, SGD (Adam would magnify tiny differences). What remains
    is that DDP averages two per-image mean losses where one process takes the mean over both
    images' RoIs together: a small difference, stated below as a share of the update, against
    a control that drops one image of each batch. The port comes from torchrun's --standalone
    rendezvous (a free port at the moment of use), never a fixed number.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    det = ["--norm", "gn", "--head-norm", "gn", "--rpn-batch-size-per-image", "100000",
           "--box-batch-size-per-image", "100000", "--hflip", "0", "--optimizer", "sgd",
           "--lr", "0.01", "--warmup-iters", "0", "--max-iters", "2", "--checkpoint-every", "1"]
    single = tmp_path / "single"
    assert main(tiny_args(tiny_data, single, *det, "--batch-size", "2")) == 0
    half = tmp_path / "half"  # the control: one image per step, lr scaled as for one of two
    assert main(tiny_args(tiny_data, half, *det, "--batch-size", "1", "--lr", "0.005")) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "maskiou.training", *tiny_args(tiny_data, tmp_path / "ddp", *det,
                                                "--batch-size", "1")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 2 iterations") == 1  # rank 0 alone reports
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["iteration"] == 2 and ckpt["world_size"] == 2
    torch.manual_seed(0)
    start = torch.cat([v.flatten().float() for k, v in sorted(
        build_model(tiny_cfg(tiny_data, norm="gn", head_norm="gn"), len(ckpt["class_names"]))
        .state_dict().items()) if v.is_floating_point()])
    one, two, ctl = (_weights(d / "last.pt") for d in (single, tmp_path / "ddp", half))
    step = (one - start).norm()
    assert step > 0
    print(f"DDP vs one process: {float((two - one).norm() / step):.4f} of the update; "
          f"control: {float((ctl - one).norm() / step):.4f}")
    assert (two - one).norm() < 0.01 * step  # measured: 0.0002
    assert (ctl - one).norm() > 0.2 * step  # measured: 0.76


def test_cli_resume_continues_and_amp_runs(tiny_data, tmp_path, capsys):
    assert main(tiny_args(tiny_data, tmp_path, "--max-iters", "2")) == 0
    assert main(tiny_args(tiny_data, tmp_path, "--max-iters", "3", "--resume")) == 0
    out = capsys.readouterr()
    assert "done: 3 iterations" in out.out and "different max_iters" in out.err
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in log] == [1, 2, 3]  # the resumed run appends
    amp = tmp_path / "amp"
    assert main(tiny_args(tiny_data, amp, "--max-iters", "1", "--amp", "bf16")) == 0
    assert load_checkpoint(amp / "model_final.pt")["config"]["amp"] == "bf16"
    assert math.isfinite(json.loads((amp / "train_log.jsonl").read_text())["loss"])


def test_export_cli_writes_slim_torchscript_and_onnx_or_says_why(tiny_data, tmp_path, capsys):
    from maskiou.training.export import main as export

    assert main(tiny_args(tiny_data, tmp_path, "--max-iters", "1")) == 0
    src = tmp_path / "model_final.pt"
    assert export([str(src), str(tmp_path / "slim.pt"), "--torchscript",
                   str(tmp_path / "m.ts")]) == 0
    slim = load_checkpoint(tmp_path / "slim.pt")
    assert all(v.dtype == torch.float16 for k, v in slim["model"].items()
               if v.is_floating_point() and ".maskiou_head." not in k)
    assert all(v.dtype == torch.float32 for k, v in slim["model"].items()
               if ".maskiou_head." in k and v.is_floating_point())  # the head stays exact
    scripted = torch.jit.load(str(tmp_path / "m.ts"))
    _, out = scripted([torch.rand(3, 64, 64)])
    assert {"cls_scores", "mask_quality", "maskness"} <= set(out[0])
    if importlib.util.find_spec("onnxruntime"):
        assert export([str(src), "--onnx", str(tmp_path / "m.onnx")]) == 0
        assert (tmp_path / "m.onnx").stat().st_size > 100_000
    capsys.readouterr()
    assert export([str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt: checkpoint not found" in err[0]
    assert not (tmp_path / "x.pt").exists()
