"""The augmentation kernels and FFCV ops: semantics, agreement with torchvision on fixed
parameters, JIT on and off, reproducible random streams and per-view probabilities."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from ffcv.pipeline.compiler import Compiler
from torchvision.transforms import RandomResizedCrop

from ffcv_bt.ops.blur import RandomGaussianBlurViews, blur_kernel_size, gaussian_blur
from ffcv_bt.ops.color_jitter import (BRIGHTNESS, CONTRAST, HUE, SATURATION, RandomColorJitterViews,
                                      adjust_brightness, adjust_contrast, adjust_hue,
                                      adjust_saturation, color_jitter)
from ffcv_bt.ops.crop_decoder import random_crop_box
from ffcv_bt.ops.flip import RandomFlipViews, hflip
from ffcv_bt.ops.grayscale import RandomGrayscaleViews, to_grayscale
from ffcv_bt.ops.rng import EpochSeed, stream_key, uniform
from ffcv_bt.ops.solarize import RandomSolarizeViews, solarize


def photo_like(height: int = 24, width: int = 30, seed: int = 0) -> np.ndarray:
    """A uint8 (H, W, 3) image with smooth colour gradients, saturated areas and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(3 * x + rng.uniform(0, 6)), np.cos(4 * y + rng.uniform(0, 6)),
                     np.sin(2 * (x + y) + rng.uniform(0, 6))], axis=-1)
    image = 128 + 140 * base + rng.normal(0, 12, size=base.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def as_chw_float(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [0, 1], torchvision's float image convention."""
    return torch.from_numpy(image).permute(2, 0, 1).double() / 255.0


def to_hwc_255(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.permute(1, 2, 0) * 255.0).numpy()


# ----- colour jitter kernels against torchvision's float path (tolerance 0.05 of a level) --------
FLOAT_KERNELS = [
    (adjust_brightness, TF.adjust_brightness, [0.6, 0.93, 1.4]),
    (adjust_contrast, TF.adjust_contrast, [0.6, 1.1, 1.4]),
    (adjust_saturation, TF.adjust_saturation, [0.0, 0.8, 1.2]),
    (adjust_hue, TF.adjust_hue, [-0.1, -0.03, 0.07, 0.5]),
]


@pytest.mark.parametrize("kernel,reference,factors", FLOAT_KERNELS,
                         ids=[k.__name__ for k, _, _ in FLOAT_KERNELS])
def test_color_kernels_match_torchvision_float(kernel, reference, factors):
    image = photo_like()
    for factor in factors:
        ours = image.astype(np.float32)
        kernel(ours, factor)
        theirs = to_hwc_255(reference(as_chw_float(image), factor))
        # contrast/saturation: torchvision weighs red 0.2989, we 0.299 (PIL, BT.601).
        assert np.abs(ours - theirs).max() < 0.05, (kernel.__name__, factor)


@pytest.mark.parametrize("kernel,factor", [(adjust_brightness, 1.3), (adjust_contrast, 0.7),
                                           (adjust_saturation, 1.2), (adjust_hue, 0.08)])
def test_color_kernels_jit_matches_python(kernel, factor):
    image = photo_like(12, 10, seed=3)
    jitted, python = image.astype(np.float32), image.astype(np.float32)
    kernel(jitted, factor)
    kernel.py_func(python, factor)
    np.testing.assert_allclose(jitted, python, atol=1e-3)


def test_color_jitter_matches_torchvision_in_given_order():
    """The whole uint8 jitter against torchvision with the same factors and order.

    Against torchvision's float chain our single final rounding is the only difference
    (<= 0.5 level). torchvision on a uint8 tensor truncates after each of the four parts,
    so it sits about one level lower on average: at most 3 levels apart, 90% within 2.
    """
    image = photo_like(32, 40, seed=1)
    factors = np.array([1.25, 0.7, 1.15, -0.06])
    order = np.array([HUE, CONTRAST, BRIGHTNESS, SATURATION])
    reference_ops = {BRIGHTNESS: TF.adjust_brightness, CONTRAST: TF.adjust_contrast,
                     SATURATION: TF.adjust_saturation, HUE: TF.adjust_hue}
    as_uint8 = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    as_float = as_chw_float(image)
    for part in order:
        as_uint8 = reference_ops[part](as_uint8, float(factors[part]))
        as_float = reference_ops[part](as_float, float(factors[part]))
    ours = image.copy()
    color_jitter(ours, factors, order)
    assert np.abs(ours - to_hwc_255(as_float)).max() <= 0.5 + 1e-3
    diff = np.abs(ours.astype(int) - as_uint8.permute(1, 2, 0).numpy().astype(int))
    assert diff.max() <= 3
    assert (diff <= 2).mean() >= 0.9


def test_color_jitter_identity_factors_leave_image_unchanged():
    image = photo_like(seed=2)
    out = image.copy()
    color_jitter(out, np.array([1.0, 1.0, 1.0, 0.0]), np.arange(4))
    np.testing.assert_array_equal(out, image)


# ----- grayscale, solarize, flip, blur ---------------------------------------------------------
@pytest.mark.parametrize("jit", [True, False])
def test_grayscale_is_601_luma_on_all_channels(jit):
    image = photo_like(seed=4)
    out = image.copy()
    (to_grayscale if jit else to_grayscale.py_func)(out)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    rgb = image.astype(np.float64)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.abs(out[..., 0] - luma).max() <= 0.5 + 1e-4
    theirs = to_hwc_255(TF.rgb_to_grayscale(as_chw_float(image), num_output_channels=3))
    assert np.abs(out - theirs).max() <= 0.6  # rounding + torchvision's 0.2989 red weight


@pytest.mark.parametrize("jit", [True, False])
def test_solarize_inverts_at_and_above_threshold(jit):
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = image.copy()
    (solarize if jit else solarize.py_func)(out, 128)
    values = image[..., 0].reshape(-1).astype(int)
    expected = np.where(values >= 128, 255 - values, values)
    np.testing.assert_array_equal(out[..., 0].reshape(-1), expected)
    theirs = TF.solarize(torch.from_numpy(image).permute(2, 0, 1), 128).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, theirs)


@pytest.mark.parametrize("jit", [True, False])
def test_flip_mirrors_and_is_an_involution(jit):
    flip = hflip if jit else hflip.py_func
    image = photo_like(9, 13, seed=5)
    out = image.copy()
    flip(out)
    np.testing.assert_array_equal(out, image[:, ::-1])
    flip(out)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("sigma,side", [(0.4, 30), (1.0, 30), (2.0, 30), (1.5, 224)])
def test_blur_matches_torchvision(sigma, side):
    image = photo_like(side, side + 6, seed=6)
    kernel_size = blur_kernel_size(side, 0.1)
    ours = image.copy()
    gaussian_blur(ours, sigma, kernel_size)
    theirs = TF.gaussian_blur(torch.from_numpy(image).permute(2, 0, 1), [kernel_size, kernel_size],
                              [sigma, sigma]).permute(1, 2, 0).numpy()
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1  # float32 sums and the dropped > 4 sigma tails vs torch's rounding


def test_blur_kernel_size_is_odd_tenth_of_side():
    assert [blur_kernel_size(s, 0.1) for s in (224, 192, 160, 64, 28)] == [23, 19, 17, 7, 3]


@pytest.mark.parametrize("jit", [True, False])
def test_blur_keeps_constant_image_and_tiny_sigma_is_identity(jit):
    blur = gaussian_blur if jit else gaussian_blur.py_func
    constant = np.full((11, 14, 3), 77, dtype=np.uint8)
    blur(constant, 2.0, 23)  # kernel wider than the image: reflection must still hold
    assert (constant == 77).all()
    image = photo_like(11, 14, seed=7)
    out = image.copy()
    blur(out, 0.1, 23)
    np.testing.assert_array_equal(out, image)
    blurred = image.copy()
    blur(blurred, 1.5, 5)
    assert abs(blurred.astype(float).mean() - image.astype(float).mean()) < 1.0
    assert blurred.astype(float).std() < image.astype(float).std()


# ----- random streams and crop boxes ------------------------------------------------------------
def test_uniform_streams_are_uniform_and_independent():
    keys = [stream_key(3, 1, sample, view, 5) for sample in range(2000) for view in (0, 1)]
    draws = np.array([[uniform(key, counter) for counter in range(4)] for key in keys])
    assert draws.min() >= 0.0 and draws.max() < 1.0
    n = draws.size
    assert abs(draws.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    counts, _ = np.histogram(draws, bins=20, range=(0, 1))
    chi2 = ((counts - n / 20) ** 2 / (n / 20)).sum()
    assert chi2 < 50  # 19 degrees of freedom: p ~ 1e-4
    corr = np.corrcoef(draws.T)  # counters of one stream are uncorrelated
    assert np.abs(corr - np.eye(4)).max() < 4 / math.sqrt(len(keys))
    # Any change of seed, epoch, sample, view or stream gives another stream.
    base = stream_key(3, 1, 10, 0, 5)
    others = [stream_key(4, 1, 10, 0, 5), stream_key(3, 2, 10, 0, 5), stream_key(3, 1, 11, 0, 5),
              stream_key(3, 1, 10, 1, 5), stream_key(3, 1, 10, 0, 6)]
    assert all(uniform(k, 0) != uniform(base, 0) for k in others)
    assert uniform(base, 2) == uniform.py_func(stream_key.py_func(3, 1, 10, 0, 5), 2)


def test_crop_boxes_follow_torchvision_distribution():
    height, width, n = 120, 90, 4000
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    boxes = np.array([random_crop_box(height, width, 0.08, 1.0, *log_ratio, stream_key(0, 0, s, 0, 1))
                      for s in range(n)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    torch.manual_seed(0)
    reference = np.array([RandomResizedCrop.get_params(torch.empty(3, height, width), [0.08, 1.0],
                                                       [3 / 4, 4 / 3]) for _ in range(n)])
    for ours, theirs in ((h * w / (height * width), reference[:, 2] * reference[:, 3] / (height * width)),
                         (np.log(w / h), np.log(reference[:, 3] / reference[:, 2])),
                         ((top + h / 2) / height, (reference[:, 0] + reference[:, 2] / 2) / height)):
        spread = math.sqrt((ours.var() + theirs.var()) / n)
        assert abs(ours.mean() - theirs.mean()) < 4 * spread
        assert abs(ours.std() - theirs.std()) < 0.1 * theirs.std()
    again = random_crop_box(height, width, 0.08, 1.0, *log_ratio, stream_key(0, 0, 17, 0, 1))
    assert tuple(again) == tuple(boxes[17])


# ----- the FFCV ops: JIT on and off, per-view probabilities -------------------------------------
def run_op(op, images: np.ndarray, indices: np.ndarray, jit: bool) -> np.ndarray:
    """Run an op's generated FFCV code on a (B, V, H, W, 3) batch, JIT-compiled or plain Python."""
    was_enabled = Compiler.is_enabled
    Compiler.set_enabled(jit)
    try:
        code = op.generate_code()
        return code(images.copy(), None, indices)
    finally:
        Compiler.set_enabled(was_enabled)


def detectors():
    """(op factory, test images, is_transformed(before, after)) for each op."""
    changed = lambda before, after: (before != after).any(axis=(-3, -2, -1))  # noqa: E731
    bright = np.full((6, 6, 3), 200, dtype=np.uint8)
    return {
        "flip": (lambda p, seed: RandomFlipViews(p, seed), photo_like(6, 6), changed),
        "solarize": (lambda p, seed: RandomSolarizeViews(p, seed), bright, changed),
        "grayscale": (lambda p, seed: RandomGrayscaleViews(p, seed), photo_like(6, 6), changed),
        "blur": (lambda p, seed: RandomGaussianBlurViews(p, seed, (0.8, 2.0), 0.5),
                 photo_like(6, 6), changed),
        "jitter": (lambda p, seed: RandomColorJitterViews(p, seed), photo_like(6, 6), changed),
    }


@pytest.mark.parametrize("name", ["flip", "solarize", "grayscale", "blur", "jitter"])
def test_op_probabilities_per_view_hold(name):
    """Over 1500 samples each view is transformed with its own probability (4-sigma bound),
    and the plain-Python run of the op (JIT off) gives the same batch on a slice."""
    make_op, image, is_transformed = detectors()[name]
    probabilities = (0.8, 0.1)
    op = make_op(probabilities, EpochSeed(11))
    n = 1500
    batch = np.broadcast_to(image, (n, 2) + image.shape).copy()
    indices = np.arange(1000, 1000 + n, dtype=np.uint64)
    out = run_op(op, batch, indices, jit=True)
    fractions = is_transformed(batch, out).mean(axis=0)
    for view, p in enumerate(probabilities):
        assert abs(fractions[view] - p) < 4 * math.sqrt(p * (1 - p) / n), (name, view, fractions)
    python_out = run_op(op, batch[:40], indices[:40], jit=False)
    np.testing.assert_array_equal(python_out, out[:40])


def test_op_draws_depend_on_sample_epoch_and_seed_not_on_batch_position():
    image = photo_like(8, 8, seed=8)
    seed = EpochSeed(5)
    op = RandomColorJitterViews((1.0, 1.0), seed)
    batch = np.broadcast_to(image, (6, 2) + image.shape).copy()
    indices = np.array([3, 9, 4, 7, 1, 0], dtype=np.uint64)
    out = run_op(op, batch, indices, jit=True)
    permutation = np.array([5, 2, 0, 1, 4, 3])
    shuffled = run_op(op, batch, indices[permutation], jit=True)
    np.testing.assert_array_equal(shuffled, out[permutation])  # keyed on the sample, not the slot
    assert not np.array_equal(out[:, 0], out[:, 1])  # the two views draw differently
    seed.set_epoch(1)
    assert not np.array_equal(run_op(op, batch, indices, jit=True), out)  # read at run time
    seed.set_epoch(0)
    np.testing.assert_array_equal(run_op(op, batch, indices, jit=True), out)
    other = run_op(RandomColorJitterViews((1.0, 1.0), EpochSeed(6)), batch, indices, jit=True)
    assert not np.array_equal(other, out)


def test_op_rejects_wrong_probabilities_and_shapes():
    with pytest.raises(ValueError, match="probabilities"):
        RandomSolarizeViews((0.5, 1.5), EpochSeed(0))
    with pytest.raises(ValueError, match="seed"):
        EpochSeed(-1)
    from ffcv.pipeline.state import State
    state = State(jit_mode=True, device=torch.device("cpu"), shape=(3, 8, 8, 3), dtype=np.dtype("u1"))
    with pytest.raises(ValueError, match="2 views"):
        RandomFlipViews((0.5, 0.5), EpochSeed(0)).declare_state_and_memory(state)
