"""Base class for the per-view augmentations of a ``(B, V, H, W, 3)`` uint8 batch.

The two-view decoder stores both crops of a sample side by side, so one op call handles
both views, each with its own probability (view 1 and view 2 of Barlow Twins differ in
blur and solarize). For each ``(sample, view)`` an op first *decides* (a pure function of
the seed, epoch, sample index and view; see :mod:`ffcv_bt.augment.rng`): the first number of
its random stream says whether to apply, the following numbers are its parameters. The
decision is one compiled function shared by the FFCV code and :meth:`ViewOperation.draws`,
so tests check the very draws the loader uses. Ops work in place: the batch is the
decoder's buffer for this batch slot, so no extra copy is needed.
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

from ffcv_bt.augment.rng import EpochSeed, read_seed_epoch, stream_key, uniform


def check_probabilities(name: str, probabilities: Sequence[float]) -> np.ndarray:
    """Per-view probabilities as a float64 array; a clear error if one is outside [0, 1]."""
    values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if values.size == 0 or np.any(values < 0) or np.any(values > 1) or np.any(np.isnan(values)):
        raise ValueError(f"{name}: probabilities must be in [0, 1] (one per view), got {probabilities}")
    return values


def no_params(key: np.uint64) -> np.ndarray:
    """Parameter draw of an op without parameters (flip, grayscale, solarize)."""
    return np.empty(0, dtype=np.float64)


def make_decide(stream: int, first_view: int, probabilities: np.ndarray, draw: Callable) -> Callable:
    """``decide(seed, epoch, sample, v) -> params``: the decision for view ``v`` of the batch.

    ``params[0]`` is 1.0 when the op applies (first number of the stream below the view's
    probability), else 0.0; ``params[1:]`` are the op's parameters from ``draw(key)``
    (counters >= 1), drawn either way so that they never depend on the decision.
    """
    def decide(seed, epoch, sample, v):
        key = stream_key(seed, epoch, sample, first_view + v, stream)
        drawn = draw(key)
        params = np.empty(drawn.size + 1, dtype=np.float64)
        params[0] = 1.0 if uniform(key, 0) < probabilities[v] else 0.0
        params[1:] = drawn
        return params
    return decide


def view_loop(apply_view: Callable, seed: EpochSeed) -> Callable:
    """The FFCV code of a per-view op: ``apply_view(image, seed, epoch, sample, v)`` on view
    ``v`` of every sample of the batch, in place, samples in parallel; ``(seed, epoch)`` is
    read from ``seed`` once per batch. ``apply_view`` must be compiled (``Compiler.compile``)."""
    read_seed = Compiler.compile(read_seed_epoch)
    my_range = Compiler.get_iterator()
    address = seed.address

    def apply_to_views(images, _unused_dst, indices):
        seed_value, epoch = read_seed(address)
        for i in my_range(images.shape[0]):
            for v in range(images.shape[1]):
                apply_view(images[i, v], seed_value, epoch, indices[i], v)
        return images

    apply_to_views.is_parallel = True
    apply_to_views.with_indices = True
    return apply_to_views


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
        """A function ``kernel(image, params)`` transforming one (H, W, 3) uint8 view in place;
        ``params`` is the array returned by :meth:`view_draw`."""

    def view_draw(self) -> Callable:
        """A plain function ``draw(key) -> float64 array`` of the op's parameters, calling only
        numba functions (it is compiled with FFCV's ``Compiler``)."""
        return no_params

    def decide_function(self) -> Callable:
        """The compiled-or-plain (see ``Compiler``) ``decide`` of :func:`make_decide`."""
        draw = Compiler.compile(self.view_draw())
        return Compiler.compile(make_decide(self.stream, self.first_view, self.probabilities, draw))

    def draws(self, samples: Sequence[int], epoch: int = 0) -> np.ndarray:
        """The decisions the op makes for ``samples`` in ``epoch`` (for tests and audits).

        Returns ``(len(samples), views, 1 + k)`` float64: ``[..., 0]`` is 1.0 where the op
        applies, ``[..., 1:]`` its ``k`` parameters. Uses the seed but not the epoch held by
        :attr:`seed`.
        """
        decide = self.decide_function()
        rows = [[decide(np.uint64(self.seed.seed), np.uint64(epoch), np.uint64(s), v)
                 for v in range(len(self.probabilities))] for s in samples]
        return np.array(rows, dtype=np.float64)

    def generate_code(self) -> Callable:
        kernel = Compiler.compile(self.view_kernel())
        decide = self.decide_function()

        def apply_view(image, seed, epoch, sample, v):
            params = decide(seed, epoch, sample, v)
            if params[0] != 0.0:
                kernel(image, params[1:])
        return view_loop(Compiler.compile(apply_view), self.seed)

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
