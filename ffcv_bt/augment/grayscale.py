"""Random grayscale conversion, per view, in place.

The reference converts PIL images with ``img.convert("L")`` (torchvision's
``rgb_to_grayscale`` on PIL images) and stacks the result into 3 channels. Pillow's "L"
conversion is ITU-R 601-2 luma in 16-bit fixed point, ``L = (19595 R + 38470 G + 7471 B
+ 0x8000) >> 16`` (Pillow's src/libImaging/Convert.c, ``L24``; the weights are 0.299,
0.587, 0.114 times 65536), which :func:`pil_luma_float32` reproduces exactly.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ffcv_bt.augment.jit import kernel
from ffcv_bt.augment.rng import STREAM_GRAYSCALE, EpochSeed
from ffcv_bt.augment.view_op import ViewOperation

# ITU-R BT.601 luma weights, as PIL's "L" mode (torchvision's tensor path uses 0.2989 for red).
LUMA_R, LUMA_G, LUMA_B = 0.299, 0.587, 0.114


@kernel(inline="always")
def pil_luma_float32(r, g, b):
    """Pillow's "L" of one pixel of float32 levels, as a float32 level (for float32 loops
    that vectorise): ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``.

    Exact: every product and partial sum of the fixed-point formula is an integer below
    2^24 (the total is at most 65536 * 255 + 0x8000), so float32 holds it exactly, and
    ``>> 16`` is the floor of an exact multiplication by 2^-16.
    """
    total = (np.float32(19595.0) * r + np.float32(38470.0) * g + np.float32(7471.0) * b
             + np.float32(32768.0))
    return np.float32(math.floor(total * np.float32(1.0 / 65536.0)))


@kernel
def to_grayscale(image) -> None:
    """Replace each pixel of a C-contiguous (H, W, 3) uint8 image by its Pillow luma, on all
    3 channels (float32 luma, exact and vectorised: :func:`pil_luma_float32`)."""
    flat = image.reshape(-1)
    for p in range(flat.size // 3):
        value = np.uint8(pil_luma_float32(np.float32(flat[3 * p]), np.float32(flat[3 * p + 1]),
                                          np.float32(flat[3 * p + 2])))
        flat[3 * p] = value
        flat[3 * p + 1] = value
        flat[3 * p + 2] = value


class RandomGrayscaleViews(ViewOperation):
    """Convert each view to grayscale (kept as 3 equal channels) with its own probability (0.2)."""

    stream = STREAM_GRAYSCALE

    def __init__(self, probabilities: Sequence[float], seed: EpochSeed, first_view: int = 0):
        super().__init__(probabilities, seed, first_view)

    def view_kernel(self) -> Callable:
        def grayscale_view(image, params):
            to_grayscale(image)
        return grayscale_view
