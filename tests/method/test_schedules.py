"""Schedules at their key points, against hand-computed values."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.method.schedules import (
    cosine_epoch_lr,
    lr_at,
    resolution_at,
    resolution_of_recipe,
    resolution_segments,
)


def test_resolution_holds_ramps_and_holds() -> None:
    kw = dict(min_res=160, max_res=224, start_ramp=10, end_ramp=20)
    assert [resolution_at(e, **kw) for e in (0, 5, 10)] == [160, 160, 160]
    assert [resolution_at(e, **kw) for e in (20, 21, 100)] == [224, 224, 224]
    ramp = [resolution_at(e, **kw) for e in range(10, 21)]
    assert ramp == sorted(ramp)
    # halfway: 160 + 0.5 * 64 = 192, a multiple of 32
    assert resolution_at(15, **kw) == 192
    # 160 + 0.7 * 64 = 204.8 -> nearest multiple of 32: 192; 0.8: 211.2 -> 224
    assert resolution_at(17, **kw) == 192
    assert resolution_at(18, **kw) == 224
    assert all(r % 32 == 0 for r in ramp)


def test_resolution_rounds_halves_to_even_as_numpy() -> None:
    # 160 -> 224 over 4 epochs: 176 = 5.5 x 32 -> 6 x 32; 208 = 6.5 x 32 -> 6 x 32 (even)
    assert [resolution_at(e, 160, 224, 0, 4) for e in range(5)] == [160, 192, 192, 192, 224]
    assert [resolution_at(e, 16, 32, 0, 4, multiple=8) for e in range(5)] == [16, 16, 24, 32, 32]


def ffcv_resolution(epoch: int, min_res: int, max_res: int, end_ramp: int, start_ramp: int,
                    multiple: int = 32) -> int:
    """ffcv-imagenet's ``get_resolution`` (github.com/libffcv/ffcv-imagenet, train_imagenet.py)
    as written there, branches and all; the one addition is ``multiple``, which it fixes at
    32 (the small demo recipes round to 8)."""
    assert min_res <= max_res
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    # otherwise, linearly interpolate to the nearest multiple of 32
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    final_res = int(np.round(interp[0] / multiple)) * multiple
    return final_res


@pytest.mark.parametrize("ramp", [(160, 192, 76, 85), (160, 224, 10, 20), (128, 256, 0, 7),
                                  (176, 192, 3, 4), (224, 224, 0, 0)], ids=str)
def test_resolution_equals_ffcv_imagenets_get_resolution(ramp: tuple[int, int, int, int]) -> None:
    min_res, max_res, start_ramp, end_ramp = ramp
    for epoch in range(end_ramp + 5):
        assert resolution_at(epoch, min_res, max_res, start_ramp, end_ramp) == ffcv_resolution(
            epoch, min_res, max_res, end_ramp, start_ramp), (ramp, epoch)


@pytest.mark.parametrize("path", sorted(RULES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_rounds_as_ffcv_at_every_epoch(path: Path) -> None:
    recipe = load_recipe(path)
    r = recipe.resolution
    assert r["multiple"] == 32 or r["max_res"] < 64, "ImageNet recipes round as FFCV: to 32"
    expected = [ffcv_resolution(e, r["min_res"], r["max_res"], r["end_ramp"], r["start_ramp"],
                                r["multiple"]) for e in range(recipe.optim.epochs)]
    assert [resolution_of_recipe(e, r) for e in range(recipe.optim.epochs)] == expected
    segments = resolution_segments(recipe)
    assert [res for first, last, res in segments for _ in range(first, last + 1)] == expected


def test_resolution_constant() -> None:
    assert {resolution_at(e, 224, 224, 0, 0) for e in range(5)} == {224}


def test_lr_warmup_and_cosine_key_points() -> None:
    spe, epochs, batch = 100, 1000, 2048
    base = batch / 256
    assert lr_at(0, spe, epochs, batch) == 0.0
    assert lr_at(500, spe, epochs, batch) == pytest.approx(base * 0.5)
    assert lr_at(1000, spe, epochs, batch) == pytest.approx(base)
    # halfway through the cosine: mean of base and end
    mid = 1000 + (epochs * spe - 1000) // 2
    assert lr_at(mid, spe, epochs, batch) == pytest.approx((base + 0.001 * base) / 2, rel=1e-6)
    assert lr_at(epochs * spe, spe, epochs, batch) == pytest.approx(0.001 * base)
    # one step into the cosine, hand computed
    q = 0.5 * (1 + math.cos(math.pi * 1 / (epochs * spe - 1000)))
    assert lr_at(1001, spe, epochs, batch) == pytest.approx(base * q + 0.001 * base * (1 - q))


def test_cosine_epoch_lr() -> None:
    assert cosine_epoch_lr(0, 100, 0.3) == pytest.approx(0.3)
    assert cosine_epoch_lr(50, 100, 0.3) == pytest.approx(0.15)
    assert cosine_epoch_lr(100, 100, 0.3) == pytest.approx(0.0, abs=1e-12)
