"""Colour jitter (brightness, contrast, saturation, hue) under one probability, in random order,
computed as the reference's PIL path does it.

The reference applies torchvision's ``ColorJitter`` to PIL images, so each part is Pillow
arithmetic on uint8 images (Pillow's ImageEnhance.py, src/libImaging/Blend.c and
Convert.c; torchvision's transforms/_functional_pil.py):

- brightness, contrast, saturation: ``Image.blend(degenerate, image, factor)``, i.e.
  ``out = degenerate + factor * (image - degenerate)`` in float32, clipped to [0, 255] and
  *truncated* to uint8 after each part. The degenerate image is black (brightness), the
  mean of the "L" image rounded to an integer level, ``int(mean + 0.5)`` (contrast), or the
  pixel's own "L" value (saturation, ``ImageEnhance.Color``); "L" is Pillow's 601 luma
  (:func:`ffcv_bt.ops.grayscale.pil_luma`).
- hue: Pillow's RGB -> HSV conversion (8-bit H, S, V), ``H += int(hue_factor * 255)``
  wrapping modulo 256, HSV -> RGB. The round trip itself quantises, so it runs even when
  the shift is 0.
- the four parts run in a uniformly random order (torchvision draws a permutation of 4).

Everything is integer-exact or float32 in the same order of operations as Pillow's C code,
so results match Pillow bit for bit (checked in tests/test_fidelity.py). Each part is one
pass over the view, in place (no temporary image): brightness and contrast are 256-entry
tables (contrast first reads the mean luma of the image it receives), saturation and hue
are loops written so that numba vectorises them (saturation in float32 only, which is exact
for its levels, luma and blend, and sets ``fastmath=False``: FFCV compiles its pipelines
with fastmath, which numba would otherwise pass on to it). (One fused per-pixel loop over all parts
measured slower: its branches keep the hue arithmetic from vectorising.)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from numba import njit

from .flip import hflip
from .grayscale import pil_luma, pil_luma_float32, to_grayscale
from .rng import STREAM_COLOR_JITTER, EpochSeed, uniform, uniform_range
from .solarize import solarize
from .view_op import ViewOperation

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
JITTER_PARAMS = 8  # brightness, contrast, saturation factors, hue shift, then the order (4)


@njit(nogil=True, error_model="numpy", inline="always")
def blend_level(degenerate, value, alpha: np.float32) -> int:
    """Pillow's ``Image.blend`` on one level: ``degenerate + alpha * (value - degenerate)``
    in float32, clipped to [0, 255], truncated."""
    t = np.float32(degenerate) + alpha * np.float32(np.int32(value) - np.int32(degenerate))
    if t <= np.float32(0.0):
        return 0
    if t >= np.float32(255.0):
        return 255
    return int(t)


@njit(nogil=True)
def blend_table(degenerate: int, factor: float) -> np.ndarray:
    """``blend_level(degenerate, v, factor)`` for v = 0..255 (brightness: degenerate 0)."""
    table = np.empty(256, dtype=np.uint8)
    alpha = np.float32(factor)
    for v in range(256):
        table[v] = blend_level(degenerate, v, alpha)
    return table


@njit(nogil=True, error_model="numpy")
def hue_rotate(image, shift: int) -> None:
    """Pillow's RGB -> HSV, ``H += shift`` (mod 256), HSV -> RGB, of every pixel in place.

    The arithmetic is Pillow's (src/libImaging/Convert.c ``rgb2hsv_row`` and ``hsv2rgb``):
    float32 ratios, double for the sector offset and the wrap, truncation to 8 bits on the
    way in, C ``round`` (half away from zero) on the way out. It is written without branches
    (every candidate computed, then selected) so numba vectorises the loop.
    """
    flat = image.reshape(-1)
    for p in range(flat.size // 3):
        r, g, b = np.int32(flat[3 * p]), np.int32(flat[3 * p + 1]), np.int32(flat[3 * p + 2])
        maxc = max(r, max(g, b))
        minc = min(r, min(g, b))
        chroma = np.float32(max(maxc - minc, 1))
        s = chroma / np.float32(max(maxc, 1))
        rc = np.float32(maxc - r) / chroma
        gc = np.float32(maxc - g) / chroma
        bc = np.float32(maxc - b) / chroma
        h_red = bc - gc
        h_green = np.float32(2.0 + np.float64(rc) - np.float64(bc))
        h_blue = np.float32(4.0 + np.float64(gc) - np.float64(rc))
        h = h_red if r == maxc else (h_green if g == maxc else h_blue)
        turns = np.float64(h) / 6.0 + 1.0  # in (0, 2): C's fmod(turns, 1) is turns - floor(turns)
        h = np.float32(turns - math.floor(turns))
        gray = maxc == minc
        hue = 0 if gray else min(max(np.int32(np.float64(h) * 255.0), 0), 255)
        sat = 0 if gray else min(max(np.int32(np.float64(s) * 255.0), 0), 255)
        hue = (hue + shift) & 255
        scaled = np.float64(hue) * 6.0 / 255.0
        sector = np.int32(math.floor(scaled))
        f = np.float32(scaled - np.float64(sector))
        fs = np.float32(np.float64(sat) / 255.0)
        v = np.float64(maxc)
        lo = min(max(np.int32(math.floor(v * (1.0 - np.float64(fs)) + 0.5)), 0), 255)
        falling = min(max(np.int32(math.floor(v * (1.0 - np.float64(fs * f)) + 0.5)), 0), 255)
        rising = min(max(np.int32(math.floor(
            v * (1.0 - np.float64(fs) * (1.0 - np.float64(f))) + 0.5)), 0), 255)
        sector = sector % 6
        red = maxc if (sector == 0 or sector == 5) else (
            falling if sector == 1 else (rising if sector == 4 else lo))
        green = rising if sector == 0 else (
            maxc if (sector == 1 or sector == 2) else (falling if sector == 3 else lo))
        blue = lo if (sector == 0 or sector == 1) else (
            rising if sector == 2 else (maxc if (sector == 3 or sector == 4) else falling))
        if sat == 0:
            red, green, blue = maxc, maxc, maxc
        flat[3 * p], flat[3 * p + 1], flat[3 * p + 2] = red, green, blue


@njit(nogil=True)
def hue_shift_levels(hue_factor: float) -> int:
    """torchvision's shift of Pillow's 8-bit H: ``int(hue_factor * 255)`` (towards 0), mod 256."""
    return int(hue_factor * 255.0) & 255


@njit(nogil=True)
def apply_table(image, table) -> None:
    """Map every level of ``image`` through the 256-entry ``table``, in place."""
    flat = image.reshape(-1)
    for k in range(flat.size):
        flat[k] = table[flat[k]]


@njit(nogil=True)
def mean_luma_level(image) -> int:
    """``int(mean + 0.5)`` of the Pillow "L" image (ImageEnhance.Contrast's degenerate level)."""
    pixels = image.reshape(-1, 3)
    total = 0
    for p in range(pixels.shape[0]):
        total += pil_luma(pixels[p, 0], pixels[p, 1], pixels[p, 2])
    return int(total / pixels.shape[0] + 0.5)


@njit(nogil=True, fastmath=False, error_model="numpy", inline="always")
def blend_level_float32(degenerate, value, alpha: np.float32) -> np.uint8:
    """:func:`blend_level` of float32 levels: the same float32 blend, with the clip as
    min / max (branch-free, so the loop vectorises) before the truncation to uint8."""
    t = degenerate + alpha * (value - degenerate)
    return np.uint8(min(max(t, np.float32(0.0)), np.float32(255.0)))


@njit(nogil=True, fastmath=False, error_model="numpy")
def saturate(image, factor: float) -> None:
    """``ImageEnhance.Color``: blend every pixel with its own Pillow luma, in place.

    All in float32 (levels, luma, blend), which is exact (:func:`pil_luma_float32`,
    :func:`blend_level_float32`) and lets numba vectorise the loop.
    """
    flat = image.reshape(-1)
    alpha = np.float32(factor)
    for p in range(flat.size // 3):
        r = np.float32(flat[3 * p])
        g = np.float32(flat[3 * p + 1])
        b = np.float32(flat[3 * p + 2])
        gray = pil_luma_float32(r, g, b)
        flat[3 * p] = blend_level_float32(gray, r, alpha)
        flat[3 * p + 1] = blend_level_float32(gray, g, alpha)
        flat[3 * p + 2] = blend_level_float32(gray, b, alpha)


@njit(nogil=True)
def active_parts(params) -> np.ndarray:
    """The parts to run, in order, from ``params`` = (b, c, s factors, hue factor, order x 4).

    NaN marks a disabled part; brightness, contrast and saturation factors of exactly 1 are
    skipped (blending with factor 1 is the identity), hue never (its round trip quantises).
    """
    parts = np.empty(4, dtype=np.int64)
    count = 0
    for k in range(4):
        part = int(params[4 + k])
        factor = params[part]
        if math.isnan(factor) or (part != HUE and factor == 1.0):
            continue
        parts[count] = part
        count += 1
    return parts[:count]


@njit(nogil=True)
def pointwise_augment(image, params, gray: bool, threshold: int, flip: bool) -> None:
    """Colour jitter, then grayscale, solarize and left-right flip of a C-contiguous uint8
    (H, W, 3) image, in place, equal to the reference's PIL ops one after the other.

    ``params``: brightness, contrast, saturation factors, hue factor (NaN: part disabled),
    then the four part ids in application order (an empty array: no jitter). ``threshold``
    256 disables solarize. One vectorised or table pass per part (contrast adds a read pass
    for the mean luma of the image it receives).
    """
    parts = active_parts(params) if params.size >= JITTER_PARAMS else np.empty(0, np.int64)
    for part in parts:
        if part == BRIGHTNESS:
            apply_table(image, blend_table(0, params[BRIGHTNESS]))
        elif part == CONTRAST:
            apply_table(image, blend_table(mean_luma_level(image), params[CONTRAST]))
        elif part == SATURATION:
            saturate(image, params[SATURATION])
        else:
            hue_rotate(image, hue_shift_levels(params[HUE]))
    if gray:
        to_grayscale(image)
    if threshold < 256:
        solarize(image, threshold)
    if flip:
        hflip(image)


@njit(nogil=True)
def color_jitter(image, params) -> None:
    """Jitter a C-contiguous uint8 (H, W, 3) image in place as the reference's PIL path.

    ``params``: brightness, contrast, saturation factors, hue factor (NaN: part disabled),
    then the four part ids (BRIGHTNESS, CONTRAST, SATURATION, HUE) in application order.
    """
    if active_parts(params).size > 0:
        pointwise_augment(image, params, False, 256, False)


@njit(nogil=True)
def jitter_draw(key: np.uint64, brightness: float, contrast: float, saturation: float,
                hue: float) -> np.ndarray:
    """The jitter parameters of stream ``key`` as torchvision's ``ColorJitter.get_params``.

    Factors ~ U(max(0, 1 - s), 1 + s) from counters 1-3 and the hue factor ~ U(-h, h) from
    counter 4 (NaN for a part of strength 0, which torchvision skips); the order is a
    uniformly random permutation of the four parts (Fisher-Yates, counters 5-7).
    """
    params = np.empty(JITTER_PARAMS, dtype=np.float64)
    strengths = (brightness, contrast, saturation)
    for part in range(3):
        s = strengths[part]
        params[part] = uniform_range(key, 1 + part, max(0.0, 1.0 - s), 1.0 + s) if s > 0 else np.nan
    params[HUE] = uniform_range(key, 4, -hue, hue) if hue > 0 else np.nan
    for k in range(4):
        params[4 + k] = k
    for k in range(3, 0, -1):
        j = min(int(uniform(key, 8 - k) * (k + 1)), k)
        params[4 + k], params[4 + j] = params[4 + j], params[4 + k]
    return params


class RandomColorJitterViews(ViewOperation):
    """torchvision-style ``ColorJitter`` applied to each view with its own probability (0.8).

    Parameters
    ----------
    brightness, contrast, saturation : strength ``s``: factor ~ U(max(0, 1 - s), 1 + s); 0 disables.
    hue : strength ``h`` in [0, 0.5]: hue factor ~ U(-h, h) turns; 0 disables.
    """

    stream = STREAM_COLOR_JITTER

    def __init__(self, probabilities: Sequence[float], seed: EpochSeed, brightness: float,
                 contrast: float, saturation: float, hue: float, first_view: int = 0):
        super().__init__(probabilities, seed, first_view)
        for name, value in (("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)):
            if not value >= 0:
                raise ValueError(f"color jitter {name} must be >= 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"color jitter hue must be in [0, 0.5], got {hue}")
        self.strengths = (float(brightness), float(contrast), float(saturation), float(hue))

    def view_draw(self) -> Callable:
        brightness, contrast, saturation, hue = self.strengths

        def draw(key):
            return jitter_draw(key, brightness, contrast, saturation, hue)
        return draw

    def view_kernel(self) -> Callable:
        def jitter_view(image, params):
            color_jitter(image, params)
        return jitter_view
