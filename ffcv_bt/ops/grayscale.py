"""Random grayscale conversion, per view, in place."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from numba import njit

from .rng import STREAM_GRAYSCALE, EpochSeed
from .view_op import ViewOperation

# ITU-R BT.601 luma weights, as PIL's "L" mode (torchvision uses 0.2989 for red).
LUMA_R, LUMA_G, LUMA_B = 0.299, 0.587, 0.114


@njit(cache=True, nogil=True, fastmath=True)
def to_grayscale(image) -> None:
    """Replace each pixel of an (H, W, 3) uint8 image by its 601 luma, rounded, on all 3 channels."""
    height, width, _ = image.shape
    for y in range(height):
        for x in range(width):
            luma = (LUMA_R * np.float32(image[y, x, 0]) + LUMA_G * np.float32(image[y, x, 1])
                    + LUMA_B * np.float32(image[y, x, 2]))
            value = np.uint8(min(luma + 0.5, 255.0))
            image[y, x, 0] = value
            image[y, x, 1] = value
            image[y, x, 2] = value


class RandomGrayscaleViews(ViewOperation):
    """Convert each view to grayscale (kept as 3 equal channels) with its own probability (0.2)."""

    stream = STREAM_GRAYSCALE

    def __init__(self, probabilities: Sequence[float], seed: EpochSeed, first_view: int = 0):
        super().__init__(probabilities, seed, first_view)

    def view_kernel(self) -> Callable:
        def grayscale_view(image, key):
            to_grayscale(image)
        return grayscale_view
