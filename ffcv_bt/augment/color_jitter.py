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
  (:func:`ffcv_bt.augment.grayscale.pil_luma_float32`).
- hue: Pillow's RGB -> HSV conversion (8-bit H, S, V), ``H += int(hue_factor * 255)``
  wrapping modulo 256, HSV -> RGB. The round trip itself quantises, so it runs even when
  the shift is 0.
- the four parts run in a uniformly random order (torchvision draws a permutation of 4).

Results match Pillow bit for bit (tests/augment/test_fidelity.py; tests/augment/test_ops.py checks hue and
saturation on every one of the 2^24 colours). Each part is one pass over the view, in place
(no temporary image): brightness and contrast blend with a constant level (contrast first
reads the mean luma of the image it receives); all parts are per-pixel loops in float32 only
(every level, luma and HSV byte is a small integer held exactly), with selects instead of
branches, which numba vectorises over the interleaved pixels (float64 lanes, int64 lanes or
table lookups inside the loop measured 3-6x slower: numba does not vectorise the lookups).
Saturation is Pillow's own float32 blend; hue replaces Pillow's float / double steps by
float32 ones that are not a general identity but give Pillow's bytes on every input
(:func:`pil_hue_saturation`, :func:`pil_hsv_to_rgb`). The kernels set ``fastmath=False``:
FFCV compiles its pipelines with fastmath, which numba would otherwise pass on to them.
(One fused per-pixel loop over all parts measured slower: its branches keep the hue
arithmetic from vectorising.)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ffcv_bt.augment.flip import hflip
from ffcv_bt.augment.grayscale import pil_luma_float32, to_grayscale
from ffcv_bt.augment.jit import kernel
from ffcv_bt.augment.rng import STREAM_COLOR_JITTER, EpochSeed, uniform, uniform_range
from ffcv_bt.augment.solarize import solarize
from ffcv_bt.augment.view_op import ViewOperation

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
JITTER_PARAMS = 8  # brightness, contrast, saturation factors, hue shift, then the order (4)


@kernel(inline="always")
def pil_hue_saturation(r, g, b):
    """Pillow's 8-bit H and S of one pixel (float32 levels ``r, g, b``), as float32 levels.

    Pillow (src/libImaging/Convert.c ``rgb2hsv_row``): ``maxc``, ``minc``, chroma ``c``;
    ``S = uint8(float(c / maxc) * 255)``; float32 ratios ``rc, gc, bc = (maxc - x) / c``;
    ``h = bc - gc`` (red max), ``2 + rc - bc`` (green), ``4 + gc - rc`` (blue), the last two
    summed in double and stored to float; ``h = fmod(h / 6 + 1, 1)`` in double, stored to
    float; ``H = uint8(h * 255)`` in double; H = S = 0 for gray pixels.

    The same bytes, in float32 only so that the loop vectorises: of the two ratios in ``h``
    one is exactly 0 or 1 (the min or max channel), so ``h = offset +- q`` with the one
    quotient ``q = (maxc - mid) / c``, rounded once as Pillow's sum is; then ``h / 6`` (+ 1
    when negative) and ``* 255`` in float32. These float32 steps are not a general identity
    with Pillow's double ones, but give Pillow's H and S for every one of the 2^24 colours
    (checked against Pillow in tests/augment/test_ops.py). A gray pixel gets S = 0 from its zero
    chroma; its H is then unused (S = 0 maps back to gray whatever H is).
    """
    one = np.float32(1.0)
    maxc = max(r, max(g, b))
    minc = min(r, min(g, b))
    mid = r + g + b - maxc - minc
    q = (maxc - mid) / max(maxc - minc, one)
    if r == maxc:
        h = q - one if g == minc else one - q
    elif g == maxc:
        h = np.float32(3.0) - q if r == minc else one + q
    else:
        h = np.float32(3.0) + q if r == minc else np.float32(5.0) - q
    turns = h / np.float32(6.0)
    if h < np.float32(0.0):
        turns += one
    hue = np.float32(np.int32(turns * np.float32(255.0)))
    saturation = np.float32(np.int32((maxc - minc) / max(maxc, one) * np.float32(255.0)))
    return hue, saturation


@kernel(inline="always")
def pil_hsv_to_rgb(hue, saturation, value):
    """Pillow's RGB levels of one 8-bit HSV pixel (float32 levels in, float32 levels out).

    Pillow (src/libImaging/Convert.c ``hsv2rgb``), in float and double: sector
    ``i = floor(H * 6 / 255)``, ``f = H * 6 / 255 - i``, ``fs = S / 255``; ``lo = round(V *
    (1 - fs))``, ``falling = round(V * (1 - fs * f))``, ``rising = round(V * (1 - fs *
    (1 - f)))`` (C ``round``); sector i gives (R, G, B) = (V, rising, lo), (falling, V, lo),
    (lo, V, rising), (lo, falling, V), (rising, lo, V), (V, lo, falling); sector 6 (H = 255)
    is sector 0 with f = 0.

    The same levels in float32 with reciprocal products: 6 H / 255 is an integer or at
    least 1/255 from one, so ``+ 1e-3`` before truncation gives Pillow's sector exactly;
    the rest gives Pillow's levels for every one of the 2^24 (H, S, V) (checked against
    Pillow in tests/augment/test_ops.py). Only one of rising / falling is needed per sector
    (``middle``), and the channel roles follow from the sector's distance to the red and
    blue "lo" sectors (2.5 and 3.5) and green's "V" sectors (1.5).
    """
    one = np.float32(1.0)
    half = np.float32(0.5)
    scaled = hue * np.float32(6.0)
    sector = np.float32(np.int32(scaled * np.float32(1.0 / 255.0) + np.float32(1e-3)))
    f = (scaled - np.float32(255.0) * sector) / np.float32(255.0)
    fs = saturation * np.float32(1.0 / 255.0)
    falling = sector == np.float32(1.0) or sector == np.float32(3.0) or sector == np.float32(5.0)
    lo = np.float32(np.int32(value * (one - fs) + half))
    middle = np.float32(np.int32(value * (one - fs * (f if falling else one - f)) + half))
    to_red = abs(sector - np.float32(2.5))  # 0.5: lo, 1.5: middle, >= 2.5: V
    to_blue = abs(sector - np.float32(3.5))  # 0.5: V, 1.5: middle, >= 2.5: lo
    red = lo if to_red < one else (middle if to_red < np.float32(2.0) else value)
    blue = value if to_blue < one else (middle if to_blue < np.float32(2.0) else lo)
    if abs(sector - np.float32(1.5)) < one:  # sectors 1, 2
        green = value
    elif abs(sector - np.float32(4.5)) < one:  # sectors 4, 5
        green = lo
    else:  # sectors 0, 3, 6
        green = middle
    return red, green, blue


@kernel
def hue_rotate(image, shift: int) -> None:
    """Pillow's RGB -> HSV, ``H += shift`` (mod 256), HSV -> RGB, of every pixel in place.

    Bit-exact to Pillow (see :func:`pil_hue_saturation` and :func:`pil_hsv_to_rgb`); all
    levels are small integers held in float32, and the loop has no float64 and no
    branches left after if-conversion, so numba vectorises it over the interleaved pixels.
    """
    flat = image.reshape(-1)
    turn = np.float32(256.0)
    offset = np.float32(shift & 255)
    for p in range(flat.size // 3):
        r = np.float32(flat[3 * p])
        g = np.float32(flat[3 * p + 1])
        b = np.float32(flat[3 * p + 2])
        hue, saturation = pil_hue_saturation(r, g, b)
        hue += offset
        if hue >= turn:
            hue -= turn
        red, green, blue = pil_hsv_to_rgb(hue, saturation, max(r, max(g, b)))
        flat[3 * p] = np.uint8(red)
        flat[3 * p + 1] = np.uint8(green)
        flat[3 * p + 2] = np.uint8(blue)


@kernel
def hue_shift_levels(hue_factor: float) -> int:
    """torchvision's shift of Pillow's 8-bit H: ``int(hue_factor * 255)`` (towards 0), mod 256."""
    return int(hue_factor * 255.0) & 255


@kernel
def mean_luma_level(image) -> int:
    """``int(mean + 0.5)`` of the Pillow "L" image (ImageEnhance.Contrast's degenerate level).

    float32 lumas (exact, :func:`pil_luma_float32`) summed as integers, so the loop
    vectorises without reordering any float sum.
    """
    flat = image.reshape(-1)
    pixels = flat.size // 3
    total = 0
    for p in range(pixels):
        total += np.int64(pil_luma_float32(np.float32(flat[3 * p]), np.float32(flat[3 * p + 1]),
                                           np.float32(flat[3 * p + 2])))
    return int(total / pixels + 0.5)


@kernel(inline="always")
def blend_level_float32(degenerate, value, alpha: np.float32) -> np.uint8:
    """Pillow's ``Image.blend`` on one level: ``degenerate + alpha * (value - degenerate)``
    in float32 (levels held as float32), clipped to [0, 255] as min / max (branch-free, so
    the loop vectorises), truncated to uint8."""
    t = degenerate + alpha * (value - degenerate)
    return np.uint8(min(max(t, np.float32(0.0)), np.float32(255.0)))


@kernel
def blend_with_level(image, degenerate: int, factor: float) -> None:
    """``Image.blend`` of every value with the constant ``degenerate`` level, in place:
    brightness (black, 0) and contrast (the mean luma). float32 and vectorised
    (:func:`blend_level_float32`; 4x faster than a 256-entry table lookup)."""
    flat = image.reshape(-1)
    alpha = np.float32(factor)
    level = np.float32(degenerate)
    for k in range(flat.size):
        flat[k] = blend_level_float32(level, np.float32(flat[k]), alpha)


@kernel
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


@kernel
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


@kernel
def pointwise_augment(image, params, gray: bool, threshold: int, flip: bool) -> None:
    """Colour jitter, then grayscale, solarize and left-right flip of a C-contiguous uint8
    (H, W, 3) image, in place, equal to the reference's PIL ops one after the other.

    ``params``: brightness, contrast, saturation factors, hue factor (NaN: part disabled),
    then the four part ids in application order (an empty array: no jitter). ``threshold``
    256 disables solarize. One vectorised pass per part (contrast adds a read pass for the
    mean luma of the image it receives).
    """
    parts = active_parts(params) if params.size >= JITTER_PARAMS else np.empty(0, np.int64)
    for part in parts:
        if part == BRIGHTNESS:
            blend_with_level(image, 0, params[BRIGHTNESS])
        elif part == CONTRAST:
            blend_with_level(image, mean_luma_level(image), params[CONTRAST])
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


@kernel
def color_jitter(image, params) -> None:
    """Jitter a C-contiguous uint8 (H, W, 3) image in place as the reference's PIL path.

    ``params``: brightness, contrast, saturation factors, hue factor (NaN: part disabled),
    then the four part ids (BRIGHTNESS, CONTRAST, SATURATION, HUE) in application order.
    """
    if active_parts(params).size > 0:
        pointwise_augment(image, params, False, 256, False)


@kernel
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
