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
so results match Pillow bit for bit (checked in tests/test_fidelity.py). One view is
jittered in at most two passes over its pixels (:func:`pointwise_augment`, which also folds
in grayscale, solarize and flip for the fused op): contrast needs the mean luma of the
image it receives, so the parts before it run in a first pass that also sums the luma, and
contrast and the parts after it in a second pass. Brightness and contrast are 256-entry
tables; no temporary image is made.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from numba import njit

from .grayscale import pil_luma
from .rng import STREAM_COLOR_JITTER, EpochSeed, uniform, uniform_range
from .view_op import ViewOperation

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
JITTER_PARAMS = 8  # brightness, contrast, saturation factors, hue shift, then the order (4)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def blend_level(degenerate, value, alpha: np.float32) -> int:
    """Pillow's ``Image.blend`` on one level: ``degenerate + alpha * (value - degenerate)``
    in float32, clipped to [0, 255], truncated."""
    t = np.float32(degenerate) + alpha * np.float32(np.int32(value) - np.int32(degenerate))
    if t <= np.float32(0.0):
        return 0
    if t >= np.float32(255.0):
        return 255
    return int(t)


@njit(cache=True, nogil=True)
def blend_table(degenerate: int, factor: float) -> np.ndarray:
    """``blend_level(degenerate, v, factor)`` for v = 0..255 (brightness: degenerate 0)."""
    table = np.empty(256, dtype=np.uint8)
    alpha = np.float32(factor)
    for v in range(256):
        table[v] = blend_level(degenerate, v, alpha)
    return table


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def pil_rgb_to_hsv(r, g, b):
    """Pillow's 8-bit RGB -> HSV of one pixel (Convert.c ``rgb2hsv_row``: float32 ratios,
    double for the sector offset and the wrap, truncation to 8 bits)."""
    maxc = max(r, max(g, b))
    minc = min(r, min(g, b))
    if maxc == minc:
        return 0, 0, int(maxc)
    chroma = np.float32(np.int32(maxc) - np.int32(minc))
    s = chroma / np.float32(maxc)
    rc = np.float32(np.int32(maxc) - np.int32(r)) / chroma
    gc = np.float32(np.int32(maxc) - np.int32(g)) / chroma
    bc = np.float32(np.int32(maxc) - np.int32(b)) / chroma
    if r == maxc:
        h = bc - gc
    elif g == maxc:
        h = np.float32(2.0 + np.float64(rc) - np.float64(bc))
    else:
        h = np.float32(4.0 + np.float64(gc) - np.float64(rc))
    turns = np.float64(h) / 6.0 + 1.0  # in (0, 2): fmod(turns, 1) is exactly turns - floor(turns)
    h = np.float32(turns - math.floor(turns))
    hue = min(max(int(np.float64(h) * 255.0), 0), 255)
    saturation = min(max(int(np.float64(s) * 255.0), 0), 255)
    return hue, saturation, int(maxc)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _round_clip(x: float) -> int:
    """C's ``round`` (half away from zero) of a non-negative value, clipped to 0..255."""
    return min(max(int(math.floor(x + 0.5)), 0), 255)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def pil_hsv_to_rgb(h, s, v):
    """Pillow's 8-bit HSV -> RGB of one pixel (Convert.c ``hsv2rgb``)."""
    if s == 0:
        return int(v), int(v), int(v)
    sector = int(math.floor(np.float64(h) * 6.0 / 255.0))
    f = np.float32(np.float64(h) * 6.0 / 255.0 - np.float64(sector))
    fs = np.float32(np.float64(s) / 255.0)
    value = np.float64(v)
    p = _round_clip(value * (1.0 - np.float64(fs)))
    q = _round_clip(value * (1.0 - np.float64(fs * f)))
    t = _round_clip(value * (1.0 - np.float64(fs) * (1.0 - np.float64(f))))
    sector = sector % 6
    if sector == 0:
        return int(v), t, p
    if sector == 1:
        return q, int(v), p
    if sector == 2:
        return p, int(v), t
    if sector == 3:
        return p, q, int(v)
    if sector == 4:
        return t, p, int(v)
    return int(v), p, q


@njit(cache=True, nogil=True)
def hue_shift_levels(hue_factor: float) -> int:
    """torchvision's shift of Pillow's 8-bit H: ``int(hue_factor * 255)`` (towards 0), mod 256."""
    return int(hue_factor * 255.0) & 255


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def jitter_pixel(r, g, b, parts, start: int, stop: int, brightness_table, contrast_table,
                 saturation: np.float32, hue_shift: int):
    """Apply ``parts[start:stop]`` to one pixel (ints 0..255) and return it."""
    for k in range(start, stop):
        part = parts[k]
        if part == BRIGHTNESS:
            r, g, b = int(brightness_table[r]), int(brightness_table[g]), int(brightness_table[b])
        elif part == CONTRAST:
            r, g, b = int(contrast_table[r]), int(contrast_table[g]), int(contrast_table[b])
        elif part == SATURATION:
            gray = pil_luma(r, g, b)
            r, g, b = (blend_level(gray, r, saturation), blend_level(gray, g, saturation),
                       blend_level(gray, b, saturation))
        else:
            h, s, v = pil_rgb_to_hsv(r, g, b)
            r, g, b = pil_hsv_to_rgb((h + hue_shift) & 255, s, v)
    return r, g, b


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def finish_pixel(r, g, b, parts, start: int, stop: int, brightness_table, contrast_table,
                 saturation: np.float32, hue_shift: int, gray: bool, threshold: int):
    """Jitter parts ``start:stop``, then grayscale (Pillow luma) and solarize (``>= threshold``
    inverted; 256 disables) of one pixel, in the reference's order."""
    r, g, b = jitter_pixel(r, g, b, parts, start, stop, brightness_table, contrast_table,
                           saturation, hue_shift)
    if gray:
        r = pil_luma(r, g, b)
        g = r
        b = r
    if threshold < 256:
        r = 255 - r if r >= threshold else r
        g = 255 - g if g >= threshold else g
        b = 255 - b if b >= threshold else b
    return r, g, b


@njit(cache=True, nogil=True, error_model="numpy")
def pointwise_augment(image, params, gray: bool, threshold: int, flip: bool) -> None:
    """Colour jitter, grayscale, solarize and left-right flip of a C-contiguous uint8
    (H, W, 3) image, in place, in one pass over its pixels (two when contrast runs after
    another part: contrast needs the mean luma of the image it receives).

    ``params``: brightness, contrast, saturation factors, hue factor (NaN: part disabled),
    then the four part ids in application order; ``params[4:]`` may be omitted (size 0:
    no jitter). ``threshold`` 256 disables solarize. The result equals running the
    reference's PIL ops one after the other (the flip commutes with every pixel-wise op).
    """
    height, width, _ = image.shape
    pixels = image.reshape(-1, 3)
    count = pixels.shape[0]
    if params.size >= JITTER_PARAMS:
        parts = active_parts(params)
        brightness = params[BRIGHTNESS]
        saturation = np.float32(params[SATURATION])
        hue_shift = hue_shift_levels(params[HUE]) if not math.isnan(params[HUE]) else 0
    else:
        parts = np.empty(0, dtype=np.int64)
        brightness = 1.0
        saturation = np.float32(1.0)
        hue_shift = 0
    brightness_table = blend_table(0, 1.0 if math.isnan(brightness) else brightness)
    contrast_table = brightness_table
    split = 0  # parts[:split] run in a first pass that also sums the luma for contrast
    for k in range(parts.size):
        if parts[k] == CONTRAST:
            split = k
            luma_sum = 0
            for p in range(count):
                r, g, b = jitter_pixel(pixels[p, 0], pixels[p, 1], pixels[p, 2], parts, 0, k,
                                       brightness_table, contrast_table, saturation, hue_shift)
                if k > 0:
                    pixels[p, 0], pixels[p, 1], pixels[p, 2] = r, g, b
                luma_sum += pil_luma(r, g, b)
            mean = int(luma_sum / count + 0.5)  # ImageStat's mean, rounded as ImageEnhance.Contrast
            contrast_table = blend_table(mean, params[CONTRAST])
    stop = parts.size
    if not flip:
        for p in range(count):
            r, g, b = finish_pixel(pixels[p, 0], pixels[p, 1], pixels[p, 2], parts, split, stop,
                                   brightness_table, contrast_table, saturation, hue_shift,
                                   gray, threshold)
            pixels[p, 0], pixels[p, 1], pixels[p, 2] = r, g, b
        return
    for y in range(height):
        row = pixels[y * width:(y + 1) * width]
        for x in range((width + 1) // 2):
            mirror = width - 1 - x
            r, g, b = finish_pixel(row[x, 0], row[x, 1], row[x, 2], parts, split, stop,
                                   brightness_table, contrast_table, saturation, hue_shift,
                                   gray, threshold)
            r2, g2, b2 = finish_pixel(row[mirror, 0], row[mirror, 1], row[mirror, 2], parts,
                                      split, stop, brightness_table, contrast_table, saturation,
                                      hue_shift, gray, threshold)
            row[x, 0], row[x, 1], row[x, 2] = r2, g2, b2
            row[mirror, 0], row[mirror, 1], row[mirror, 2] = r, g, b


@njit(cache=True, nogil=True)
def color_jitter(image, params) -> None:
    """Jitter a C-contiguous uint8 (H, W, 3) image in place as the reference's PIL path.

    ``params``: brightness, contrast, saturation factors, hue factor (NaN: part disabled),
    then the four part ids (BRIGHTNESS, CONTRAST, SATURATION, HUE) in application order.
    """
    if active_parts(params).size > 0:
        pointwise_augment(image, params, False, 256, False)


@njit(cache=True, nogil=True)
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
