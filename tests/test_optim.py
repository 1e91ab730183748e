"""LARS steps against hand computations; parameter groups and learning rates."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from ffcv_bt.optim import LARS, param_groups_for_lars, set_learning_rates

LR, WD, MOMENTUM, ETA = 0.3, 0.01, 0.9, 0.001  # wd large enough to matter in the numbers


def norm(t: torch.Tensor) -> torch.Tensor:
    return (t * t).sum().sqrt()


def lars_direction(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The hand-written LARS step direction of a weight matrix (before momentum)."""
    d = g + WD * w
    return d * (ETA * norm(w) / norm(d))


def make_params(seed: int = 0) -> tuple[nn.Parameter, nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
    bias = nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
    return weight, bias


def set_grads(params, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    for p, grad in zip(params, grads):
        p.grad = grad.clone()
    return grads


def test_one_step_weight_and_bias():
    weight, bias = make_params()
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    opt = LARS([weight, bias], lr=LR, weight_decay=WD, momentum=MOMENTUM, eta=ETA)
    gw, gb = set_grads([weight, bias], seed=1)
    opt.step()
    want = w0 - LR * lars_direction(w0, gw)
    torch.testing.assert_close(weight.detach(), want, rtol=1e-14, atol=0)
    # the bias: no weight decay and no trust ratio
    torch.testing.assert_close(bias.detach(), b0 - LR * gb, rtol=1e-14, atol=0)


def test_zero_norm_weight_uses_trust_one():
    weight = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    grad = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    weight.grad = grad.clone()
    LARS([weight], lr=LR, weight_decay=WD, momentum=MOMENTUM, eta=ETA).step()
    torch.testing.assert_close(weight.detach(), -LR * grad, rtol=1e-14, atol=0)

    # zero gradient and zero decay: nothing moves (no 0/0)
    still = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    still.grad = torch.zeros(2, 2, dtype=torch.float64)
    LARS([still], lr=LR, weight_decay=0.0).step()
    assert torch.equal(still.detach(), torch.ones(2, 2, dtype=torch.float64))


def test_momentum_over_two_steps():
    weight, bias = make_params()
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    opt = LARS([weight, bias], lr=LR, weight_decay=WD, momentum=MOMENTUM, eta=ETA)
    gw1, gb1 = set_grads([weight, bias], seed=1)
    opt.step()
    gw2, gb2 = set_grads([weight, bias], seed=2)
    opt.step()
    mu_w1 = lars_direction(w0, gw1)
    w1 = w0 - LR * mu_w1
    mu_w2 = MOMENTUM * mu_w1 + lars_direction(w1, gw2)
    torch.testing.assert_close(weight.detach(), w1 - LR * mu_w2, rtol=1e-13, atol=0)
    b2 = b0 - LR * gb1 - LR * (MOMENTUM * gb1 + gb2)
    torch.testing.assert_close(bias.detach(), b2, rtol=1e-13, atol=0)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).double()
    opt = LARS(param_groups_for_lars(model), lr=0.0, weight_decay=WD)
    set_learning_rates(opt, 0.5, lr_weights=0.2, lr_biases=0.0048)
    for seed in (1, 2):
        set_grads(list(model.parameters()), seed)
        opt.step()
    # through bytes, as a checkpoint does (an in-memory state dict shares its tensors)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    clone, fresh_clone = copy.deepcopy(model), copy.deepcopy(model)
    restored = LARS(param_groups_for_lars(clone), lr=0.0, weight_decay=WD)
    restored.load_state_dict(torch.load(buffer))
    assert [(g["name"], g["lr"]) for g in restored.param_groups] == [("weights", 0.1),
                                                                    ("biases", 0.0024)]
    fresh = LARS(param_groups_for_lars(fresh_clone), lr=0.0, weight_decay=WD)
    set_learning_rates(fresh, 0.5, lr_weights=0.2, lr_biases=0.0048)
    for o in (opt, restored, fresh):
        set_grads(o.param_groups[0]["params"] + o.param_groups[1]["params"], 3)
        o.step()
    for a, b, c in zip(model.parameters(), clone.parameters(), fresh_clone.parameters()):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)  # without the momentum state the step differs


def test_param_groups_split_by_ndim():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model[3].weight.requires_grad_(False)
    groups = param_groups_for_lars(model)
    assert [g["name"] for g in groups] == ["weights", "biases"]
    ids = lambda ps: {id(p) for p in ps}
    assert ids(groups[0]["params"]) == ids([model[0].weight])
    assert ids(groups[1]["params"]) == ids([model[0].bias, model[1].weight, model[1].bias,
                                            model[3].bias])


def test_set_learning_rates_and_errors():
    model = nn.Linear(3, 2)
    opt = LARS(param_groups_for_lars(model), lr=1.0)
    set_learning_rates(opt, 2.0, lr_weights=0.2, lr_biases=0.0048)
    assert [g["lr"] for g in opt.param_groups] == [0.4, 0.0096]
    unnamed = LARS(model.parameters(), lr=1.0)
    with pytest.raises(ValueError, match="None"):
        set_learning_rates(unnamed, 1.0, 0.2, 0.0048)
    with pytest.raises(ValueError, match="momentum"):
        LARS(model.parameters(), lr=0.1, momentum=-0.5)
