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

:func:`gaussian_blur` reproduces that bit for bit, in uint32 fixed point like Pillow. The
vertical passes keep running sums over whole rows; the horizontal passes sum a 1- or
3-pixel window directly for the recipe's sigmas (radius 0 or 1) and keep running sums
beyond, so the cost per pixel stays bounded for any sigma. Inner loops index contiguous
arrays with the loop counter only, so numba vectorises them.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ffcv_bt.augment.flip import hflip
from ffcv_bt.augment.jit import kernel
from ffcv_bt.augment.rng import STREAM_BLUR, EpochSeed, uniform_range
from ffcv_bt.augment.solarize import solarize
from ffcv_bt.augment.view_op import ViewOperation

BOX_PASSES = 3  # Pillow's default for GaussianBlur
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)


@kernel
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


@kernel
def box_weights(radius: np.float32):
    """(integer radius, weight of the inner pixels, weight of the two edge pixels), 2**24 = 1."""
    whole = int(radius)
    inner = np.int64(np.uint32(np.float32(16777216.0) / (radius * _TWO + _ONE)))
    edge = (np.int64(16777216) - np.int64(2 * whole + 1) * inner) // 2
    return whole, inner, edge


_U32 = np.uint32
_HALF = np.uint32(1 << 23)
_SHIFT = np.uint32(24)


@kernel(inline="always")
def _box_level(total, edges, inner, edge):
    """``(inner * total + edge * edges + 2**23) >> 24`` in uint32 (Pillow's ``SAVE``); the
    exact result is below 2**32, so the wrapping uint32 products give it exactly."""
    return np.uint8(_U32(_U32(_U32(total * inner) + _U32(edges * edge)) + _HALF) >> _SHIFT)


@kernel
def _pad_edges(padded, length: int, step: int, channels: int) -> None:
    """Fill the ``step`` bytes on each side of ``padded[step:step + length]`` with copies of
    its first and last pixel (Pillow repeats edge pixels)."""
    for k in range(0, step, channels):
        for c in range(channels):
            padded[k + c] = padded[step + c]
            padded[step + length + k + c] = padded[step + length - channels + c]


@kernel
def _pad_rows(lines, height: int, stride: int, length: int, step: int, channels: int) -> None:
    """:func:`_pad_edges` for ``height`` padded lines laid end to end, ``stride`` apart."""
    for y in range(height):
        start = y * stride + step
        end = start + length - channels
        for k in range(0, step, channels):
            for c in range(channels):
                lines[start - step + k + c] = lines[start + c]
                lines[end + channels + k + c] = lines[end + c]


@kernel
def _box_line(padded, out, length: int, radius: int, channels: int, inner, edge) -> None:
    """One box pass over a padded line (``radius + 1`` edge pixels each side) into ``out``.

    Every output reads shifted views of the line at the loop index, so numba vectorises the
    loop: a direct 1- or 3-pixel window for radius 0 and 1 (sigma up to about 2.4), a
    running sum per channel beyond (constant work per pixel for any radius).
    """
    step = (radius + 1) * channels
    left_far = padded[0:length]
    right_far = padded[2 * step:2 * step + length]
    middle = padded[step:step + length]
    if radius == 0:
        for j in range(length):
            out[j] = _box_level(_U32(middle[j]), _U32(_U32(left_far[j]) + _U32(right_far[j])),
                                inner, edge)
    elif radius == 1:
        left = padded[step - channels:step - channels + length]
        right = padded[step + channels:step + channels + length]
        for j in range(length):
            total = _U32(_U32(_U32(left[j]) + _U32(middle[j])) + _U32(right[j]))
            out[j] = _box_level(total, _U32(_U32(left_far[j]) + _U32(right_far[j])), inner, edge)
    else:
        for c in range(channels):
            total = _U32(0)
            for k in range(-radius, radius + 1):
                total = _U32(total + _U32(padded[step + c + k * channels]))
            for j in range(c, length, channels):
                out[j] = _box_level(total, _U32(_U32(left_far[j]) + _U32(right_far[j])), inner, edge)
                # slide the window by one pixel: add its new right end, drop its left end
                total = _U32(_U32(total + _U32(padded[j + 2 * step])) - _U32(padded[j + channels]))


@kernel
def box_passes_horizontal(rows, radius: int, inner, edge, channels: int, passes: int):
    """``passes`` box passes along each row of ``rows`` (H, W * C) uint8.

    The rows are laid end to end in a buffer, each with ``radius + 1`` copies of its edge
    pixels on both sides (Pillow repeats edge pixels), so one pass is one long vectorised
    loop over the whole buffer; the outputs that land in the padding are discarded and the
    padding refilled before the next pass. Returns ``(result, spare, offset, stride)``: row
    ``y`` of the result is ``result[offset + y * stride:][:W * C]``; ``spare`` is a free
    buffer of the same size.
    """
    height, length = rows.shape
    inner, edge = _U32(inner), _U32(edge)
    step = (radius + 1) * channels
    stride = length + 2 * step
    size = height * stride
    source = np.empty(size, dtype=np.uint8)
    target = np.empty(size, dtype=np.uint8)
    for y in range(height):
        row = rows[y]
        line = source[y * stride + step:y * stride + step + length]
        for j in range(length):
            line[j] = row[j]
    for _ in range(passes):
        _pad_rows(source, height, stride, length, step, channels)
        if radius <= 1:
            _box_line(source, target[step:size - step], size - 2 * step, radius, channels,
                      inner, edge)
        else:
            for y in range(height):
                _box_line(source[y * stride:(y + 1) * stride],
                          target[y * stride + step:y * stride + step + length], length, radius,
                          channels, inner, edge)
        source, target = target, source
    return source, target, step, stride


@kernel
def box_pass_vertical(src, src_offset: int, src_stride: int, dst, dst_offset: int,
                      dst_stride: int, height: int, length: int, radius: int, inner, edge,
                      threshold: int) -> None:
    """One box pass down ``height`` rows of ``length`` uint8 values, edge rows repeated.

    Row ``y`` of the flat ``src`` starts at ``src_offset + y * src_stride`` (likewise for
    ``dst``). Output row ``y`` is ``(inner * sum(rows y - r .. y + r) + edge * (row y - r - 1
    + row y + r + 1) + 2**23) >> 24`` with row indices clamped to the image, by a running
    sum over whole rows (vectorised). Values at or above ``threshold`` are then inverted
    (``255 - v``: solarize for free; 256 disables).
    """
    inner, edge = _U32(inner), _U32(edge)
    acc = np.empty(length, dtype=np.uint32)
    first = src[src_offset:src_offset + length]
    for j in range(length):
        acc[j] = _U32(_U32(first[j]) * _U32(radius + 1))
    for k in range(radius):  # the running sum for row -1
        start = src_offset + min(k, height - 1) * src_stride
        row = src[start:start + length]
        for j in range(length):
            acc[j] = _U32(acc[j] + _U32(row[j]))
    top = _U32(threshold)
    for y in range(height):
        start = src_offset + min(y + radius, height - 1) * src_stride
        add = src[start:start + length]
        start = src_offset + max(y - radius - 1, 0) * src_stride
        sub = src[start:start + length]
        start = src_offset + min(y + radius + 1, height - 1) * src_stride
        far = src[start:start + length]
        out = dst[dst_offset + y * dst_stride:dst_offset + y * dst_stride + length]
        for j in range(length):
            total = _U32(_U32(acc[j] + _U32(add[j])) - _U32(sub[j]))
            acc[j] = total
            value = _box_level(total, _U32(_U32(sub[j]) + _U32(far[j])), inner, edge)
            out[j] = np.uint8(255 - value) if value >= top else value


@kernel
def gaussian_blur(image, sigma: float, flip: bool = False, threshold: int = 256) -> None:
    """Blur an (H, W, 3) uint8 image in place exactly as Pillow's ``GaussianBlur(sigma)``.

    Optionally also mirrors it left-right (``flip``; the blur is mirror-symmetric, so the
    order does not matter) and solarizes the result (values ``>= threshold`` inverted, in
    the last pass). ``sigma <= 0`` only flips/solarizes (Pillow returns a copy for radius 0).
    """
    height, width, channels = image.shape
    if height == 0 or width == 0:
        return
    if flip:
        hflip(image)
    if sigma <= 0.0:
        if threshold < 256:
            solarize(image, threshold)
        return
    radius = pil_box_radius(sigma, BOX_PASSES)
    whole, inner, edge = box_weights(radius)
    length = width * channels
    result, spare, offset, stride = box_passes_horizontal(
        image.reshape(height, length), whole, inner, edge, channels, BOX_PASSES)
    box_pass_vertical(result, offset, stride, spare, 0, length, height, length, whole, inner,
                      edge, 256)
    box_pass_vertical(spare, 0, length, result, 0, length, height, length, whole, inner,
                      edge, 256)
    box_pass_vertical(result, 0, length, image.reshape(-1), 0, length, height, length, whole,
                      inner, edge, threshold)


@kernel
def blur_sigma(key: np.uint64, low: float, high: float) -> float:
    """The blur's sigma for stream ``key``: U(low, high) from counter 1 (counter 0 decides)."""
    return uniform_range(key, 1, low, high)


class RandomGaussianBlurViews(ViewOperation):
    """Gaussian-blur each view with its own probability (Barlow Twins: 1.0 and 0.1).

    Parameters
    ----------
    sigma_range : sigma ~ U(low, high) in pixels of the output (reference: 0.1 to 2.0).
    """

    stream = STREAM_BLUR

    def __init__(self, probabilities: Sequence[float], seed: EpochSeed,
                 sigma_range: tuple[float, float], first_view: int = 0):
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
