"""Base class for the per-view augmentations of a ``(B, V, H, W, 3)`` uint8 batch.

The two-view decoder stores both crops of a sample side by side, so one op call handles
both views, each with its own probability (view 1 and view 2 of Barlow Twins differ in
blur and solarize). An op decides for each ``(sample, view)`` whether to apply with the
first number of its random stream, and its parameters come from the following numbers of
that stream (see :mod:`ffcv_bt.ops.rng`). Ops work in place: the batch is the decoder's
buffer for this batch slot, so no extra copy is needed.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from .rng import EpochSeed, read_seed_epoch, stream_key, uniform


def check_probabilities(name: str, probabilities: Sequence[float]) -> np.ndarray:
    """Per-view probabilities as a float64 array; a clear error if one is outside [0, 1]."""
    values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if values.size == 0 or np.any(values < 0) or np.any(values > 1) or np.any(np.isnan(values)):
        raise ValueError(f"{name}: probabilities must be in [0, 1] (one per view), got {probabilities}")
    return values


class ViewOperation(Operation):
    """Apply ``view_kernel`` in place to each view of each sample with a per-view probability.

    Parameters
    ----------
    probabilities : one probability per view of the incoming batch.
    seed : the loader's :class:`EpochSeed` (seed and current epoch).
    first_view : view number of the first view in this batch, for the random keys. It is 1
        for the second pipeline of the decode-twice layout, so both layouts draw the same
        numbers for the same view.
    """

    stream: int = -1  # random stream id, one per op type (see rng.STREAM_*)

    def __init__(self, probabilities: Sequence[float], seed: EpochSeed, first_view: int = 0):
        super().__init__()
        self.probabilities = check_probabilities(type(self).__name__, probabilities)
        self.seed = seed
        self.first_view = int(first_view)

    @abstractmethod
    def view_kernel(self) -> Callable:
        """A function ``kernel(image, key)`` transforming one (H, W, 3) uint8 view in place.

        ``key`` is the view's random stream; draw parameters with counters >= 1
        (counter 0 decided whether to apply).
        """

    def generate_code(self) -> Callable:
        kernel = Compiler.compile(self.view_kernel())
        read_seed = Compiler.compile(read_seed_epoch)
        my_range = Compiler.get_iterator()
        probabilities = self.probabilities
        first_view = self.first_view
        stream = self.stream
        address = self.seed.address

        def apply_to_views(images, _unused_dst, indices):
            seed, epoch = read_seed(address)
            for i in my_range(images.shape[0]):
                for v in range(images.shape[1]):
                    key = stream_key(seed, epoch, indices[i], first_view + v, stream)
                    if uniform(key, 0) < probabilities[v]:
                        kernel(images[i, v], key)
            return images

        apply_to_views.is_parallel = True
        apply_to_views.with_indices = True
        return apply_to_views

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        shape = previous_state.shape
        if (shape is None or len(shape) != 4 or shape[-1] != 3
                or shape[0] != len(self.probabilities)):
            raise ValueError(
                f"{type(self).__name__} expects (views, H, W, 3) uint8 samples with "
                f"{len(self.probabilities)} views (one probability each), got shape {shape}")
        if previous_state.dtype != np.dtype("u1"):
            raise ValueError(f"{type(self).__name__} expects uint8 images, got {previous_state.dtype}")
        return replace(previous_state, jit_mode=True), None
