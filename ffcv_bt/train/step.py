"""The pretraining step, alone: forward both views, the objective, backward, LARS step.

Kept apart from the loop (pretrain.py) so that the benchmarks and the GPU check time exactly
this code, with torch alone (no loader, no recipe files).
"""
from __future__ import annotations

from typing import Any

import torch

from ffcv_bt.method.objective import barlow_twins_loss
from ffcv_bt.stage.mixed_precision import autocast, optimizer_step


def barlow_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None, amp_dtype: torch.dtype | None,
                loss_cfg: dict[str, Any], view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
    """Forward both views (under autocast when ``amp_dtype``), the objective in float32,
    backward (scaled when ``scaler``), LARS step; the detached loss stays on the device.

    The whole pretraining step, as a function so the benchmarks time exactly this code.
    """
    with autocast(view1.device, amp_dtype):
        z1, z2 = model(view1, view2)
    loss = barlow_twins_loss(z1.float(), z2.float(), lambd=loss_cfg["lambd"],
                             scale_loss=loss_cfg["scale_loss"], formulation=loss_cfg["formulation"])
    optimizer_step(loss, optimizer, scaler)
    return loss.detach()
