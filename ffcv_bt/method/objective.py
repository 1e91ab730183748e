"""The Barlow Twins objective, exact, in two formulations, on one rank or many.

With ``A = bn(z1)`` and ``B = bn(z2)`` (affine-free BatchNorm over the GLOBAL batch of N rows)
and ``c = A^T B / N`` (d x d):

    loss = scale_loss * (sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2)

"cross" builds c, costing O(N d^2). "gram" never does: sum_ij c_ij^2 = <A A^T, B B^T> / N^2
(both N x N) and c_ii = <A[:, i], B[:, i]> / N, so the off-diagonal sum is the total minus
sum_i c_ii^2, costing O(N^2 d). At N=256, d=8192 that is ~30x fewer flops. "auto" picks
gram when N < d.

Under torch.distributed every rank computes the same, global loss, through autograd-aware
collectives (sums over ranks whose backward sums the incoming gradients over ranks).
Gradient scale: each rank's backward then yields d(sum over ranks of their losses)/d(local
inputs) = world * dL/d(local inputs); DDP sums these over ranks and divides by world, which
leaves exactly dL/dtheta: the same gradient as one rank holding the whole batch, for any
number of ranks, so no correction factor is needed. (The reference all_reduces c outside
autograd, so each rank only gets the gradient through its own rows and DDP's average
scales the gradient by 1 / world.)
"""
from __future__ import annotations

import torch
from torch import Tensor

from ffcv_bt.distributed.collectives import (
    differentiable_gather_rows,
    differentiable_sum_over_ranks,
    world_size,
)
from ffcv_bt.distributed.sync_bn import global_moments

FORMULATIONS = ("auto", "cross", "gram")
BN_EPS = 1e-5  # nn.BatchNorm1d's default, as in the reference


def normalize_embeddings(z: Tensor, eps: float = BN_EPS) -> tuple[Tensor, Tensor]:
    """Affine-free BatchNorm of ``z`` (n, d) with the statistics of the global batch.

    Returns the normalised rows of this rank and the global batch size N (0-d tensor).
    Matches ``nn.BatchNorm1d(d, affine=False)`` in training mode (biased variance).
    """
    mean, var, count = global_moments(z)
    return (z - mean) * torch.rsqrt(var + eps), count


def choose_formulation(formulation: str, batch_size: int, dim: int) -> str:
    """Resolve ``"auto"``: gram when the global batch is smaller than the embedding dim."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown formulation {formulation!r}; expected one of {FORMULATIONS}")
    if formulation == "auto":
        return "gram" if batch_size < dim else "cross"
    return formulation


def _off_diagonal(c: Tensor) -> Tensor:
    """The d*(d-1) off-diagonal entries of a square matrix, as a (d-1, d+1) view.

    Flattened, consecutive diagonal entries are d+1 apart; dropping the first entry and
    cutting rows of d+1 puts every diagonal entry at the end of a row.
    """
    d = c.shape[0]
    return c.flatten()[1:].view(d - 1, d + 1)[:, :-1]


def _cross_terms(a: Tensor, b: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """(on-diagonal, off-diagonal) sums from the d x d cross-correlation."""
    c = differentiable_sum_over_ranks((a / n).T @ b)  # scaling the N x d factor saves a d x d pass
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag, off_diag


def _gram_terms(a: Tensor, b: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """(on-diagonal, off-diagonal) sums from N x N Gram matrices; c is never built.

    Each rank multiplies its own rows against the rows of all ranks, so the partial
    sums of <A A^T, B B^T> add up to the full one.
    """
    gram_a = a @ differentiable_gather_rows(a).T
    gram_b = b @ differentiable_gather_rows(b).T
    partials = torch.cat([(gram_a * gram_b).sum().view(1), (a * b).sum(dim=0)])
    sums = differentiable_sum_over_ranks(partials)
    total = sums[0] / n**2
    diag = sums[1:] / n
    on_diag = (diag - 1).pow(2).sum()
    off_diag = total - diag.pow(2).sum()
    return on_diag, off_diag


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 0.0051, scale_loss: float = 1.0,
                      formulation: str = "auto") -> Tensor:
    """The Barlow Twins loss of two views' raw projector outputs (n, d) on this rank.

    Uses the default process group when one with more than one rank is initialised; every
    rank then returns the same global loss (see the module docstring for the gradient
    scale). Computed in float32 (float64 inputs stay float64) even under autocast. In a
    process group every rank must hold the same number of rows (the "gram" gather and the
    formulation choice assume it).
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"barlow_twins_loss expects two (n, d) tensors of equal shape, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    choose_formulation(formulation, 0, 0)  # validate before any collective
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1 = z1 if z1.dtype == torch.float64 else z1.float()
        z2 = z2 if z2.dtype == torch.float64 else z2.float()
        a, n = normalize_embeddings(z1)
        b, _ = normalize_embeddings(z2)
        # The global batch is rows x ranks: the pretraining loader drops partial batches,
        # so every rank holds the same number of rows (no device sync to ask).
        n_global = z1.shape[0] * world_size()
        form = choose_formulation(formulation, n_global, z1.shape[1])
        terms = _gram_terms if form == "gram" else _cross_terms
        on_diag, off_diag = terms(a, b, n)
        return scale_loss * (on_diag + lambd * off_diag)


@torch.no_grad()
def correlation_terms(z1: Tensor, z2: Tensor, eps: float = BN_EPS) -> tuple[float, float]:
    """(on-diagonal, off-diagonal) sums of the Barlow Twins cross-correlation of two views'
    embeddings (n, d), on this process only (no collectives), outside autograd.

    For monitoring: ``loss = scale_loss * (on + lambd * off)``; the split shows whether the
    invariance term or the redundancy-reduction term dominates. Same normalisation as the
    objective (affine-free BatchNorm over the n rows, biased variance); the cheaper of the
    two formulations by shape, in float64.
    """
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(f"correlation_terms expects two (n >= 2, d) tensors of equal shape, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    a, b = z1.double(), z2.double()
    a = (a - a.mean(0)) * torch.rsqrt(a.var(0, unbiased=False) + eps)
    b = (b - b.mean(0)) * torch.rsqrt(b.var(0, unbiased=False) + eps)
    n = a.shape[0]
    diag = (a * b).sum(0) / n
    if n < a.shape[1]:
        total = ((a @ a.T) * (b @ b.T)).sum() / n**2
    else:
        total = ((a.T @ b) / n).pow(2).sum()
    return float((diag - 1).pow(2).sum()), float(total - diag.pow(2).sum())
