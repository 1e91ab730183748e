"""LARS steps against hand computations; parameter groups and learning rates."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from ffcv_bt.method.lars import LARS, param_groups_for_lars, set_learning_rates

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



def reference_step(p: torch.Tensor, g: torch.Tensor, mu: torch.Tensor | None, lr: float,
                   wd: float, momentum: float, eta: float) -> torch.Tensor:
    """One parameter's LARS step, in place on ``p``, written as the barlowtwins release
    writes it (one tensor at a time); returns the new momentum buffer."""
    d = g.clone()
    if p.ndim != 1:
        d = d + wd * p
        w_norm, d_norm = norm(p), norm(d)
        if w_norm > 0 and d_norm > 0:
            d = d * (eta * w_norm / d_norm)
    mu = d if mu is None else momentum * mu + d
    p.sub_(lr * mu)
    return mu


@pytest.mark.parametrize("wd", [WD, 0.0])
def test_foreach_step_matches_per_parameter_reference(wd):
    """Weights, biases, a zero-norm weight and parameters without a gradient (one per
    group), over steps whose learning rates change."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 2), (4,), (2, 2), (3,), (6, 1)]
    params = [nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    with torch.no_grad():
        params[4].zero_()  # zero-norm weight: trust ratio 1
    no_grad = {5, 6}  # a bias and a weight that never get a gradient
    expected = [p.detach().clone() for p in params]
    initial = [p.detach().clone() for p in params]
    mus: dict[int, torch.Tensor] = {}
    groups = [{"name": "weights", "params": [p for p in params if p.ndim != 1]},
              {"name": "biases", "params": [p for p in params if p.ndim == 1]}]
    opt = LARS(groups, lr=0.0, weight_decay=wd, momentum=MOMENTUM, eta=ETA)
    for step, mult in enumerate([0.0, 0.7, 2.0, 1.3, 0.1]):
        set_learning_rates(opt, mult, lr_weights=0.2, lr_biases=0.05)
        for i, p in enumerate(params):
            if i in no_grad:
                p.grad = None
                continue
            grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.grad = grad.clone()
            lr = mult * (0.2 if p.ndim != 1 else 0.05)
            mus[i] = reference_step(expected[i], grad, mus.get(i), lr, wd, MOMENTUM, ETA)
        opt.step()
        for i, ours in enumerate(params):
            torch.testing.assert_close(ours.detach(), expected[i], rtol=1e-12, atol=1e-15,
                                       msg=f"step {step}, param {i} {tuple(ours.shape)}")
            if i in no_grad:
                assert ours not in opt.state
            else:
                torch.testing.assert_close(opt.state[ours]["mu"], mus[i], rtol=1e-12, atol=1e-15)
    assert params[4].abs().sum() > 0  # the zero-norm weight moved
    for i in no_grad:
        assert torch.equal(params[i].detach(), initial[i]), (i, params[i], initial[i])
    assert all(set(state) == {"mu"} for state in opt.state.values())  # checkpoint layout


def test_learning_rate_scales_the_buffer_not_the_update_into_it():
    """With an lr that changes between steps, ``mu = m mu + d; w -= lr mu`` (the release's
    form) and ``mu = m mu + lr d; w -= mu`` differ; existing tests keep lr constant, where
    the two agree."""
    weight, bias = make_params()
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    opt = LARS([weight, bias], lr=0.0, weight_decay=WD, momentum=MOMENTUM, eta=ETA)
    lrs = [0.05, 0.4, 0.1]
    grads = []
    for seed, lr in enumerate(lrs, start=1):
        for group in opt.param_groups:
            group["lr"] = lr
        grads.append(set_grads([weight, bias], seed))
        opt.step()
    # biases by hand: mu1 = g1, mu2 = m g1 + g2, mu3 = m^2 g1 + m g2 + g3
    gb = [g[1] for g in grads]
    mu1, mu2 = gb[0], MOMENTUM * gb[0] + gb[1]
    mu3 = MOMENTUM * mu2 + gb[2]
    b3 = b0 - lrs[0] * mu1 - lrs[1] * mu2 - lrs[2] * mu3
    torch.testing.assert_close(bias.detach(), b3, rtol=1e-13, atol=0)
    # weights by hand, the direction recomputed at each iterate
    w, mu = w0, None
    for lr, (gw, _) in zip(lrs, grads):
        d = lars_direction(w, gw)
        mu = d if mu is None else MOMENTUM * mu + d
        w = w - lr * mu
    torch.testing.assert_close(weight.detach(), w, rtol=1e-13, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_does_not_synchronise_the_device():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).cuda()
    opt = LARS(param_groups_for_lars(model), lr=0.0, weight_decay=WD)
    model(torch.randn(4, 8, device="cuda")).sum().backward()
    opt.step()  # the momentum buffers are created on the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        set_learning_rates(opt, 0.5, 0.2, 0.0048)
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
