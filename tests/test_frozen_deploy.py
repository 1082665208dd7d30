"""Add-on mode deploys: a frozen detector (``freeze_detector=True``) with trainable batch norms
scripts with TorchScript, trains only the head (bit-identical detector, running statistics
included), survives deepcopy and pickling, and keeps its state_dict keys; the predicted
``mask_quality`` and ``maskness`` come out in the dtype of ``scores``."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import square_target
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from maskiou import attach_maskiou_head, freeze_model
from maskiou.branch import maskiou_outputs
from maskiou.scoring import add_maskiou_outputs, maskness

FIELDS = ("boxes", "labels", "scores", "cls_scores", "mask_quality", "maskness", "masks")
SIZE = 128


def build(sync_bn: bool = False, **kw) -> MaskRCNN:
    """A seeded resnet18-FPN Mask R-CNN whose BatchNorm2d layers train (weights=None)."""
    torch.manual_seed(0)
    bb = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                             norm_layer=nn.BatchNorm2d)
    small = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                 rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                 rpn_batch_size_per_image=64, box_batch_size_per_image=64,
                 box_detections_per_img=20)
    model = MaskRCNN(bb, num_classes=3, min_size=SIZE, max_size=SIZE, **{**small, **kw})
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def two_images(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, SIZE, SIZE, generator=g).to(dtype),
            torch.rand(3, 112, SIZE, generator=g).to(dtype)]


def two_targets() -> list[dict]:
    return [square_target(size=SIZE, box=(16, 16, 80, 80)),
            square_target(size=SIZE, box=(40, 8, 120, 60), label=2)]


def norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def assert_frozen(model: nn.Module) -> None:
    """Detector parameters frozen, head trainable, every batch norm in eval mode although the
    model trains."""
    model.train()
    head = model.roi_heads.maskiou_head
    head_ids = {id(p) for p in head.parameters()}
    assert model.training and model.roi_heads.training and head.training
    bns = norms(model)
    assert len(bns) == 20 and not any(m.training for m in bns)  # resnet18: 20 batch norms
    for p in model.parameters():
        assert p.requires_grad == (id(p) in head_ids)


@pytest.mark.threads
def test_frozen_model_with_trainable_batchnorm_scripts_and_equals_eager(tmp_path):
    model = attach_maskiou_head(build(box_score_thresh=0.0), freeze_detector=True).eval()
    # a fitted recalibration: the final scores the scripted model returns are the eager ones
    model.roi_heads.maskiou_head.calibration.set([0.3, 1.0, 2.0, 0.1, 1.5], 0.5)
    assert not any(m._forward_pre_hooks for m in model.modules())  # nothing TorchScript refuses
    images = two_images()
    with torch.no_grad():
        eager = model(images)
        scripted = torch.jit.script(model)
        _, out = scripted(images)
        torch.jit.save(scripted, str(tmp_path / "frozen.ts"))
        _, reloaded = torch.jit.load(str(tmp_path / "frozen.ts"))(images)
    assert len(eager) == len(out) == len(reloaded) == 2
    for a, b, c in zip(eager, out, reloaded):
        assert set(a) == set(FIELDS) and len(a["boxes"]) > 0
        assert not torch.allclose(a["scores"], a["cls_scores"] * a["mask_quality"])
        for k in FIELDS:  # float32: the same kernels on the same images, bit for bit
            assert torch.equal(a[k], b[k]), k
            assert torch.equal(a[k], c[k]), k


@pytest.mark.parametrize("sync_bn", [False, True], ids=["BatchNorm2d", "SyncBatchNorm"])
def test_training_step_moves_only_the_head(sync_bn):
    # control: the same detector unfrozen moves its running statistics in one training forward
    plain = attach_maskiou_head(build(sync_bn=sync_bn)).train()
    if sync_bn:  # SyncBatchNorm only trains on a GPU; its eval behaviour is what freezing keeps
        assert all(isinstance(m, nn.SyncBatchNorm) for m in norms(plain))
    else:
        mean0 = plain.backbone.body.bn1.running_mean.clone()
        torch.manual_seed(1)
        plain(two_images(), two_targets())
        assert not torch.equal(plain.backbone.body.bn1.running_mean, mean0)

    model = build(sync_bn=sync_bn)
    before = {k: v.clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    assert any(k.endswith("num_batches_tracked") for k in before)
    attach_maskiou_head(model, freeze_detector=True)
    assert_frozen(model)
    head = model.roi_heads.maskiou_head
    head0 = [p.detach().clone() for p in head.parameters()]
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    torch.manual_seed(1)
    losses = model(two_images(), two_targets())  # training logic: sampling and losses
    assert {"loss_classifier", "loss_mask", "loss_objectness", "loss_maskiou"} <= set(losses)
    assert losses["loss_maskiou"].item() > 0
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    after = dict([*model.named_parameters(), *model.named_buffers()])
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # weights, running_mean/var, num_batches_tracked
    assert all(not torch.equal(p, p0) for p, p0 in zip(head.parameters(), head0))


def test_deepcopy_and_pickle_of_a_frozen_model_stay_frozen(tmp_path):
    model = attach_maskiou_head(build(), freeze_detector=True)
    assert len({type(m) for m in norms(model)}) == 1  # one frozen class per norm class
    frozen_type = type(norms(model)[0])
    assert issubclass(frozen_type, nn.BatchNorm2d) and frozen_type is not nn.BatchNorm2d
    freeze_model(model.backbone)  # again: the same class, nothing stacked
    assert {type(m) for m in norms(model)} == {frozen_type}

    twin = copy.deepcopy(model)
    assert_frozen(twin)
    assert all(type(m) is frozen_type for m in norms(twin))

    # a user who pickles the whole model object (maskiou's own checkpoints never do)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    loaded = pickle.loads((tmp_path / "model.pkl").read_bytes())
    assert_frozen(loaded)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    # a new process, where no frozen class was made yet, loads it frozen too
    code = ("import pickle, sys, torch\n"
            "from torch.nn.modules.batchnorm import _BatchNorm\n"
            "m = pickle.loads(open(sys.argv[1], 'rb').read()).train()\n"
            "bns = [x for x in m.modules() if isinstance(x, _BatchNorm)]\n"
            "print(len(bns), sum(x.training for x in bns), m.roi_heads.training,\n"
            "      sum(p.requires_grad for p in m.parameters()),\n"
            "      len(list(m.roi_heads.maskiou_head.parameters())))\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pkl")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    n_bns, n_training, rh_training, n_grad, n_head = run.stdout.split()
    assert n_bns == str(len(norms(model))) and n_training == "0" and rh_training == "True"
    assert n_grad == n_head


def test_frozen_state_dict_keys_equal_an_unfrozen_attached_model():
    frozen = attach_maskiou_head(build(), freeze_detector=True).state_dict()
    plain = attach_maskiou_head(build()).state_dict()
    assert list(frozen.keys()) == list(plain.keys())
    assert any(k.endswith("running_var") for k in frozen)
    for k, v in plain.items():
        assert torch.equal(frozen[k], v), k  # built and attached from the same seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_predicted_scores_come_out_in_the_dtype_of_scores(dtype):
    model = attach_maskiou_head(build(box_score_thresh=0.0)).to(dtype).eval()
    images = two_images(dtype)
    with torch.no_grad():
        eager = model(images)
        # float32 is scripted in the first test, bit for bit
        scripted = torch.jit.script(model)(images)[1] if dtype == torch.float64 else eager
    for r, s in zip(eager, scripted):
        assert len(r["scores"]) > 0
        for k in ("scores", "cls_scores", "mask_quality", "maskness"):
            assert r[k].dtype == s[k].dtype == dtype, k
            # scripted torchvision (its transform) differs from eager by ~1e-6 in float64
            torch.testing.assert_close(s[k], r[k], rtol=0, atol=1e-5)
        # scores are this one (correctly rounded) product: exact
        assert torch.equal(r["scores"], r["cls_scores"] * r["mask_quality"])
        assert ((r["maskness"] == 0) | ((r["maskness"] > 0.5) & (r["maskness"] <= 1))).all()

    model.roi_heads.score_thresh = 1.01  # nothing survives
    with torch.no_grad():
        empty = model(images)
    for r in empty:
        for k in ("scores", "cls_scores", "mask_quality", "maskness"):
            assert r[k].shape == (0,) and r[k].dtype == dtype, k


def test_the_branch_keeps_float64_and_widens_half():
    probs = torch.tensor([[[0.9, 0.7], [0.6, 0.1]]], dtype=torch.float64)
    assert maskness(probs).dtype == torch.float64
    # summed in float64: float32 would be off by ~1e-8; the order of the sum may move the last
    # bit (0.9 + (0.7 + 0.6) is not (0.9 + 0.7) + 0.6 in float64), so 1e-12, not exact
    assert maskness(probs).item() == pytest.approx((0.9 + 0.7 + 0.6) / 3, rel=1e-12)
    assert maskness(probs.half()).dtype == torch.float32
    pred = torch.tensor([[0.25, 1.5]], dtype=torch.float64)
    ious, mk = maskiou_outputs(pred, probs, torch.tensor([1]), [1])
    assert ious[0].dtype == mk[0].dtype == torch.float64 and ious[0].tolist() == [1.0]
    ious, mk = maskiou_outputs(pred.bfloat16(), probs.bfloat16(), torch.tensor([0]), [1])
    assert ious[0].dtype == mk[0].dtype == torch.float32 and ious[0].tolist() == [0.25]

    r = {"scores": torch.tensor([0.5, 0.75], dtype=torch.float64)}
    add_maskiou_outputs(r, torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.75]), True)
    assert {r[k].dtype for k in ("scores", "cls_scores", "mask_quality", "maskness")} == {
        torch.float64}
    assert r["scores"].tolist() == [0.5, 0.375] and r["mask_quality"].tolist() == [1.0, 0.5]
