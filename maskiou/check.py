"""``check_adapter``: run the adapter contract (:mod:`maskiou.contract`) against a model and name
every member that does not hold it. For adapter authors, as torchvision's and detectron2's own
test utilities are for theirs::

    from maskiou import check_adapter
    report = check_adapter(MyAdapter(), my_model, images, targets)   # raises, naming members
    print(report)

It attaches the add-on's head (score inputs on) to copies of the model, so the model passed in
is left as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .attach import attach_maskiou_head, find_maskiou_head
from .branch import score_features
from .contract import AdapterContractError, capabilities_of, missing_members
from .loss import select_class
from .scoring import maskness

CHECK_HEAD = {"conv_channels": 8, "num_convs": 2, "fc_dim": 16, "score_inputs": 2}
"""The head the checks attach: the add-on's kind (score inputs on), small."""

CHECK_CALIBRATION = ([0.5, 2.0, 1.0, 0.25, 1.0], -0.5)
"""The recalibration fitted in the head the checks attach (weights in the order of
:data:`maskiou.calibration.SIGNALS`, bias): far from ``cls x quality`` (the score of a head
whose recalibration is not fitted), so that an adapter that skips the final score fails."""

RECORD_FIELDS = ("boxes", "labels", "scores", "masks")
HEAD_FIELDS = ("cls_scores", "mask_quality", "maskness")


@dataclass
class AdapterReport:
    """What :func:`maskiou.check_adapter` ran: the checks that passed, the problems (each naming the
    member), and the capabilities it could not exercise (and why)."""

    adapter: str
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [f"adapter {self.adapter}: {len(self.passed)} checks passed, "
                 f"{len(self.problems)} problems"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  not run: {s}" for s in self.skipped]
        return "\n".join(lines)


class _Checker:
    def __init__(self, report: AdapterReport) -> None:
        self.report = report

    def run(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``; an AssertionError or any exception is a problem named by ``what``."""
        try:
            out = fn()
        except AssertionError as e:
            self.report.problems.append(f"{what}: {e}")
            return None
        except Exception as e:  # noqa: BLE001 - whatever the adapter raises is the finding
            self.report.problems.append(f"{what}: raised {type(e).__name__}: {e}")
            return None
        self.report.passed.append(what)
        return out


def _check_records(records: Any, images: list[Tensor], num_classes: int, head: nn.Module | None,
                   member: str) -> None:
    """``records`` are maskiou's detection records of ``images``; with the ``head`` attached,
    with its fields and ``scores`` = the head's final score (its calibration)."""
    assert isinstance(records, list), f"returned a {type(records).__name__}, not a list"
    assert len(records) == len(images), \
        f"returned {len(records)} records for {len(images)} images (one record per image)"
    with_head = head is not None
    for i, (rec, img) in enumerate(zip(records, images)):
        where = f"record {i}"
        assert isinstance(rec, Mapping), f"{where} is a {type(rec).__name__}, not a dict"
        need = RECORD_FIELDS + (HEAD_FIELDS if with_head else ())
        lacking = [k for k in need if k not in rec]
        assert not lacking, f"{where} has no {', '.join(lacking)}"
        n = len(rec["scores"])
        h, w = img.shape[-2:]
        assert tuple(rec["boxes"].shape) == (n, 4), f"{where}: boxes {tuple(rec['boxes'].shape)}"
        assert rec["labels"].dtype == torch.int64, f"{where}: labels are {rec['labels'].dtype}"
        if n:
            assert int(rec["labels"].min()) >= 1 and int(rec["labels"].max()) < num_classes, \
                f"{where}: labels outside 1..{num_classes - 1} (0 is the background)"
        assert tuple(rec["masks"].shape) == (n, 1, h, w), \
            f"{where}: masks {tuple(rec['masks'].shape)}, expected {(n, 1, h, w)} (pasted in " \
            "the image)"
        s = rec["scores"]
        assert bool((s[:-1] >= s[1:]).all()), f"{where}: scores are not sorted, highest first"
        for k in HEAD_FIELDS if with_head else ():
            v = rec[k]
            assert tuple(v.shape) == (n,), f"{where}: {k} has shape {tuple(v.shape)}"
            if k != "cls_scores":
                assert bool(((v >= 0) & (v <= 1)).all()), f"{where}: {k} outside [0, 1]"
        if head is not None and n:
            _check_final_score(rec, head, (int(h), int(w)), where)


def _check_final_score(rec: Mapping[str, Tensor], head: nn.Module, image_size: tuple[int, int],
                       where: str) -> None:
    """``scores`` of one record = the head's calibration (:data:`CHECK_CALIBRATION`, fitted) of
    its ``cls_scores``, ``mask_quality``, ``maskness``, boxes and labels in an image of
    ``image_size`` (height, width)."""
    with torch.no_grad():
        want = head.calibration(rec["cls_scores"], rec["mask_quality"], rec["maskness"],
                                rec["boxes"], rec["labels"], image_size)
    s = rec["scores"]
    assert torch.allclose(s.float(), want.float(), rtol=1e-4, atol=1e-5), \
        f"{where}: scores are not the final score (the head's calibration of cls_scores, " \
        "mask_quality, maskness, the boxes and labels: head.calibration(...); a head with a " \
        f"fitted recalibration gave {want[:3].tolist()}, the adapter {s[:3].tolist()})"


def _same_detections(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> None:
    """The detector's own fields of two runs are bit-identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        for k in RECORD_FIELDS:
            assert torch.equal(x[k], y[k]), \
                f"record {i}: {k} differs from the plain detector's (attaching must not change " \
                "the detector's outputs when the head's score is not used)"


@dataclass
class _Subject:
    """What the checks run on: the adapter, the plain model (never changed) and the images."""

    adapter: Any
    model: nn.Module
    images: list[Tensor]
    device: torch.device

    def attached(self, rescore_outputs: bool = True) -> nn.Module:
        """A copy of the model with the check's head (seeded, :data:`CHECK_HEAD`) and its
        recalibration (:data:`CHECK_CALIBRATION`) attached through the adapter, eval mode.
        The process's random state is left as it was."""
        m = copy.deepcopy(self.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            m = attach_maskiou_head(m, adapter=self.adapter, freeze_detector=True,
                                    rescore_outputs=rescore_outputs, **CHECK_HEAD)
        head = find_maskiou_head(m)
        if head is not None:  # (an install that puts none is the install check's finding)
            head.calibration.set(*CHECK_CALIBRATION)
        return m.eval()


def _check_matches(sub: _Subject) -> None:
    assert sub.adapter.matches(sub.model) is True, f"returned False for {type(sub.model).__name__}"


def _check_head_defaults(sub: _Subject) -> dict[str, Any]:
    d = sub.adapter.head_defaults(sub.model)
    assert isinstance(d, dict), f"returned a {type(d).__name__}, not a dict"
    for k in ("in_channels", "num_classes", "roi_size"):
        assert isinstance(d.get(k), int) and d[k] > 0, f"{k} is {d.get(k)!r}, not an int > 0"
    return d


def _check_install(sub: _Subject, sizes: dict[str, Any]) -> nn.Module:
    m = sub.attached()
    head = find_maskiou_head(m)
    assert head is not None, "no MaskIoUHead is in the model after install"
    for k in ("in_channels", "num_classes", "roi_size"):
        assert getattr(head, k) == sizes[k], f"the head's {k} is {getattr(head, k)}, " \
            f"head_defaults said {sizes[k]}"
    return m


def _check_predict(sub: _Subject, model: nn.Module, num_classes: int,
                   head: nn.Module | None) -> list[dict[str, Tensor]]:
    """``predict`` of ``model`` (plain: ``head`` None; else the head in it) gives maskiou's
    records (:func:`_check_records`)."""
    out = sub.adapter.predict(model, sub.images)
    _check_records(out, sub.images, num_classes, head, "predict")
    return out


def _check_unchanged(sub: _Subject, plain_out: list[dict[str, Tensor]] | None
                     ) -> list[dict[str, Tensor]]:
    """The detector's own outputs with the head attached (its score unused) are the plain
    model's; returns those records (the detector's order)."""
    assert plain_out is not None, "the plain model's predict failed"
    out = sub.adapter.predict(sub.attached(rescore_outputs=False), sub.images)
    _same_detections(plain_out, out)
    return out


def _check_collect(sub: _Subject, model: nn.Module, head: nn.Module,
                   unsorted: list[dict[str, Tensor]] | None) -> None:
    """``collect`` returns each detection's head inputs in the head's shapes, and the head on
    them gives the ``mask_quality`` that ``predict`` returned (``unsorted``: its records in the
    detector's order, when that check ran)."""
    out = sub.adapter.collect(model, sub.images)
    assert isinstance(out, list) and len(out) == len(sub.images), \
        "one record per image expected"
    for i, rec in enumerate(out):
        for k in ("boxes", "labels", "scores", "roi_features", "mask_probs"):
            assert k in rec, f"record {i} has no {k}"
        n = len(rec["scores"])
        f, p = rec["roi_features"], rec["mask_probs"]
        want_f = (n, head.in_channels, head.roi_size, head.roi_size)
        assert tuple(f.shape) == want_f, f"record {i}: roi_features " \
            f"{tuple(f.shape)}, the head takes {want_f}"
        want_p = (n, head.mask_size, head.mask_size)
        assert tuple(p.shape) == want_p, f"record {i}: mask_probs {tuple(p.shape)}, " \
            f"the head takes {want_p}"
        assert bool(((p >= 0) & (p <= 1)).all()), f"record {i}: mask_probs outside [0, 1]"
        if unsorted is None or not n:
            continue
        ref = unsorted[i]
        assert torch.equal(rec["scores"], ref["cls_scores"]), \
            f"record {i}: scores are not the detector's class confidences in its order"
        with torch.no_grad():
            extra = score_features(rec["scores"].to(p.dtype), maskness(p))
            pred = select_class(head(f, p, extra), rec["labels"]).float().clamp(0, 1)
        assert torch.allclose(pred, ref["mask_quality"].float(), atol=1e-5), \
            f"record {i}: the head on the collected inputs does not give predict's " \
            "mask_quality (collect must return exactly what the head sees)"


def _check_losses(sub: _Subject, targets: list[dict[str, Tensor]]) -> None:
    """``loss_maskiou`` joins the loss dict, finite, with a gradient; one step with a frozen
    detector moves the head and no detector weight."""
    m = sub.attached()
    before = {k: v.detach().clone() for k, v in m.state_dict().items()
              if ".maskiou_head." not in k and "maskiou_head." not in k}
    head_w = [p.detach().clone() for p in find_maskiou_head(m).parameters()]
    out = sub.adapter.losses(m, sub.images, targets)
    assert isinstance(out, dict) and "loss_maskiou" in out, \
        f"no loss_maskiou among {sorted(out) if isinstance(out, dict) else out}"
    loss = out["loss_maskiou"]
    assert loss.dim() == 0 and bool(torch.isfinite(loss)), f"loss_maskiou is {loss}"
    assert loss.requires_grad, "loss_maskiou has no gradient"
    trainable = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    sum(v for v in out.values() if v.requires_grad).backward()
    opt.step()
    after = m.state_dict()
    moved = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not moved, f"a frozen detector moved in one step: {moved[:3]}"
    assert any(not torch.equal(a, b.detach()) for a, b in
               zip(head_w, find_maskiou_head(m).parameters())) or float(loss) == 0.0, \
        "the head did not move in one step"


def _check_mask_branch(sub: _Subject, model: nn.Module, head: nn.Module) -> None:
    fn = sub.adapter.mask_branch(model)
    x = torch.zeros(1, head.in_channels, head.roi_size, head.roi_size, device=sub.device)
    with torch.no_grad():
        out = fn(x)
    assert isinstance(out, Tensor) and out.shape[0] == 1, \
        "the mask branch did not map one RoI to one output"


def _check_load(sub: _Subject, detector: Mapping[str, Any]) -> None:
    m = sub.adapter.load_detector(detector)
    assert isinstance(m, nn.Module), f"returned a {type(m).__name__}"
    assert sub.adapter.matches(m), "the adapter does not match the model it rebuilt"
    assert find_maskiou_head(m) is None, "the rebuilt detector already has a head"


def check_adapter(adapter: Any, model: nn.Module, images: list[Tensor] | None = None,
                  targets: list[dict[str, Tensor]] | None = None, *,
                  detector: Mapping[str, Any] | None = None,
                  raise_errors: bool = True) -> AdapterReport:
    """Run the adapter contract against ``model`` (a plain detector of the adapter's family).

    Checks the required members and those of every declared capability; that ``matches`` and
    ``head_defaults`` hold; that ``install`` puts a head of those sizes in the model; with
    ``predict``, that the records are maskiou's (fields, shapes, labels, sorted scores, and
    ``scores`` = the final score: the head is given a fitted recalibration,
    ``maskiou.check.CHECK_CALIBRATION``, far from cls x the head's output, so an adapter that
    skips it fails) and that the detector's own outputs are bit-identical to the plain model's
    when the head's score is not used; with ``collect``, that each detection's head inputs have the
    head's shapes and give the head output ``predict`` returns; with ``losses`` (given
    ``targets``), that ``loss_maskiou`` joins the loss dict, finite and with a gradient, and
    that a step with a frozen detector moves the head and no detector weight; with ``cost``,
    that the mask branch runs on RoI features; with ``load`` (given a checkpoint's
    ``detector`` entry), that the rebuilt model is one the adapter matches.

    Args:
        adapter: the adapter under test.
        model: a plain detector (no head), in its own format; it is copied, never changed.
        images: maskiou images (Tensor[3, H, W] RGB in [0, 1]) on the model's device; default:
            two random 64 x 64 images. The model should detect something on them for the
            per-detection checks to have rows (random weights usually do).
        targets: maskiou targets for ``images`` (see :mod:`maskiou.contract`), for ``losses``.
        detector: a checkpoint's ``"detector"`` entry, for ``load``.
        raise_errors: raise :class:`~maskiou.contract.AdapterContractError` listing every
            problem (default), or only return the report.

    Returns:
        The :class:`maskiou.check.AdapterReport`.
    """
    report = AdapterReport(getattr(adapter, "name", type(adapter).__name__))
    check = _Checker(report)
    for missing in missing_members(adapter):
        report.problems.append(f"missing {missing}")
    if report.problems:
        return _finish(report, raise_errors)
    caps = capabilities_of(adapter)
    sub = _subject(adapter, model, images)
    check.run("matches", lambda: _check_matches(sub))
    sizes = check.run("head_defaults", lambda: _check_head_defaults(sub))
    if sizes is None:
        return _finish(report, raise_errors)
    model_with_head = check.run("install", lambda: _check_install(sub, sizes))
    if model_with_head is None:
        return _finish(report, raise_errors)
    head = find_maskiou_head(model_with_head)
    unsorted = _run_predict_checks(check, sub, caps, model_with_head, head,
                                   sizes["num_classes"])
    _run_capability_checks(check, sub, caps, model_with_head, head, unsorted, targets, detector)
    return _finish(report, raise_errors)


def _subject(adapter: Any, model: nn.Module, images: list[Tensor] | None) -> _Subject:
    """What the checks run on: ``images`` on the model's device, by default two random
    64 x 64 images (seeded)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = [torch.rand(3, 64, 64, generator=g).to(device) for _ in range(2)]
    return _Subject(adapter, model, images, device)


def _run_predict_checks(check: _Checker, sub: _Subject, caps: frozenset[str],
                        model_with_head: nn.Module, head: nn.Module | None, num_classes: int
                        ) -> list[dict[str, Tensor]] | None:
    """With ``predict``: the records of the plain model and of the model with the head, and
    the detector's outputs unchanged by attaching; returns the latter's records (the
    detector's order), or None where they are not there."""
    if "predict" not in caps:
        check.report.skipped.append("predict (not declared)")
        return None
    plain = copy.deepcopy(sub.model).eval()
    plain_out = check.run("predict (plain model)",
                          lambda: _check_predict(sub, plain, num_classes, None))
    check.run("predict (head attached)",
              lambda: _check_predict(sub, model_with_head, num_classes, head))
    return check.run("predict: detector outputs unchanged by attaching",
                     lambda: _check_unchanged(sub, plain_out))


def _run_capability_checks(check: _Checker, sub: _Subject, caps: frozenset[str],
                           model_with_head: nn.Module, head: nn.Module | None,
                           unsorted: list[dict[str, Tensor]] | None,
                           targets: list[dict[str, Tensor]] | None,
                           detector: Mapping[str, Any] | None) -> None:
    """The checks of ``collect``, ``losses``, ``cost`` and ``load`` where declared (and given
    what they need); the others, and those it could not run, noted as skipped."""
    report = check.report
    if "collect" in caps:
        check.run("collect", lambda: _check_collect(sub, model_with_head, head, unsorted))
    else:
        report.skipped.append("collect (not declared)")

    if "losses" in caps and targets is not None:
        check.run("losses", lambda: _check_losses(sub, targets))
    elif "losses" in caps:
        report.skipped.append("losses (give targets=)")
    else:
        report.skipped.append("losses (not declared)")

    if "cost" in caps:
        check.run("mask_branch", lambda: _check_mask_branch(sub, model_with_head, head))

    if "load" in caps and detector is not None:
        check.run("load_detector", lambda: _check_load(sub, detector))
    elif "load" in caps:
        report.skipped.append("load_detector (give detector=, a checkpoint's detector entry)")
    for cap in sorted(caps & {"convert", "train"}):
        report.skipped.append(f"{cap} (declared; needs the framework's files or a training run)")


def _finish(report: AdapterReport, raise_errors: bool) -> AdapterReport:
    if raise_errors and report.problems:
        raise AdapterContractError(str(report))
    return report
