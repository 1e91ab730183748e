"""Batch normalisation over the global batch of all ranks, differentiable, on any backend.

torch's ``nn.SyncBatchNorm`` refuses CPU tensors once a process group with more than one
rank exists (torch 2.14: "SyncBatchNorm expected input tensor to be on GPU ..."), so CPU /
gloo runs use ``GlobalBatchNorm`` below; CUDA runs use torch's fused ``nn.SyncBatchNorm``
(see ``ffcv_bt.method.model.convert_sync_batchnorm``). The objective normalises its embeddings
with the same ``global_moments``.

Gradients: the sums over ranks are ``ffcv_bt.distributed.collectives.differentiable_sum_over_ranks``,
whose backward sums the incoming gradients of all ranks, as torch's SyncBatchNorm does.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ffcv_bt.distributed.collectives import differentiable_sum_over_ranks, world_size


def global_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean, biased variance and element count of ``x`` (N, C, ...) over all ranks.

    Reduces over every dimension but the channel one (1), on every rank's rows. Two passes
    (mean first, then the mean squared deviation) rather than E[x^2] - E[x]^2, which cancels
    badly when the mean is large compared with the spread. The count is a 0-d tensor of
    ``x``'s dtype, so ranks may hold different numbers of rows; it is filled on ``x``'s device
    (no host-to-device copy of a host tensor in the step).
    """
    if x.dim() < 2:
        raise ValueError(f"global_moments expects (N, C, ...) input, got shape {tuple(x.shape)}")
    dims = (0,) + tuple(range(2, x.dim()))
    local_count = x.numel() // x.shape[1]
    count = x.new_full((1,), float(local_count))
    sums = differentiable_sum_over_ranks(torch.cat([x.sum(dim=dims), count]))
    total = sums[-1].detach()
    mean = sums[:-1] / total
    shape = [1, -1] + [1] * (x.dim() - 2)
    var = differentiable_sum_over_ranks((x - mean.view(shape)).pow(2).sum(dim=dims)) / total
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
        if not self.training or world_size() == 1:
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
