"""LARS as in Barlow Twins, its two parameter groups, and per-step learning rates.

Weights (ndim > 1) get weight decay and the layer-wise trust ratio; biases and BatchNorm
parameters (ndim == 1) get neither. Each group carries its base rate (``base_lr``); the
schedule's multiplier (``ffcv_bt.method.schedules.lr_at``) reaches them through
``schedules.set_group_rates``, as every stage's rates do.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ffcv_bt.method.schedules import BASE_LR, set_group_rates


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight tensor is scaled by a trust ratio.

    For a parameter w with gradient g and ``w.ndim != 1`` (weights):
    ``g' = g + weight_decay * w``; ``g' *= eta * ||w|| / ||g'||`` (1 if either norm is 0).
    For ``w.ndim == 1`` (biases, BatchNorm): ``g' = g``.
    Then ``mu = momentum * mu + g'`` and ``w -= lr * mu``: the learning rate is applied to
    the buffer, not folded into it, so a changing lr never rescales past updates. This is
    the LARS of the facebookresearch/barlowtwins release (its ``exclude_bias_and_norm``
    filter on both weight decay and adaptation).

    The step runs as a few multi-tensor (``torch._foreach_*``) kernels per group, with no
    per-tensor Python maths and no host synchronisation. State per parameter: ``"mu"``.
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 1e-6,
                 momentum: float = 0.9, eta: float = 0.001) -> None:
        for name, value in (("lr", lr), ("weight_decay", weight_decay),
                            ("momentum", momentum), ("eta", eta)):
            if value < 0:
                raise ValueError(f"LARS {name} must be >= 0, got {value}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for (_, _, is_weight), (params, grads, mus) in self._gather(group).items():
                if is_weight:
                    grads = self._trust_scaled(params, grads, group)
                torch._foreach_mul_(mus, group["momentum"])
                torch._foreach_add_(mus, grads)
                torch._foreach_add_(params, mus, alpha=-group["lr"])
        return loss

    def _gather(self, group: dict) -> dict[tuple, tuple[list[Tensor], list[Tensor], list[Tensor]]]:
        """Parameters with a gradient, their gradients and momentum buffers, bucketed by
        (device, dtype, is weight) so each bucket is one set of multi-tensor kernels."""
        buckets: dict[tuple, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("LARS does not support sparse gradients")
            state = self.state[p]
            if "mu" not in state:
                state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params, grads, mus = buckets.setdefault((p.device, p.dtype, p.ndim != 1), ([], [], []))
            params.append(p)
            grads.append(p.grad)
            mus.append(state["mu"])
        return buckets

    @staticmethod
    def _trust_scaled(params: list[Tensor], grads: list[Tensor], group: dict) -> list[Tensor]:
        """``(g + wd * w) * q`` with ``q = eta * ||w|| / ||g + wd * w||`` (1 where either
        norm is 0), as new tensors (the gradients are left untouched)."""
        decayed = group["weight_decay"] != 0
        updates = torch._foreach_add(grads, params, alpha=group["weight_decay"]) if decayed else grads
        w_norm = torch.stack(torch._foreach_norm(params))
        u_norm = torch.stack(torch._foreach_norm(updates))
        trust = list(torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm,
                                 torch.ones_like(w_norm)).unbind(0))
        if decayed:  # updates are our own temporaries
            torch._foreach_mul_(updates, trust)
            return updates
        return torch._foreach_mul(updates, trust)


def param_groups_for_lars(model: nn.Module, lr_weights: float = 0.0,
                          lr_biases: float = 0.0) -> list[dict]:
    """Two groups for LARS: "weights" (ndim > 1) and "biases" (ndim == 1: biases, BN), each
    with its base rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"name": "weights", "params": [p for p in params if p.ndim != 1], BASE_LR: lr_weights},
        {"name": "biases", "params": [p for p in params if p.ndim == 1], BASE_LR: lr_biases},
    ]


def set_learning_rates(optimizer: torch.optim.Optimizer, multiplier: float,
                       lr_weights: float, lr_biases: float) -> None:
    """Give the "weights" and "biases" groups these base rates, and each group the lr
    ``multiplier`` (from ``schedules.lr_at``) times its base rate."""
    base = {"weights": lr_weights, "biases": lr_biases}
    for group in optimizer.param_groups:
        name = group.get("name")
        if name not in base:
            raise ValueError(f"parameter group named {name!r}; expected 'weights' or 'biases' "
                             "(build groups with param_groups_for_lars)")
        group[BASE_LR] = base[name]
    set_group_rates(optimizer, lambda base_lr: multiplier * base_lr)
