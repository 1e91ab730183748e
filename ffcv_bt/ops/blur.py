"""Random Gaussian blur, per view, in place, computed as Pillow's ``GaussianBlur``.

The reference blurs PIL images with ``ImageFilter.GaussianBlur(sigma)``, sigma ~ U(0.1, 2).
Pillow does not convolve with a sampled Gaussian: it runs an *extended box blur*
(src/libImaging/BoxBlur.c in Pillow's repository, after Gwosdek et al., "Theoretical
foundations of Gaussian convolution by extended box filtering", SSVM 2011):

- the box radius ``r`` (a float) is chosen so that 3 box passes have variance sigma**2
  (``_gaussian_blur_radius``: ``L = sqrt(12 sigma**2 / 3 + 1)``, integer part
  ``l = floor((L - 1) / 2)``, plus a fractional part from the paper's eq. 14), in float32;
- one pass replaces each pixel by the mean of the ``2 floor(r) + 1`` pixels around it plus
  the two next pixels weighted by the fractional part, in 24-bit fixed point
  (``ww = 2**24 / (2 r + 1)`` truncated, ``fw = (2**24 - (2 floor(r) + 1) ww) / 2``), rounded
  to uint8 after every pass; pixels beyond the border repeat the edge pixel;
- 3 horizontal passes, then 3 vertical passes.

:func:`gaussian_blur` reproduces that bit for bit, with running sums: the cost per pixel
does not grow with sigma. All passes run down the rows of a 2-D array (the horizontal ones
on a transposed copy) so the inner loops are contiguous and vectorise.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
from numba import njit

from .rng import STREAM_BLUR, EpochSeed, uniform_range
from .view_op import ViewOperation

BOX_PASSES = 3  # Pillow's default for GaussianBlur
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)


@njit(cache=True, nogil=True)
def pil_box_radius(sigma: float, passes: int) -> np.float32:
    """Pillow's fractional box radius whose ``passes`` box passes approximate ``sigma``.

    float32 like Pillow's C code (sigma arrives there as a C float); the square root and
    the floor are taken in double, as there.
    """
    s = np.float32(sigma)
    sigma2 = s * s / np.float32(passes)
    length = np.float32(math.sqrt(12.0 * np.float64(sigma2) + 1.0))
    whole = np.float32(math.floor((np.float64(length) - 1.0) / 2.0))
    part = (_TWO * whole + _ONE) * (whole * (whole + _ONE) - np.float32(3.0) * sigma2)
    part = part / (np.float32(6.0) * (sigma2 - (whole + _ONE) * (whole + _ONE)))
    return whole + part


@njit(cache=True, nogil=True)
def box_weights(radius: np.float32):
    """(integer radius, weight of the inner pixels, weight of the two edge pixels), 2**24 = 1."""
    whole = int(radius)
    inner = np.int64(np.uint32(np.float32(16777216.0) / (radius * _TWO + _ONE)))
    edge = (np.int64(16777216) - np.int64(2 * whole + 1) * inner) // 2
    return whole, inner, edge


@njit(cache=True, nogil=True)
def box_pass_rows(src, dst, radius: int, inner: np.int64, edge: np.int64, threshold: int) -> None:
    """One box pass down the rows of ``src`` (H, L) uint8 into ``dst``, edges repeated.

    Row ``y`` of the result is ``(inner * sum(src[y - r .. y + r]) + edge * (src[y - r - 1]
    + src[y + r + 1]) + 2**23) >> 24`` with rows clamped to the image. Values at or above
    ``threshold`` are then inverted (``255 - v``, solarize; 256 disables), for free.
    """
    height, length = src.shape
    acc = np.empty(length, dtype=np.int64)
    first = src[0]
    for j in range(length):
        acc[j] = np.int64(first[j]) * (radius + 1)
    for k in range(radius):  # the running sum for row -1
        row = src[min(k, height - 1)]
        for j in range(length):
            acc[j] += row[j]
    half = np.int64(1 << 23)
    for y in range(height):
        add = src[min(y + radius, height - 1)]
        sub = src[max(y - radius - 1, 0)]
        far = src[min(y + radius + 1, height - 1)]
        out = dst[y]
        for j in range(length):
            total = acc[j] + np.int64(add[j]) - np.int64(sub[j])
            acc[j] = total
            value = (total * inner + (np.int64(sub[j]) + np.int64(far[j])) * edge + half) >> 24
            out[j] = np.uint8(255 - value if value >= threshold else value)


@njit(cache=True, nogil=True)
def transpose_pixels(src, dst, flip: bool) -> None:
    """``dst[x, y] = src[y, x]`` for (H, W, 3) ``src`` and (W, H, 3) ``dst``; with ``flip``,
    ``dst[x, y] = src[y, W - 1 - x]`` (a left-right mirror for free)."""
    height, width, channels = src.shape
    for x in range(width):
        column = width - 1 - x if flip else x
        out = dst[x]
        for y in range(height):
            for c in range(channels):
                out[y, c] = src[y, column, c]


@njit(cache=True, nogil=True)
def gaussian_blur(image, sigma: float, flip: bool = False, threshold: int = 256) -> None:
    """Blur an (H, W, 3) uint8 image in place exactly as Pillow's ``GaussianBlur(sigma)``.

    Optionally also mirrors it left-right (``flip``) and solarizes the result (values
    ``>= threshold`` inverted), both exact and folded into the passes. ``sigma <= 0`` leaves
    the pixels as they are (Pillow returns a copy for radius 0).
    """
    height, width, channels = image.shape
    if sigma <= 0.0 or height == 0 or width == 0:
        return
    radius = pil_box_radius(sigma, BOX_PASSES)
    whole, inner, edge = box_weights(radius)
    size = height * width * channels
    scratch_a = np.empty(size, dtype=np.uint8)
    scratch_b = np.empty(size, dtype=np.uint8)
    # Horizontal passes: down the rows of the transposed image (width rows of height pixels).
    columns_a = scratch_a.reshape(width, height * channels)
    columns_b = scratch_b.reshape(width, height * channels)
    transpose_pixels(image, scratch_a.reshape(width, height, channels), flip)
    box_pass_rows(columns_a, columns_b, whole, inner, edge, 256)
    box_pass_rows(columns_b, columns_a, whole, inner, edge, 256)
    box_pass_rows(columns_a, columns_b, whole, inner, edge, 256)
    transpose_pixels(scratch_b.reshape(width, height, channels), image, False)
    # Vertical passes: down the rows of the image.
    rows = image.reshape(height, width * channels)
    rows_a = scratch_a.reshape(height, width * channels)
    rows_b = scratch_b.reshape(height, width * channels)
    box_pass_rows(rows, rows_a, whole, inner, edge, 256)
    box_pass_rows(rows_a, rows_b, whole, inner, edge, 256)
    box_pass_rows(rows_b, rows, whole, inner, edge, threshold)


@njit(cache=True, nogil=True)
def blur_sigma(key: np.uint64, low: float, high: float) -> float:
    """The blur's sigma for stream ``key``: U(low, high) from counter 1 (counter 0 decides)."""
    return uniform_range(key, 1, low, high)


class RandomGaussianBlurViews(ViewOperation):
    """Gaussian-blur each view with its own probability (Barlow Twins: 1.0 and 0.1).

    Parameters
    ----------
    sigma_range : sigma ~ U(low, high) in pixels of the output (reference: 0.1 to 2.0).
    kernel_fraction : ignored, kept for callers of the earlier sampled-kernel blur (Pillow's
        box passes need no kernel size).
    """

    stream = STREAM_BLUR

    def __init__(self, probabilities: Sequence[float], seed: EpochSeed,
                 sigma_range: tuple[float, float], kernel_fraction: Optional[float] = None,
                 first_view: int = 0):
        super().__init__(probabilities, seed, first_view)
        low, high = sigma_range
        if not 0 < low <= high:
            raise ValueError(f"blur sigma_range must satisfy 0 < low <= high, got {sigma_range}")
        self.sigma_range = (float(low), float(high))

    def view_draw(self) -> Callable:
        low, high = self.sigma_range

        def draw(key):
            params = np.empty(1, dtype=np.float64)
            params[0] = blur_sigma(key, low, high)
            return params
        return draw

    def view_kernel(self) -> Callable:
        def blur_view(image, params):
            gaussian_blur(image, params[0], False, 256)
        return blur_view
