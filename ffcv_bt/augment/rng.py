"""Counter-based random numbers for reproducible augmentations.

Every random draw of an augmentation is a pure function of
``(seed, epoch, sample index, view, op stream, draw counter)``: a 32-bit integer hash of
those numbers, scaled to [0, 1). Nothing depends on which numba thread handles a sample,
how many threads there are, or which samples came before, so the same seed gives the same
augmented images for any worker count, and a restarted epoch repeats an uninterrupted one.

FFCV compiles an op's code once per loader and freezes the values it captures, but the
epoch changes between passes. :class:`EpochSeed` therefore keeps ``(seed, epoch)`` in a
small numpy array and hands the compiled code its *address*; compiled code copies the two
numbers out with ``read_seed_epoch`` at the start of every batch, so ``set_epoch`` takes
effect without recompiling.

The hash is ``lowbias32`` (a published 32-bit integer mixer, constants 0x7feb352d and
0x846ca68b), evaluated in uint64 with products kept below 2**64 so it runs identically
with numba and in plain Python.
"""
from __future__ import annotations

import numpy as np
from ffcv.libffcv import ctypes_memcopy

from ffcv_bt.augment.jit import kernel

_MASK32 = np.uint64(0xFFFFFFFF)
_MUL1 = np.uint64(0x7FEB352D)
_MUL2 = np.uint64(0x846CA68B)
_GOLDEN = np.uint64(0x9E3779B9)
_S8 = np.uint64(8)
_S15 = np.uint64(15)
_S16 = np.uint64(16)
_TO_UNIT = 1.0 / 4294967296.0

# One stream id per op type: the same (sample, view) gets independent numbers in each op.
STREAM_CROP = 1
STREAM_FLIP = 2
STREAM_COLOR_JITTER = 3
STREAM_GRAYSCALE = 4
STREAM_BLUR = 5
STREAM_SOLARIZE = 6


@kernel
def mix32(x: np.uint64) -> np.uint64:
    """lowbias32 integer hash of the low 32 bits of ``x`` (a bijection on 32-bit values)."""
    x = x & _MASK32
    x ^= x >> _S16
    x = (x * _MUL1) & _MASK32
    x ^= x >> _S15
    x = (x * _MUL2) & _MASK32
    x ^= x >> _S16
    return x


@kernel
def stream_key(seed, epoch, sample, view, stream) -> np.uint64:
    """Key of the random stream of one op applied to one view of one sample in one epoch."""
    h = mix32(np.uint64(seed))
    h = mix32(h ^ np.uint64(epoch))
    h = mix32(h ^ np.uint64(sample))
    return mix32(h ^ ((np.uint64(view) << _S8) | np.uint64(stream)))


@kernel
def uniform(key: np.uint64, counter) -> float:
    """The ``counter``-th number of stream ``key``, uniform on [0, 1) (32-bit resolution)."""
    h = mix32(key + ((np.uint64(counter) * _GOLDEN) & _MASK32))
    return np.float64(mix32(h ^ key)) * _TO_UNIT


@kernel
def uniform_range(key: np.uint64, counter, low: float, high: float) -> float:
    """The ``counter``-th number of stream ``key``, uniform on [low, high)."""
    return low + (high - low) * uniform(key, counter)


def read_seed_epoch(address: int) -> tuple[int, int]:
    """Copy ``(seed, epoch)`` out of an :class:`EpochSeed` given its address.

    Not cached by numba on purpose (it calls a C function through ctypes); ops compile it
    with FFCV's ``Compiler`` so it follows ``Compiler.set_enabled``.
    """
    values = np.empty(2, dtype=np.uint64)
    ctypes_memcopy(address, values.ctypes.data, 16)
    return values[0], values[1]


class EpochSeed:
    """``(seed, epoch)`` shared by a loader and its ops, readable by compiled code.

    The loader calls :meth:`set_epoch` before each pass; ops read the values at run time
    through :attr:`address`. Keep this object alive as long as any loader uses it.
    """

    def __init__(self, seed: int):
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self._values = np.array([int(seed), 0], dtype=np.uint64)

    @property
    def seed(self) -> int:
        return int(self._values[0])

    @property
    def epoch(self) -> int:
        return int(self._values[1])

    def set_epoch(self, epoch: int) -> None:
        if not 0 <= int(epoch) < 2**32:
            raise ValueError(f"epoch must be in [0, 2**32), got {epoch}")
        self._values[1] = int(epoch)

    @property
    def address(self) -> int:
        """Memory address of the two uint64 values ``(seed, epoch)``."""
        return int(self._values.ctypes.data)
