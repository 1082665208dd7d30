import torch
from conftest import square_target
from custom_adapter import TinySegmenter, TinySegmenterAdapter

from maskiou import attach_maskiou_head, register_adapter
from maskiou.attach import _registered


def test_second_adapter_trains_one_step_and_infers():
    torch.manual_seed(0)
    model = attach_maskiou_head(TinySegmenter(num_classes=3), adapter=TinySegmenterAdapter(),
                                conv_channels=32, fc_dim=64)
    head = model.maskiou_head
    assert head.in_channels == 16 and head.num_classes == 3
    model.train()
    images = torch.rand(2, 3, 64, 64)
    targets = [square_target(), square_target(box=(30, 20, 60, 50), label=2)]
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_mask", "loss_maskiou"}
    assert losses["loss_maskiou"].item() > 0
    w0 = head.predictor.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(head.predictor.weight, w0)
    model.eval()
    boxes = [torch.tensor([[8.0, 8, 40, 40], [0, 0, 20, 20]]), torch.tensor([[30.0, 20, 60, 50]])]
    with torch.no_grad():
        out = model(images, boxes=boxes)
    assert [len(r["scores"]) for r in out] == [2, 1]
    for r in out:
        torch.testing.assert_close(r["scores"], r["cls_scores"] * r["mask_ious"])


def test_registered_adapter_is_found_without_argument():
    adapter = register_adapter(TinySegmenterAdapter())
    try:
        model = attach_maskiou_head(TinySegmenter(num_classes=2))
        assert model.maskiou_head.num_classes == 2
    finally:
        _registered.remove(adapter)
