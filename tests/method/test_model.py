"""Backbone compatibility with torchvision, widths, stems, projector and sync-BN conversion."""
from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ffcv_bt.distributed.sync_bn import GlobalBatchNorm
from ffcv_bt.method.model import (
    BarlowTwins,
    Projector,
    build_backbone,
    convert_sync_batchnorm,
    parse_projector_spec,
)


def test_resnet50_state_dict_loads_into_torchvision_and_gives_same_features():
    torch.manual_seed(0)
    model = BarlowTwins("resnet50", "64-32")
    tv = torchvision.models.resnet50()
    result = tv.load_state_dict(model.backbone_state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    assert not any(k.startswith("module.") for k in model.backbone_state_dict())
    assert model.feature_dim == 2048
    tv.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.backbone.eval()(x), tv.eval()(x))


@pytest.mark.parametrize("arch,block,last_bn", [("resnet18", BasicBlock, "bn2"),
                                                 ("resnet50", Bottleneck, "bn3")])
def test_zero_init_residual(arch, block, last_bn):
    for zero in (True, False):
        net, _ = build_backbone(arch, width=8, zero_init_residual=zero)
        blocks = [m for m in net.modules() if isinstance(m, block)]
        assert len(blocks) in (8, 16)
        for b in blocks:
            gamma = getattr(b, last_bn).weight
            assert torch.all(gamma == 0) if zero else torch.all(gamma == 1)
            # only the last BN of the branch is zeroed
            assert torch.all(b.bn1.weight == 1)


@pytest.mark.parametrize("arch,width,expansion", [("resnet18", 8, 1), ("resnet50", 16, 4),
                                                  ("resnet34", 4, 1)])
def test_width_scales_every_stage(arch, width, expansion):
    net, dim = build_backbone(arch, width=width)
    assert dim == 8 * width * expansion
    assert net.conv1.out_channels == width
    for stage in range(1, 5):
        layer = getattr(net, f"layer{stage}")
        assert layer[-1].conv1.in_channels == width * 2 ** (stage - 1) * expansion
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_small_stem_keeps_resolution_until_layer2():
    spatial = {}
    for small in (False, True):
        net, _ = build_backbone("resnet18", width=4, small_stem=small)
        net.layer4.register_forward_hook(
            lambda m, i, o, small=small: spatial.__setitem__(small, o.shape[-1]))
        net(torch.randn(2, 3, 32, 32))
    assert spatial == {False: 1, True: 4}  # 32 / 32 vs 32 / 8
    net, _ = build_backbone("resnet18", width=4, small_stem=True)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)


def test_unknown_arch_and_bad_width_are_named():
    with pytest.raises(ValueError, match="'resnet49'"):
        build_backbone("resnet49")
    with pytest.raises(ValueError, match="width"):
        build_backbone("resnet18", width=0)


def test_projector_layers_and_shape():
    proj = Projector("32-16-8", in_dim=10)
    kinds = [type(m) for m in proj]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU,
                     nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 32), (32, 16), (16, 8)]
    assert all(m.bias is None for m in linears)
    assert proj.out_dim == 8
    assert proj(torch.randn(5, 10)).shape == (5, 8)
    assert [type(m) for m in Projector("7", in_dim=3)] == [nn.Linear]


@pytest.mark.parametrize("spec", ["", "8192-", "8192-x", "0-8", "-8", "8192 8192"])
def test_bad_projector_spec_is_named(spec):
    with pytest.raises(ValueError, match="bad projector spec"):
        parse_projector_spec(spec)
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        Projector(spec, 16)


def test_views_pass_separately():
    torch.manual_seed(0)
    model = BarlowTwins("resnet18", "16-8", width=4, small_stem=True).train()
    x1, x2 = torch.randn(2, 6, 3, 8, 8)
    z1, z2 = model(x1, x2)
    assert z1.shape == z2.shape == (6, 8) and model.embedding_dim == 8
    # each view's BN statistics are its own: same as running the views one at a time
    torch.testing.assert_close(z2, model.projector(model.backbone(x2)))
    assert not torch.allclose(z1, model.projector(model.backbone(torch.cat([x1, x2])))[:6])


def test_convert_sync_batchnorm_on_cpu_keeps_state_and_function():
    torch.manual_seed(0)
    model = BarlowTwins("resnet18", "16-8", width=4, small_stem=True, zero_init_residual=False)
    model.double()
    for m in model.modules():  # non-default state that must survive the conversion
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.weight.data.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x1, x2 = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    want = model.eval()(x1, x2)
    converted = convert_sync_batchnorm(model)
    norms = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, GlobalBatchNorm) for m in norms)
    after = converted.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    got = converted.eval()(x1, x2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_moments_alone_are_the_batch_moments(dtype, monkeypatch):
    """One process: mean, biased variance and count of the (N, C, H, W) batch per channel; the
    count is filled on x's device from no host tensor (torch.tensor is not called)."""
    from ffcv_bt.distributed import sync_bn

    def no_host_tensor(*args, **kwargs):
        raise AssertionError("global_moments built a host tensor")

    x = torch.randn(6, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=dtype) * 3 + 7
    monkeypatch.setattr(sync_bn.torch, "tensor", no_host_tensor)
    mean, var, count = sync_bn.global_moments(x)
    monkeypatch.undo()
    want_var, want_mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, want_mean)
    torch.testing.assert_close(var, want_var)
    assert count.dtype == dtype and count.device == x.device and count.shape == ()
    assert count.item() == 6 * 4 * 5
