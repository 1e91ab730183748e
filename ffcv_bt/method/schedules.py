"""Pure schedule functions: resolution per epoch, learning rate per step (and the one way a
rate reaches an optimiser, ``set_group_rates``), and what a schedule costs (runs of equal
resolution, epoch-equivalents at max_res, device-hours at a throughput, a schedule stretched
to other epochs).

Kept free of state so they can be tested at their key points and printed by
``run.py --dry-run`` without building anything.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from ffcv_bt.config import Recipe


def resolution_at(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int,
                  multiple: int = 32) -> int:
    """Training resolution for ``epoch`` (0-based), rounded as FFCV's ImageNet code does.

    FFCV's ``train_imagenet.py`` (``get_resolution``; FFCV-SSL's too): ``min_res`` as is up to
    ``start_ramp``, ``max_res`` as is from ``end_ramp``, and in between
    ``int(np.round(np.interp(epoch, [start_ramp, end_ramp], [min_res, max_res]) / 32)) * 32``,
    the NEAREST multiple (numpy rounds halves to even); ``multiple`` replaces its 32 for small
    images. The held ends are not rounded, so a 28 px recipe needs no multiple of 32.
    """
    if epoch <= start_ramp or max_res == min_res:
        return min_res
    if epoch >= end_ramp:
        return max_res
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


BASE_LR = "base_lr"  # the key under which a parameter group carries its base rate


def set_group_rates(optimizer: Any, rate: Callable[[float], float]) -> None:
    """Each parameter group's lr = ``rate(its base rate)`` (``group[BASE_LR]``): the one way
    every stage sets its learning rates."""
    for group in optimizer.param_groups:
        group["lr"] = rate(group[BASE_LR])


def cosine_epoch_lr(epoch: int, epochs: int, base_lr: float) -> float:
    """Cosine decay per epoch from ``base_lr`` to 0 (evaluation protocols)."""
    return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def schedule_segments(resolution: dict[str, int], epochs: int) -> list[tuple[int, int, int]]:
    """[(first epoch, last epoch, resolution)] runs of equal resolution."""
    r = resolution
    segments: list[tuple[int, int, int]] = []
    for e in range(epochs):
        res = resolution_of_recipe(e, r)
        if segments and segments[-1][2] == res:
            segments[-1] = (segments[-1][0], e, res)
        else:
            segments.append((e, e, res))
    return segments


def resolution_segments(recipe: Recipe) -> list[tuple[int, int, int]]:
    """[(first epoch, last epoch, resolution)] of the recipe's schedule."""
    return schedule_segments(recipe.resolution, recipe.optim.epochs)


def pretrain_cost_factor(recipe: Recipe) -> float:
    """Sum over epochs of (res / max_res)^2: epochs-equivalent at max_res."""
    max_res = recipe.resolution.max_res
    return sum((last - first + 1) * (res / max_res) ** 2
               for first, last, res in resolution_segments(recipe))


def schedule_hours(resolution: dict[str, int], epochs: int, n_train: int,
                   rate: Callable[[int], float]) -> float:
    """Device-hours of ``epochs`` over ``n_train`` images at ``rate(res)`` images/s per device."""
    return sum((last - first + 1) * n_train / rate(res)
               for first, last, res in schedule_segments(resolution, epochs)) / 3600


def scaled_schedule(recipe: Recipe, epochs: int) -> dict[str, Any]:
    """Overrides that stretch the recipe's schedule to ``epochs``: the resolution ramp and
    the warmup keep their fractions of the run."""
    o, r = recipe.optim, recipe.resolution
    f = epochs / o["epochs"]
    start = round(r["start_ramp"] * f)
    return {"optim.epochs": epochs, "optim.warmup_epochs": o["warmup_epochs"] * f,
            "resolution.start_ramp": start, "resolution.end_ramp": max(start, round(r["end_ramp"] * f))}
