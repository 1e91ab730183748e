"""Colour jitter (brightness, contrast, saturation, hue) under one probability, in random order.

Semantics follow torchvision's ``ColorJitter`` on float tensors: each enabled part draws a
factor (brightness, contrast, saturation from ``U(max(0, 1 - s), 1 + s)``, hue shift from
``U(-h, h)``), the four parts run in a random order, and the image is clamped to its range
after every part. We work in float32 on the [0, 255] scale and round to uint8 once, at the
end (round half up). torchvision on a uint8 tensor instead truncates after every part, and
the reference's PIL path quantises hue to 256 steps, so results can differ from either by a
level or two; tests check agreement with torchvision's float path.

The ``adjust_*`` kernels take a float32 (H, W, 3) image on the [0, 255] scale and change it
in place; they are module level so tests can call them with fixed factors.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from numba import njit

from .grayscale import LUMA_B, LUMA_G, LUMA_R
from .rng import STREAM_COLOR_JITTER, EpochSeed, uniform, uniform_range
from .view_op import ViewOperation

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


_ZERO = np.float32(0.0)
_MAX = np.float32(255.0)
_LUMA = (np.float32(LUMA_R), np.float32(LUMA_G), np.float32(LUMA_B))

# The kernels loop over the flat (pixel-major) array with float32 constants so that numba
# vectorises them; 2-D indexing and float64 mixing made them 4-7x slower.


@njit(cache=True, nogil=True, fastmath=True)
def adjust_brightness(image, factor: float) -> None:
    """Blend with black: ``clamp(factor * x)``."""
    flat = image.reshape(-1)
    f = np.float32(factor)
    for k in range(flat.size):
        flat[k] = min(max(f * flat[k], _ZERO), _MAX)


@njit(cache=True, nogil=True, fastmath=True)
def adjust_contrast(image, factor: float) -> None:
    """Blend with the mean of the grayscale image: ``clamp(factor * x + (1 - factor) * mean)``."""
    flat = image.reshape(-1)
    pixels = flat.size // 3
    red, green, blue = 0.0, 0.0, 0.0
    for p in range(pixels):
        red += flat[3 * p]
        green += flat[3 * p + 1]
        blue += flat[3 * p + 2]
    mean = (LUMA_R * red + LUMA_G * green + LUMA_B * blue) / pixels
    offset = np.float32((1.0 - factor) * mean)
    f = np.float32(factor)
    for k in range(flat.size):
        flat[k] = min(max(f * flat[k] + offset, _ZERO), _MAX)


@njit(cache=True, nogil=True, fastmath=True)
def adjust_saturation(image, factor: float) -> None:
    """Blend each pixel with its own gray value: ``clamp(factor * x + (1 - factor) * gray)``."""
    flat = image.reshape(-1)
    f = np.float32(factor)
    g = np.float32(1.0 - factor)
    for p in range(flat.size // 3):
        gray = g * (_LUMA[0] * flat[3 * p] + _LUMA[1] * flat[3 * p + 1] + _LUMA[2] * flat[3 * p + 2])
        for c in range(3):
            flat[3 * p + c] = min(max(f * flat[3 * p + c] + gray, _ZERO), _MAX)


@njit(cache=True, nogil=True, fastmath=True)
def adjust_hue(image, shift: float) -> None:
    """Rotate the hue in HSV space by ``shift`` turns (``shift`` in [-0.5, 0.5]).

    RGB -> (hue in sixths of a turn, chroma, value) -> rotate -> RGB with the branch-free
    form ``channel_n = value - chroma * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + hue) mod 6``
    for n = 5, 3, 1 (red, green, blue); this equals the usual six-sector formula and is
    ~10x faster. Grays (chroma 0) stay unchanged, as in torchvision.
    """
    flat = image.reshape(-1)
    sixths_shift = np.float32(6.0 * shift)
    for p in range(flat.size // 3):
        r, g, b = flat[3 * p], flat[3 * p + 1], flat[3 * p + 2]
        value = max(r, max(g, b))
        chroma = value - min(r, min(g, b))
        inverse = np.float32(1.0) / max(chroma, np.float32(1e-20))
        if value == r:
            hue = (g - b) * inverse
        elif value == g:
            hue = np.float32(2.0) + (b - r) * inverse
        else:
            hue = np.float32(4.0) + (r - g) * inverse
        hue += sixths_shift
        hue -= np.float32(6.0) * np.floor(hue * np.float32(1.0 / 6.0))  # into [0, 6)
        for c in range(3):
            k = np.float32(5 - 2 * c) + hue
            if k >= 6.0:
                k -= np.float32(6.0)
            weight = min(max(min(k, np.float32(4.0) - k), np.float32(0.0)), np.float32(1.0))
            flat[3 * p + c] = min(max(value - chroma * weight, np.float32(0.0)), np.float32(255.0))


@njit(cache=True, nogil=True, fastmath=True)
def color_jitter(image, factors, order) -> None:
    """Jitter a uint8 (H, W, 3) image in place.

    ``factors``: brightness, contrast, saturation factors and hue shift; ``order``: the four
    part ids (BRIGHTNESS, CONTRAST, SATURATION, HUE) in the order to apply them. A factor of
    exactly 1 (0 for hue) skips its part.
    """
    flat_out = image.reshape(-1)
    work = np.empty(image.shape, dtype=np.float32)
    flat_in = work.reshape(-1)
    for k in range(flat_out.size):  # a plain loop: ~5x faster than astype here
        flat_in[k] = flat_out[k]
    for part in order:
        if part == BRIGHTNESS and factors[0] != 1.0:
            adjust_brightness(work, factors[0])
        elif part == CONTRAST and factors[1] != 1.0:
            adjust_contrast(work, factors[1])
        elif part == SATURATION and factors[2] != 1.0:
            adjust_saturation(work, factors[2])
        elif part == HUE and factors[3] != 0.0:
            adjust_hue(work, factors[3])
    for k in range(flat_out.size):
        flat_out[k] = np.uint8(flat_in[k] + np.float32(0.5))


class RandomColorJitterViews(ViewOperation):
    """torchvision-style ``ColorJitter`` applied to each view with its own probability (0.8).

    Parameters
    ----------
    brightness, contrast, saturation : strength ``s``: factor ~ U(max(0, 1 - s), 1 + s); 0 disables.
    hue : strength ``h`` in [0, 0.5]: shift ~ U(-h, h) turns; 0 disables.
    """

    stream = STREAM_COLOR_JITTER

    def __init__(self, probabilities: Sequence[float], seed: EpochSeed, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
                 first_view: int = 0):
        super().__init__(probabilities, seed, first_view)
        for name, value in (("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)):
            if not value >= 0:
                raise ValueError(f"color jitter {name} must be >= 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"color jitter hue must be in [0, 0.5], got {hue}")
        self.strengths = (float(brightness), float(contrast), float(saturation), float(hue))

    def view_kernel(self) -> Callable:
        brightness, contrast, saturation, hue = self.strengths

        def jitter_view(image, key):
            factors = np.empty(4, dtype=np.float64)
            factors[0] = uniform_range(key, 1, max(0.0, 1.0 - brightness), 1.0 + brightness)
            factors[1] = uniform_range(key, 2, max(0.0, 1.0 - contrast), 1.0 + contrast)
            factors[2] = uniform_range(key, 3, max(0.0, 1.0 - saturation), 1.0 + saturation)
            factors[3] = uniform_range(key, 4, -hue, hue)
            order = np.arange(4)
            for k in range(3, 0, -1):  # Fisher-Yates shuffle with draws 5, 6, 7
                j = min(int(uniform(key, 8 - k) * (k + 1)), k)
                order[k], order[j] = order[j], order[k]
            color_jitter(image, factors, order)
        return jitter_view
