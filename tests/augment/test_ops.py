"""The augmentation kernels and FFCV ops: semantics, bit-exact agreement with the reference's
PIL path on fixed parameters, JIT on and off, reproducible random streams and per-view probabilities."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms._functional_pil as TF_PIL
from ffcv.pipeline.compiler import Compiler
from numba import njit
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torchvision.transforms import RandomResizedCrop

from ffcv_bt.augment.blur import RandomGaussianBlurViews, gaussian_blur
from ffcv_bt.augment.color_jitter import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    JITTER_PARAMS,
    SATURATION,
    RandomColorJitterViews,
    color_jitter,
    hue_rotate,
    pil_hsv_to_rgb,
    pil_hue_saturation,
    saturate,
)
from ffcv_bt.augment.crop_decoder import random_crop_box
from ffcv_bt.augment.flip import RandomFlipViews, hflip
from ffcv_bt.augment.fused import FusedViewAugment, fuse_view_ops
from ffcv_bt.augment.grayscale import RandomGrayscaleViews, to_grayscale
from ffcv_bt.augment.rng import EpochSeed, stream_key, uniform
from ffcv_bt.augment.solarize import RandomSolarizeViews, solarize

pytestmark = pytest.mark.own_process  # calls numba kernels directly: tests/own_process.py


def photo_like(height: int = 24, width: int = 30, seed: int = 0) -> np.ndarray:
    """A uint8 (H, W, 3) image with smooth colour gradients, saturated areas and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(3 * x + rng.uniform(0, 6)), np.cos(4 * y + rng.uniform(0, 6)),
                     np.sin(2 * (x + y) + rng.uniform(0, 6))], axis=-1)
    image = 128 + 140 * base + rng.normal(0, 12, size=base.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# ----- colour jitter, grayscale, solarize, flip, blur against the reference's PIL path --------
REFERENCE_PARTS = {BRIGHTNESS: TF_PIL.adjust_brightness, CONTRAST: TF_PIL.adjust_contrast,
                   SATURATION: TF_PIL.adjust_saturation, HUE: TF_PIL.adjust_hue}


def jitter_params(factors: dict, order=(0, 1, 2, 3)) -> np.ndarray:
    """color_jitter's parameter array: the given parts' factors (others NaN) and the order."""
    params = np.full(JITTER_PARAMS, np.nan)
    for part, factor in factors.items():
        params[part] = factor
    params[4:] = order
    return params


@pytest.mark.parametrize("part,factors", [(BRIGHTNESS, [0.0, 0.6, 0.93, 1.4]),
                                          (CONTRAST, [0.6, 1.1, 1.4]),
                                          (SATURATION, [0.0, 0.8, 1.2]),
                                          (HUE, [-0.5, -0.1, -0.003, 0.0, 0.07, 0.1])])
def test_color_parts_equal_pil(part, factors):
    """Each part alone equals torchvision's PIL function (ImageEnhance / PIL HSV) exactly."""
    image = photo_like(seed=part)
    for factor in factors:
        ours = image.copy()
        color_jitter(ours, jitter_params({part: factor}))
        theirs = np.asarray(REFERENCE_PARTS[part](Image.fromarray(image), factor))
        np.testing.assert_array_equal(ours, theirs, err_msg=f"part {part} factor {factor}")


@pytest.mark.parametrize("jit", [True, False])
def test_color_jitter_equals_pil_chain_in_given_order(jit):
    image = photo_like(32, 40, seed=1)
    factors = {BRIGHTNESS: 1.25, CONTRAST: 0.7, SATURATION: 1.15, HUE: -0.06}
    for order in ([HUE, CONTRAST, BRIGHTNESS, SATURATION], [BRIGHTNESS, SATURATION, HUE, CONTRAST]):
        reference = Image.fromarray(image)
        for part in order:
            reference = REFERENCE_PARTS[part](reference, factors[part])
        ours = image.copy()
        (color_jitter if jit else color_jitter.py_func)(ours, jitter_params(factors, order))
        np.testing.assert_array_equal(ours, np.asarray(reference))


def test_color_jitter_identity_factors_leave_image_unchanged():
    image = photo_like(seed=2)
    out = image.copy()
    color_jitter(out, jitter_params({BRIGHTNESS: 1.0, CONTRAST: 1.0, SATURATION: 1.0}))
    np.testing.assert_array_equal(out, image)


# ----- hue and saturation on every colour (their float32 forms are checked, not derived) -------
def every_triple() -> np.ndarray:
    """All 2^24 byte triples as a (4096, 4096, 3) uint8 image."""
    k = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([k >> 16, (k >> 8) & 255, k & 255], axis=-1).astype(np.uint8).reshape(
        4096, 4096, 3)


@njit(nogil=True, fastmath=False, error_model="numpy")
def hue_saturation_bytes(image):
    """:func:`pil_hue_saturation` of every pixel, as two uint8 planes."""
    flat = image.reshape(-1, 3)
    hue = np.empty(flat.shape[0], np.uint8)
    sat = np.empty(flat.shape[0], np.uint8)
    for p in range(flat.shape[0]):
        h, s = pil_hue_saturation(np.float32(flat[p, 0]), np.float32(flat[p, 1]),
                                  np.float32(flat[p, 2]))
        hue[p], sat[p] = np.uint8(h), np.uint8(s)
    return hue, sat


@njit(nogil=True, fastmath=False, error_model="numpy")
def hsv_bytes_to_rgb(image):
    """:func:`pil_hsv_to_rgb` of every (H, S, V) pixel, as an RGB image."""
    flat = image.reshape(-1, 3)
    out = np.empty_like(flat)
    for p in range(flat.shape[0]):
        red, green, blue = pil_hsv_to_rgb(np.float32(flat[p, 0]), np.float32(flat[p, 1]),
                                          np.float32(flat[p, 2]))
        out[p, 0], out[p, 1], out[p, 2] = np.uint8(red), np.uint8(green), np.uint8(blue)
    return out.reshape(image.shape)


def test_every_kernel_keeps_fastmath_off():
    """FFCV compiles pipelines with fastmath, which numba passes on to called functions that
    leave it unset (numba/core/cpu.py, ``inherit_if_not_set``); it breaks the float32 forms
    (seen: 0.1% of all colours off after a hue rotation, up to 6 levels in the loader's
    jittered views). A direct call here would not show it (numba reuses the overload
    compiled first), so check the setting of every numba function in ffcv_bt.augment.
    (tests/augment/test_device_augment.py checks the loader's pixels themselves.)"""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import ffcv_bt.augment

    kernels = []
    for info in pkgutil.iter_modules(ffcv_bt.augment.__path__):
        module = importlib.import_module(f"ffcv_bt.augment.{info.name}")
        kernels += [f for f in vars(module).values()
                    if isinstance(f, CPUDispatcher) and f.__module__ == module.__name__]
    assert hue_rotate in kernels and saturate in kernels and len(kernels) >= 25, kernels
    for kernel in kernels:
        assert kernel.targetoptions.get("fastmath") is False, kernel
        assert kernel.targetoptions.get("error_model") == "numpy", kernel


def test_rgb_to_hsv_equals_pil_on_every_colour():
    colours = every_triple()
    hsv = np.asarray(Image.fromarray(colours).convert("HSV")).reshape(-1, 3)
    hue, sat = hsv[:, 0], hsv[:, 1]
    ours_hue, ours_sat = hue_saturation_bytes(colours)
    np.testing.assert_array_equal(ours_sat, sat)
    chromatic = colours.reshape(-1, 3).max(axis=1) != colours.reshape(-1, 3).min(axis=1)
    np.testing.assert_array_equal(ours_hue[chromatic], hue[chromatic])  # gray: H unused


def test_hsv_to_rgb_equals_pil_on_every_hsv_triple():
    hsv = every_triple()
    theirs = np.asarray(Image.frombytes("HSV", (4096, 4096), hsv.tobytes()).convert("RGB"))
    np.testing.assert_array_equal(hsv_bytes_to_rgb(hsv), theirs)


@pytest.mark.parametrize("shift", [0, 77])
def test_hue_rotate_equals_pil_on_every_colour(shift):
    colours = every_triple()
    hue, sat, value = Image.fromarray(colours).convert("HSV").split()
    hue = hue.point(lambda level: (level + shift) & 255)
    theirs = np.asarray(Image.merge("HSV", (hue, sat, value)).convert("RGB"))
    ours = colours.copy()
    hue_rotate(ours, shift)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("factor", [0.0, 0.8317, 1.3999])
def test_saturate_equals_pil_on_every_colour(factor):
    colours = every_triple()
    theirs = np.asarray(ImageEnhance.Color(Image.fromarray(colours)).enhance(factor))
    ours = colours.copy()
    saturate(ours, factor)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("jit", [True, False])
def test_grayscale_equals_pil_luma_on_all_channels(jit):
    image = photo_like(seed=4)
    out = image.copy()
    (to_grayscale if jit else to_grayscale.py_func)(out)
    theirs = np.asarray(TF_PIL.to_grayscale(Image.fromarray(image), num_output_channels=3))
    np.testing.assert_array_equal(out, theirs)


@pytest.mark.parametrize("jit", [True, False])
def test_solarize_inverts_at_and_above_threshold(jit):
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = image.copy()
    (solarize if jit else solarize.py_func)(out, 128)
    np.testing.assert_array_equal(out, np.asarray(ImageOps.solarize(Image.fromarray(image), 128)))


@pytest.mark.parametrize("jit", [True, False])
def test_flip_mirrors_and_is_an_involution(jit):
    flip = hflip if jit else hflip.py_func
    image = photo_like(9, 13, seed=5)
    out = image.copy()
    flip(out)
    np.testing.assert_array_equal(out, image[:, ::-1])
    flip(out)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("sigma,height,width", [(0.1, 30, 36), (0.4, 30, 36), (1.0, 30, 36),
                                                (2.0, 224, 224), (1.3, 5, 3), (2.0, 1, 9)])
def test_blur_equals_pil_gaussian_blur(sigma, height, width):
    """Pillow's extended box blur bit for bit, borders included, also on images narrower
    than the box."""
    image = photo_like(height, width, seed=6)
    ours = image.copy()
    gaussian_blur(ours, sigma, False, 256)
    theirs = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("jit", [True, False])
def test_blur_folds_flip_and_solarize_exactly(jit):
    blur = gaussian_blur if jit else gaussian_blur.py_func
    image = photo_like(17, 23, seed=7)
    out = image.copy()
    blur(out, 1.7, True, 128)
    expected = image[:, ::-1].copy()
    gaussian_blur(expected, 1.7, False, 256)
    solarize(expected, 128)
    np.testing.assert_array_equal(out, expected)
    constant = np.full((11, 14, 3), 77, dtype=np.uint8)
    blur(constant, 2.0, False, 256)
    assert (constant == 77).all()


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
        "solarize": (lambda p, seed: RandomSolarizeViews(p, seed, 128), bright, changed),
        "grayscale": (lambda p, seed: RandomGrayscaleViews(p, seed), photo_like(6, 6), changed),
        "blur": (lambda p, seed: RandomGaussianBlurViews(p, seed, (0.8, 2.0)),
                 photo_like(6, 6), changed),
        "jitter": (lambda p, seed: RandomColorJitterViews(p, seed, 0.4, 0.4, 0.2, 0.1),
                   photo_like(6, 6), changed),
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
    op = RandomColorJitterViews((1.0, 1.0), seed, 0.4, 0.4, 0.2, 0.1)
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
    other = run_op(RandomColorJitterViews((1.0, 1.0), EpochSeed(6), 0.4, 0.4, 0.2, 0.1), batch,
                   indices, jit=True)
    assert not np.array_equal(other, out)


def test_op_rejects_wrong_probabilities_and_shapes():
    with pytest.raises(ValueError, match="probabilities"):
        RandomSolarizeViews((0.5, 1.5), EpochSeed(0), 128)
    with pytest.raises(ValueError, match="seed"):
        EpochSeed(-1)
    from ffcv.pipeline.state import State
    state = State(jit_mode=True, device=torch.device("cpu"), shape=(3, 8, 8, 3), dtype=np.dtype("u1"))
    with pytest.raises(ValueError, match="2 views"):
        RandomFlipViews((0.5, 0.5), EpochSeed(0)).declare_state_and_memory(state)


# ----- the fused op -------------------------------------------------------------------------------
def test_fused_op_equals_the_five_ops_in_sequence_and_fuse_view_ops_finds_them():
    """Same decisions, same pixels: every combination of flip, jitter (all 24 orders),
    grayscale, blur and solarize occurs in 400 samples x 2 views."""
    seed = EpochSeed(3)
    ops = [RandomFlipViews((0.5, 0.5), seed),
           RandomColorJitterViews((0.8, 0.6), seed, 0.4, 0.4, 0.2, 0.1),
           RandomGrayscaleViews((0.3, 0.3), seed),
           RandomGaussianBlurViews((0.5, 0.4), seed, (0.1, 2.0)),
           RandomSolarizeViews((0.4, 0.5), seed, 128)]
    fused = fuse_view_ops(ops + ["tail"])
    assert isinstance(fused[0], FusedViewAugment) and fused[1:] == ["tail"]
    rng = np.random.default_rng(9)
    batch = np.stack([np.stack([photo_like(10, 13, seed=int(s)) for s in rng.integers(0, 50, 2)])
                      for _ in range(400)])
    indices = np.arange(400, dtype=np.uint64) * 7
    sequential = batch.copy()
    for op in ops:
        sequential = run_op(op, sequential, indices, jit=True)
    assert (sequential != batch).any(axis=(-3, -2, -1)).mean() > 0.9
    np.testing.assert_array_equal(run_op(fused[0], batch, indices, jit=True), sequential)
    np.testing.assert_array_equal(run_op(fused[0], batch[:20], indices[:20], jit=False),
                                  sequential[:20])
