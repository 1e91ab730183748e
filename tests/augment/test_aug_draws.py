"""The random DRAWS of the loader's augmentations, against the reference recipe.

Tests of the kernels (tests/augment/test_ops.py) cannot see a wrong distribution of parameters.
These take the per-view ops exactly as the pretraining loader builds them
(``pretrain_loader.view_transforms`` with rules/base.yaml's augmentations), ask each op
for the decisions it makes for thousands of sample indices (``ViewOperation.draws``: the
same compiled ``decide`` the FFCV code runs) and compare their distributions with the
reference's: per-view application rates, factor ranges, the jitter order, blur sigmas.
Each statistical bound is set about 4-5 standard deviations out (false alarm ~1e-5).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from ffcv.pipeline.compiler import Compiler

from ffcv_bt.augment.blur import RandomGaussianBlurViews
from ffcv_bt.augment.color_jitter import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    RandomColorJitterViews,
)
from ffcv_bt.augment.flip import RandomFlipViews
from ffcv_bt.augment.fused import view_operations
from ffcv_bt.augment.grayscale import RandomGrayscaleViews
from ffcv_bt.augment.rng import EpochSeed
from ffcv_bt.augment.solarize import RandomSolarizeViews
from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.data.pretrain_loader import AugmentationParams, view_transforms

pytestmark = pytest.mark.own_process  # calls numba kernels directly: tests/own_process.py

# The reference recipe (Barlow Twins paper and code): per-view probabilities and strengths.
REFERENCE_P = {RandomFlipViews: (0.5, 0.5), RandomColorJitterViews: (0.8, 0.8),
               RandomGrayscaleViews: (0.2, 0.2), RandomGaussianBlurViews: (1.0, 0.1),
               RandomSolarizeViews: (0.0, 0.2)}
STRENGTHS = {BRIGHTNESS: 0.4, CONTRAST: 0.4, SATURATION: 0.2}
HUE_STRENGTH = 0.1
SIGMA_RANGE = (0.1, 2.0)
SAMPLES = np.arange(5000, 11000)  # 6000 sample indices
SEED = 1234


def loader_ops(layout: str) -> dict[type, list]:
    """op type -> [op for view 1, op for view 2], and the view index of each in its op,
    as the loader builds them in the decode-once layout or the stock two-pipeline one."""
    seed = EpochSeed(SEED)
    aug = AugmentationParams.from_config(load_recipe(RULES_DIR / "base.yaml").aug)
    if layout == "decode_once":
        pipelines = [(view_transforms(aug, seed, slice(0, 2)), (0, 1))]
    else:
        pipelines = [(view_transforms(aug, seed, slice(0, 1)), (0,)),
                     (view_transforms(aug, seed, slice(1, 2)), (0,))]
    found: dict[type, list] = {}
    for ops, views in pipelines:
        for op in view_operations(ops):
            for v in views:
                found.setdefault(type(op), []).append((op, v))
    return found


def draws_of(op, view: int, epoch: int = 0, samples: np.ndarray = SAMPLES,
             jit: bool = False) -> np.ndarray:
    """(samples, 1 + k) decisions of ``op`` for one of its views.

    Plain Python by default (the same ``decide`` source that numba compiles for the loader,
    without the compile time); test_compiled_draws_equal_plain_draws ties the two.
    """
    was_enabled = Compiler.is_enabled
    Compiler.set_enabled(jit)
    try:
        return op.draws(samples, epoch)[:, view]
    finally:
        Compiler.set_enabled(was_enabled)


@pytest.fixture(scope="module")
def layouts() -> dict[str, dict[type, list]]:
    return {layout: loader_ops(layout) for layout in ("decode_once", "decode_twice")}


@pytest.fixture(scope="module")
def ops(layouts) -> dict[type, list]:
    return layouts["decode_once"]


def binomial_ok(rate: float, p: float, n: int) -> bool:
    if p in (0.0, 1.0):
        return rate == p
    return abs(rate - p) <= 4.5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("layout", ["decode_once", "decode_twice"])
def test_every_op_applies_to_each_view_at_the_reference_rate(layouts, layout):
    """Catches swapped per-view probabilities (blur 1.0 / 0.1, solarize 0 / 0.2), in the
    config, in the op, or in how the two-pipeline layout maps its views."""
    found = layouts[layout]
    assert set(found) == set(REFERENCE_P), f"loader ops: {sorted(t.__name__ for t in found)}"
    for kind, per_view in found.items():
        assert len(per_view) == 2, (kind.__name__, len(per_view))
        for view, (op, index) in enumerate(per_view):
            rate = draws_of(op, index)[:, 0].mean()
            p = REFERENCE_P[kind][view]
            assert binomial_ok(rate, p, len(SAMPLES)), (kind.__name__, f"view {view + 1}", rate, p)


def test_decisions_are_independent_across_views_ops_and_epochs(ops):
    """Applying one op to a view says nothing about the other view, another op, or the next
    epoch (all pairs of 0/1 decisions with p in (0, 1) are uncorrelated)."""
    columns = {}
    for kind, per_view in ops.items():
        for view, (op, index) in enumerate(per_view):
            if 0 < REFERENCE_P[kind][view] < 1:
                columns[(kind.__name__, view, 0)] = draws_of(op, index)[:, 0]
                columns[(kind.__name__, view, 1)] = draws_of(op, index, epoch=1)[:, 0]
    names = list(columns)
    matrix = np.corrcoef(np.array([columns[n] for n in names]))
    bound = 5 / math.sqrt(len(SAMPLES))
    for i, j in itertools.combinations(range(len(names)), 2):
        assert abs(matrix[i, j]) < bound, (names[i], names[j], matrix[i, j])


@pytest.mark.parametrize("part", [BRIGHTNESS, CONTRAST, SATURATION])
def test_jitter_factors_cover_one_plus_minus_strength(ops, part):
    """Factors ~ U(1 - s, 1 + s): both ends reached, mean 1, uniform spread. Catches a range
    halved or shifted."""
    low, high = 1 - STRENGTHS[part], 1 + STRENGTHS[part]
    for op, index in ops[RandomColorJitterViews]:
        factors = draws_of(op, index)[:, 1 + part]
        n, width = len(factors), high - low
        assert factors.min() >= low and factors.max() <= high
        assert factors.min() < low + 0.01 * width and factors.max() > high - 0.01 * width
        assert abs(factors.mean() - 1.0) < 4.5 * width / math.sqrt(12 * n)
        assert abs(factors.std() - width / math.sqrt(12)) < 0.05 * width / math.sqrt(12)


def test_hue_factor_covers_plus_minus_strength(ops):
    for op, index in ops[RandomColorJitterViews]:
        hue = draws_of(op, index)[:, 1 + HUE]
        width = 2 * HUE_STRENGTH
        assert hue.min() >= -HUE_STRENGTH and hue.max() <= HUE_STRENGTH
        assert hue.min() < -HUE_STRENGTH + 0.01 * width and hue.max() > HUE_STRENGTH - 0.01 * width
        assert abs(hue.mean()) < 4.5 * width / math.sqrt(12 * len(hue))


def test_jitter_order_is_a_uniform_permutation_of_four(ops):
    """All 24 orders appear about equally often (chi-square, 23 degrees of freedom). Catches
    a biased shuffle, e.g. one that never leaves the identity order."""
    orders = np.concatenate([draws_of(op, index)[:, 5:9] for op, index in ops[RandomColorJitterViews]])
    keys = [tuple(int(x) for x in row) for row in orders]
    assert all(sorted(k) == [0, 1, 2, 3] for k in keys)
    counts = np.array([keys.count(perm) for perm in itertools.permutations(range(4))])
    expected = len(keys) / 24
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts.min() > 0, dict(zip(itertools.permutations(range(4)), counts))
    assert chi2 < 60, chi2  # P(chi2_23 > 60) ~ 4e-5
    # Each part is first a quarter of the time, independently of the view.
    for part in range(4):
        share = (orders[:, 0] == part).mean()
        assert abs(share - 0.25) < 4.5 * math.sqrt(0.25 * 0.75 / len(orders)), (part, share)


@pytest.mark.parametrize("view", [0, 1])
def test_blur_sigma_spans_its_range_among_applied_views(ops, view):
    """sigma ~ U(0.1, 2) among the views that are blurred, also for view 2 (p = 0.1). Catches
    a sigma drawn from the apply decision's number (then every applied sigma < ~0.3)."""
    op, index = ops[RandomGaussianBlurViews][view]
    decisions = draws_of(op, index)
    sigmas = decisions[decisions[:, 0] != 0, 1]
    low, high = SIGMA_RANGE
    width = high - low
    assert len(sigmas) > 300
    assert sigmas.min() >= low and sigmas.max() <= high
    assert sigmas.min() < low + 0.05 * width and sigmas.max() > high - 0.05 * width
    assert abs(sigmas.mean() - (low + high) / 2) < 4.5 * width / math.sqrt(12 * len(sigmas))
    counts, _ = np.histogram(sigmas, bins=10, range=SIGMA_RANGE)
    expected = len(sigmas) / 10
    assert float(((counts - expected) ** 2 / expected).sum()) < 35  # chi2_9: p ~ 6e-5


def test_draws_change_with_epoch_and_seed_but_not_with_the_layout(layouts):
    """New numbers every epoch and seed; the same numbers for a view in both loader layouts
    (so decode_once=False replays decode_once=True)."""
    once, twice = layouts["decode_once"], layouts["decode_twice"]
    for kind in REFERENCE_P:
        for view in (0, 1):
            (op_a, index_a), (op_b, index_b) = once[kind][view], twice[kind][view]
            np.testing.assert_array_equal(draws_of(op_a, index_a), draws_of(op_b, index_b))
    op, index = once[RandomColorJitterViews][0]
    assert not np.array_equal(draws_of(op, index, epoch=0)[:, 1:], draws_of(op, index, epoch=1)[:, 1:])
    other = RandomColorJitterViews((0.8, 0.8), EpochSeed(SEED + 1), 0.4, 0.4, 0.2, 0.1)
    assert not np.array_equal(draws_of(op, index)[:, 1:], draws_of(other, index)[:, 1:])


def test_compiled_draws_equal_plain_draws(ops):
    """The numba-compiled ``decide`` (what the loader runs) makes the plain-Python decisions.

    Parameters may differ in the last bit: FFCV compiles with ``fastmath``, which lets LLVM
    fuse the multiply-add of ``low + (high - low) * u`` (seen: ~1e-16 apart).
    """
    for kind, per_view in ops.items():
        op, _ = per_view[0]
        for view in (0, 1):
            compiled = draws_of(op, view, 3, SAMPLES[:200], jit=True)
            plain = draws_of(op, view, 3, SAMPLES[:200])
            np.testing.assert_array_equal(compiled[:, 0], plain[:, 0], err_msg=kind.__name__)
            np.testing.assert_allclose(compiled, plain, rtol=1e-12, atol=1e-15,
                                       err_msg=kind.__name__)


def test_ops_apply_exactly_where_their_draws_say():
    """The FFCV code of an op changes a view iff its draw says 'apply' (the draws audited
    above are the ones the loader acts on)."""
    seed = EpochSeed(SEED)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    samples = SAMPLES[:300]
    for op in (RandomGaussianBlurViews((0.5, 0.3), seed, SIGMA_RANGE),
               RandomColorJitterViews((0.5, 0.3), seed, 0.4, 0.4, 0.2, 0.1),
               RandomGrayscaleViews((0.5, 0.3), seed)):
        batch = np.broadcast_to(image, (len(samples), 2) + image.shape).copy()
        out = op.generate_code()(batch.copy(), None, samples.astype(np.uint64))
        changed = (out != batch).any(axis=(-3, -2, -1))
        applied = op.draws(samples)[:, :, 0] != 0
        np.testing.assert_array_equal(changed, applied, err_msg=type(op).__name__)
