"""Pure schedule functions: resolution per epoch and learning rate per step.

Kept free of state so they can be tested at their key points and printed by
``run.py --dry-run`` without building anything.
"""
from __future__ import annotations

import math

import numpy as np


def resolution_at(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int,
                  multiple: int = 32) -> int:
    """Training resolution for ``epoch`` (0-based), rounded as FFCV's ImageNet code does.

    FFCV's ``train_imagenet.py`` (and FFCV-SSL) use
    ``int(np.round(np.interp(epoch, [start_ramp, end_ramp], [min_res, max_res]) / 32)) * 32``:
    ``min_res`` until ``start_ramp``, a linear ramp to ``max_res`` at ``end_ramp``, rounded to
    the NEAREST multiple (numpy rounds halves to even). A fixed resolution
    (``min_res == max_res``) is returned as is, so a 28 px recipe needs no multiple of 32.
    """
    if max_res == min_res:
        return min_res
    res = np.interp(epoch, [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(res / multiple)) * multiple


def resolution_of_recipe(epoch: int, resolution: dict) -> int:
    """``resolution_at`` for a recipe's ``resolution`` section."""
    r = resolution
    return resolution_at(epoch, r["min_res"], r["max_res"], r["start_ramp"], r["end_ramp"],
                         r["multiple"])


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
