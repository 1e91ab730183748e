"""Barlow Twins augmentations as numba-compiled FFCV operations, one per module.

``crop_decoder`` decodes each JPEG once and cuts the views; ``flip``, ``color_jitter``,
``grayscale``, ``blur`` and ``solarize`` act in place on (B, V, H, W, 3) uint8 batches with
per-view probabilities; ``rng`` makes every random draw a function of
(seed, epoch, sample, view, op); ``view_op`` is their common base class.

No kernel is compiled with numba's ``cache=True``: with helpers called across files
(``fused`` calls the colour, blur and grayscale kernels) numba invalidates a cached caller
only when its own file changes, so after an update it served a stale caller (wrong pixels);
compiling in each process costs seconds and is exact. Call the kernels directly (tests,
bench/fidelity.py) only in a process where FFCV has not compiled a pipeline around them:
numba then serves the direct call an overload compiled in that pipeline's context, which
returns wrong pixels (see the Makefile's KERNEL_TESTS).
"""
