"""Pure schedule functions: resolution per epoch and learning rate per step.

Kept free of state so they can be tested at their key points and printed by
``run.py --dry-run`` without building anything.
"""
from __future__ import annotations

import math


def resolution_at(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int,
                  multiple: int = 32) -> int:
    """Training resolution for ``epoch`` (0-based), as in FFCV's ImageNet recipes.

    ``min_res`` until ``start_ramp``, a linear ramp reaching ``max_res`` at ``end_ramp``,
    then ``max_res``. Values on the ramp are rounded down to a multiple of ``multiple``
    (never below ``min_res``'s own rounding); the end points are returned exactly.
    """
    if epoch <= start_ramp or max_res == min_res:
        return min_res
    if epoch >= end_ramp:
        return max_res
    frac = (epoch - start_ramp) / (end_ramp - start_ramp)
    res = min_res + frac * (max_res - min_res)
    res = int(res // multiple) * multiple
    return max(min(res, max_res), min_res)


def lr_at(step: int, steps_per_epoch: int, epochs: int, batch_size: int,
          warmup_epochs: float = 10, final_ratio: float = 0.001) -> float:
    """Barlow Twins learning-rate multiplier at optimiser ``step`` (0-based).

    ``base = batch_size / 256``; linear warmup from 0 to ``base`` over ``warmup_epochs``
    (per step), then a cosine from ``base`` to ``final_ratio * base`` at the last step.
    Multiply by the weight (0.2) or bias (0.0048) learning rate to get the actual value.
    """
    base = batch_size / 256
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup:
        return base * step / warmup
    remaining = max(total - warmup, 1)
    progress = min((step - warmup) / remaining, 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    end = base * final_ratio
    return end + (base - end) * cosine


def cosine_epoch_lr(epoch: int, epochs: int, base_lr: float) -> float:
    """Cosine decay per epoch from ``base_lr`` to 0 (evaluation protocols)."""
    return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
