"""Every cross-rank operation in one place, each an identity when the job has one process.

Two kinds, named apart because they must never be confused:

* ``differentiable_*``: autograd-aware, for the objective and global BatchNorm. The
  backward of a sum over ranks sums the incoming gradients over ranks (the adjoint of a
  sum-broadcast), so each rank's backward yields the gradient of the SUM of all ranks'
  losses with respect to its local inputs (what torch's SyncBatchNorm does too).
* ``sum_over_ranks_`` and friends: in place, outside autograd, for counts and metrics.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Processes in the default process group (1 when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank (0 when no process group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


class _DifferentiableSum(torch.autograd.Function):
    """Sum over ranks whose backward also sums over ranks."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def differentiable_sum_over_ranks(tensor: Tensor) -> Tensor:
    """Differentiable sum of ``tensor`` over all ranks (a new tensor)."""
    if world_size() == 1:
        return tensor
    return _DifferentiableSum.apply(tensor)


# The single-tensor collectives: torch >= 2.14 names them ``*_single`` and deprecates the
# older names; torch 1.13 to 2.13 has only ``all_gather_into_tensor`` / ``reduce_scatter_tensor``.
_ALL_GATHER_INTO = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER_INTO = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def all_gather_into(out: Tensor, tensor: Tensor) -> None:
    """Every rank's ``tensor`` (equal shapes) concatenated along dim 0 into ``out``."""
    _ALL_GATHER_INTO(out, tensor)


def reduce_scatter_into(out: Tensor, tensor: Tensor) -> None:
    """``out`` = this rank's 1/world slice (dim 0) of ``tensor`` summed over ranks.

    gloo implements the single-tensor reduce-scatter on the CPU only in recent torch; where
    it is missing (it raises before any message is sent, on every rank alike), CPU tensors
    fall back to a full all-reduce and keep their own slice. CUDA tensors never fall back.
    """
    try:
        _REDUCE_SCATTER_INTO(out, tensor, op=dist.ReduceOp.SUM)
    except (RuntimeError, NotImplementedError):
        if tensor.is_cuda:
            raise
        full = tensor.clone()
        dist.all_reduce(full, op=dist.ReduceOp.SUM)
        out.copy_(full.narrow(0, rank() * out.shape[0], out.shape[0]))


class _DifferentiableGatherRows(torch.autograd.Function):
    """Concatenate every rank's (n, d) rows; the backward hands each rank its own slice of
    the gradient summed over ranks (reduce-scatter: each rank receives 1/world of it)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        out = tensor.new_empty((world_size() * tensor.shape[0],) + tuple(tensor.shape[1:]))
        all_gather_into(out, tensor)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        out = grad.new_empty((grad.shape[0] // world_size(),) + tuple(grad.shape[1:]))
        reduce_scatter_into(out, grad)
        return out


def differentiable_gather_rows(tensor: Tensor) -> Tensor:
    """Differentiable concatenation of every rank's rows (equal row counts)."""
    if world_size() == 1:
        return tensor
    return _DifferentiableGatherRows.apply(tensor)


def sum_over_ranks_(tensor: Tensor) -> Tensor:
    """In-place sum across ranks, outside autograd (counts, metrics); returns ``tensor``."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_rows(tensor: Tensor) -> Tensor:
    """Every rank's rows concatenated in rank order, outside autograd (row counts may differ)."""
    if world_size() == 1:
        return tensor
    counts = torch.full((1,), tensor.shape[0], dtype=torch.int64, device=tensor.device)
    all_counts = [torch.zeros_like(counts) for _ in range(world_size())]
    dist.all_gather(all_counts, counts)
    most = int(max(c.item() for c in all_counts))
    padded = tensor.new_zeros((most,) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:int(c.item())] for p, c in zip(parts, all_counts)])


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from rank ``src`` to every rank (identity alone)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
