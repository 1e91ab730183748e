"""Barlow Twins augmentations as numba-compiled FFCV operations, one per module.

``crop_decoder`` decodes each JPEG once and cuts the views; ``flip``, ``color_jitter``,
``grayscale``, ``blur`` and ``solarize`` act in place on (B, V, H, W, 3) uint8 batches with
per-view probabilities; ``rng`` makes every random draw a function of
(seed, epoch, sample, view, op); ``view_op`` is their common base class.

No kernel is compiled with numba's ``cache=True``: with helpers inlined across files
(``fused`` calls the colour, blur and grayscale kernels) an on-disk cache served stale or
mismatched compiled callers (wrong pixels, or a KeyError from numba's dispatcher) after an
update and, once, from a fresh clone; compiling in each process costs seconds and is exact.
"""
