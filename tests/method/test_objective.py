"""The Barlow Twins objective against a naive implementation written with loops over (i, j)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ffcv_bt.method.objective import (
    barlow_twins_loss,
    choose_formulation,
    normalize_embeddings,
)

EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps


def naive_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051,
               scale_loss: float = 1.0, eps: float = 1e-5) -> torch.Tensor:
    """Column-by-column normalisation and one dot product per entry c_ij."""
    n, d = z1.shape

    def normalise_columns(z: torch.Tensor) -> list[torch.Tensor]:
        columns = []
        for j in range(d):
            col = z[:, j]
            mean = col.mean()
            var = ((col - mean) ** 2).mean()
            columns.append((col - mean) / torch.sqrt(var + eps))
        return columns

    a, b = normalise_columns(z1), normalise_columns(z2)
    loss = z1.new_zeros(())
    for i in range(d):
        for j in range(d):
            c_ij = torch.dot(a[i], b[j]) / n
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2)
    return scale_loss * loss


def random_pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated views with non-zero means and unequal scales (float64)."""
    g = torch.Generator().manual_seed(seed)
    z1 = 3 + 2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = -1 + torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5 * z1
    return z1, z2


def whitened_pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views whose cross-correlation is the identity up to 1e-3 (needs n >= d).

    z1 has zero-mean, orthogonal, unit-variance columns, so c = I exactly for z2 = z1; the
    loss is then tiny and the gram form's ``total - sum c_ii^2`` cancels the most.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))
    z1 = q * n ** 0.5
    return z1, z1 + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)


def nearby_pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z2 = z1 + tiny noise: every c_ii is within ~1e-6 of 1 (works for n < d)."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1, z1 + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)


CASES = {
    "random n<d": lambda: random_pair(10, 24, 0),
    "random n>d": lambda: random_pair(40, 12, 1),
    "whitened n>d": lambda: whitened_pair(64, 16, 2),
    "nearby n<d": lambda: nearby_pair(12, 16, 3),
}


def value_and_grads(loss_fn, z1: torch.Tensor, z2: torch.Tensor, **kwargs):
    z1 = z1.detach().clone().requires_grad_(True)
    z2 = z2.detach().clone().requires_grad_(True)
    loss = loss_fn(z1, z2, **kwargs)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    return loss.detach(), g1, g2


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("formulation", ["cross", "gram", "auto"])
@pytest.mark.parametrize("lambd,scale_loss", [(0.0051, 1.0), (0.5, 0.024)])
def test_float64_matches_naive(case, formulation, lambd, scale_loss):
    # Float64: 1e-10 relative, plus an absolute 10 * eps64 * scale_loss * lambd * d for the
    # whitened case (loss ~2e-8), where the gram form's sum_ij c_ij^2 - sum_i c_ii^2 subtracts
    # two ~d-sized sums (observed 1.7e-17 there, 9e-10 relative; elsewhere <= 1e-15 relative).
    z1, z2 = CASES[case]()
    atol = 10 * EPS64 * scale_loss * lambd * z1.shape[1]
    ours = value_and_grads(barlow_twins_loss, z1, z2, lambd=lambd, scale_loss=scale_loss,
                           formulation=formulation)
    naive = value_and_grads(naive_loss, z1, z2, lambd=lambd, scale_loss=scale_loss)
    assert ours[0].dtype == torch.float64
    torch.testing.assert_close(ours[0], naive[0], rtol=1e-10, atol=atol)
    for got, want in zip(ours[1:], naive[1:]):
        # gradient entries of near-zero size: compare relative to the gradient's norm
        assert (got - want).norm() <= 1e-10 * want.norm()


@pytest.mark.parametrize("case", ["random n<d", "random n>d", "nearby n<d"])
@pytest.mark.parametrize("formulation", ["cross", "gram"])
def test_float32_matches_naive_float64(case, formulation):
    # Float32 inputs and arithmetic vs the float64 naive loss of the same (rounded) inputs:
    # 1e-5 relative for the value (observed <= 2e-7), 1e-4 of the norm for the gradients.
    z1, z2 = (z.float() for z in CASES[case]())
    ours = value_and_grads(barlow_twins_loss, z1, z2, formulation=formulation)
    naive = value_and_grads(naive_loss, z1.double(), z2.double())
    assert ours[0].dtype == torch.float32
    torch.testing.assert_close(ours[0].double(), naive[0], rtol=1e-5, atol=0)
    for got, want in zip(ours[1:], naive[1:]):
        assert (got.double() - want).norm() <= 1e-4 * want.norm()


def test_float32_near_identity_cancellation():
    # c = I + O(1e-3), n > d, loss ~2e-8: float32's worst case, where the result is mostly
    # rounding noise of c. 1 - c_ii ~ 1e-5 (BN's eps) and float32 rounds each c_ii by
    # ~eps32, so each on-diagonal term carries ~2e-5 * eps32: the cross form may be off by
    # 4 * d * 2e-5 * eps32 (observed ~0.5x that). The gram form computes
    # sum_ij c_ij^2 - sum_i c_ii^2 ~ d - d, whose rounding is ~d * eps32 before the lambd
    # factor: we allow 10 * lambd * d * eps32 (observed ~1x). With n < d (where "auto" picks
    # gram), sum_ij c_ij^2 >= d^2 / n, so the subtraction cancels little.
    z1, z2 = (z.float() for z in whitened_pair(64, 16, 2))
    want = naive_loss(z1.double(), z2.double())
    d = z1.shape[1]
    cross = barlow_twins_loss(z1, z2, formulation="cross").double()
    gram = barlow_twins_loss(z1, z2, formulation="gram").double()
    assert abs(cross - want) <= 4 * d * 2e-5 * EPS32
    assert abs(gram - want) <= 10 * 0.0051 * d * EPS32


@pytest.mark.parametrize("formulation", ["cross", "gram"])
def test_gradcheck_float64(formulation):
    z1, z2 = random_pair(6, 4, 4)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: barlow_twins_loss(a, b, lambd=0.3, formulation=formulation), (z1, z2))


def test_normalize_matches_batchnorm1d():
    z1, _ = random_pair(20, 7, 5)
    bn = nn.BatchNorm1d(7, affine=False).double().train()
    normalised, count = normalize_embeddings(z1)
    torch.testing.assert_close(normalised, bn(z1), rtol=1e-12, atol=1e-12)
    assert count.item() == 20


def test_autocast_computes_in_float32():
    z1, z2 = (z.float() for z in random_pair(16, 32, 6))
    layer = nn.Linear(32, 32).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h1, h2 = layer(z1), layer(z2)
        assert h1.dtype == torch.bfloat16
        loss = barlow_twins_loss(h1, h2)
    assert loss.dtype == torch.float32
    want = naive_loss(h1.double(), h2.double())
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)


def test_choose_formulation():
    assert choose_formulation("auto", batch_size=256, dim=8192) == "gram"
    assert choose_formulation("auto", batch_size=8192, dim=8192) == "cross"
    assert choose_formulation("cross", batch_size=2, dim=8192) == "cross"
    assert choose_formulation("gram", batch_size=9000, dim=8192) == "gram"
    with pytest.raises(ValueError, match="'fast'"):
        choose_formulation("fast", 1, 1)


def test_bad_inputs_are_named():
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(4, 2\)"):
        barlow_twins_loss(z, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="got \\(4,\\)"):
        barlow_twins_loss(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="'dxd'"):
        barlow_twins_loss(z, z, formulation="dxd")
