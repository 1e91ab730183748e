"""LARS as in Barlow Twins, its two parameter groups, and per-step learning rates.

Weights (ndim > 1) get weight decay and the layer-wise trust ratio; biases and BatchNorm
parameters (ndim == 1) get neither. The learning-rate schedule itself is
``ffcv_bt.schedules.lr_at``; ``set_learning_rates`` applies its multiplier to each group.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight tensor is scaled by a trust ratio.

    For a parameter w with gradient g and ``w.ndim != 1`` (weights):
    ``g' = g + weight_decay * w``; ``g' *= eta * ||w|| / ||g'||`` (1 if either norm is 0).
    For ``w.ndim == 1`` (biases, BatchNorm): ``g' = g``.
    Then ``mu = momentum * mu + g'`` and ``w -= lr * mu``.
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
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim != 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0),
                                        group["eta"] * w_norm / u_norm, torch.ones_like(w_norm))
                    update = update.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def param_groups_for_lars(model: nn.Module) -> list[dict]:
    """Two groups for LARS: "weights" (ndim > 1) and "biases" (ndim == 1: biases, BN)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"name": "weights", "params": [p for p in params if p.ndim != 1]},
        {"name": "biases", "params": [p for p in params if p.ndim == 1]},
    ]


def set_learning_rates(optimizer: torch.optim.Optimizer, multiplier: float,
                       lr_weights: float, lr_biases: float) -> None:
    """Set each group's lr to ``multiplier`` (from ``schedules.lr_at``) times its base rate."""
    base = {"weights": lr_weights, "biases": lr_biases}
    for group in optimizer.param_groups:
        name = group.get("name")
        if name not in base:
            raise ValueError(f"parameter group named {name!r}; expected 'weights' or 'biases' "
                             "(build groups with param_groups_for_lars)")
        group["lr"] = multiplier * base[name]
