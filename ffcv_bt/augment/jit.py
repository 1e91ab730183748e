"""The numba settings of every pixel and random-number kernel: ``@kernel``.

FFCV compiles each pipeline with ``fastmath=True, error_model="numpy"`` (its
``Compiler.compile``), and numba lets a called function *inherit* ``fastmath`` and
``error_model`` when it does not set them itself (numba/core/cpu.py,
``flags.inherit_if_not_set``). Our kernels reproduce Pillow's float32 and double arithmetic
to the bit, which fast-math (reassociation, contraction into fused multiply-adds) breaks:
with the flags left unset, the loader's colour-jittered views differed from the same
kernels called directly by up to 6 levels. Every kernel therefore states both flags, so it
compiles to the same code inside a pipeline and when called from Python.

``cache=True``: numba keeps each kernel's machine code on disk (``__pycache__``, or
``NUMBA_CACHE_DIR``), so a new process (every stage, test and rank builds loaders) loads
it instead of compiling it again (`python -m bench.loader_startup` times a fresh process's
first demo batch with the cache cold and warm, side by side).
"""
from __future__ import annotations

from typing import Callable, Optional

from numba import njit

KERNEL_OPTIONS = {"nogil": True, "fastmath": False, "error_model": "numpy", "cache": True}


def kernel(function: Optional[Callable] = None, **options) -> Callable:
    """``numba.njit`` with :data:`KERNEL_OPTIONS` (plus ``options``, e.g. ``inline="always"``);
    usable as ``@kernel`` or ``@kernel(inline="always")``."""
    decorate = njit(**{**KERNEL_OPTIONS, **options})
    return decorate if function is None else decorate(function)
