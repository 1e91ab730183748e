"""Batch normalisation over the global batch of all ranks, differentiable, on any backend.

torch's ``nn.SyncBatchNorm`` refuses CPU tensors once a process group with more than one
rank exists (torch 2.14: "SyncBatchNorm expected input tensor to be on GPU ..."), so CPU /
gloo runs use ``GlobalBatchNorm`` below; CUDA runs use torch's fused ``nn.SyncBatchNorm``
(see ``ffcv_bt.model.convert_sync_batchnorm``). The objective normalises its embeddings
with the same ``global_moments``.

Gradients: every collective here is autograd-aware, and the backward of a sum over ranks
sums the incoming gradients of all ranks. Each rank's backward therefore computes the
gradient of the SUM of all ranks' losses with respect to its local inputs, which is what
torch's SyncBatchNorm does too.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def distributed_world() -> int:
    """Number of ranks of the default process group (1 when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward also sums over ranks (the adjoint of a sum-broadcast)."""

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


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Differentiable sum of ``tensor`` over all ranks; identity without a process group."""
    if distributed_world() == 1:
        return tensor
    return _AllReduceSum.apply(tensor)


def global_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean, biased variance and element count of ``x`` (N, C, ...) over all ranks.

    Reduces over every dimension but the channel one (1), on every rank's rows. Two passes
    (mean first, then the mean squared deviation) rather than E[x^2] - E[x]^2, which cancels
    badly when the mean is large compared with the spread. The count is a 0-d tensor of
    ``x``'s dtype, so ranks may hold different numbers of rows.
    """
    if x.dim() < 2:
        raise ValueError(f"global_moments expects (N, C, ...) input, got shape {tuple(x.shape)}")
    dims = (0,) + tuple(range(2, x.dim()))
    local_count = x.numel() // x.shape[1]
    count = torch.tensor([float(local_count)], dtype=x.dtype, device=x.device)
    sums = all_reduce_sum(torch.cat([x.sum(dim=dims), count]))
    total = sums[-1].detach()
    mean = sums[:-1] / total
    shape = [1, -1] + [1] * (x.dim() - 2)
    var = all_reduce_sum((x - mean.view(shape)).pow(2).sum(dim=dims)) / total
    return mean, var, total


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm of (N, C, ...) over the batch of every rank, where torch's SyncBatchNorm refuses.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm{1,2,3}d``. Without a
    process group of more than one rank, or in eval mode, it is exactly ``F.batch_norm``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, "
                             f"got shape {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training or distributed_world() == 1:
            return super().forward(input)
        x = input if input.dtype in (torch.float32, torch.float64) else input.float()
        mean, var, count = global_moments(x)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        shape = [1, -1] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Exponential (or, with momentum None, cumulative) average as nn.BatchNorm does,
        with the unbiased variance of the global batch."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked.item())
        else:
            factor = self.momentum
        unbiased = var * (count / (count - 1).clamp(min=1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
