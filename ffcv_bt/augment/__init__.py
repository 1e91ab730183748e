"""The Barlow Twins augmentations: numba-compiled FFCV operations (one per module), the
decisions op and the batched torch ops.

``crop_decoder`` decodes each JPEG once and cuts the views; ``flip``, ``color_jitter``,
``grayscale``, ``blur`` and ``solarize`` act in place on (B, V, H, W, 3) uint8 batches with
per-view probabilities, PIL-exact; ``fused`` runs them in one pass per view; ``rng`` makes
every draw a function of (seed, epoch, sample, view, op); ``view_op`` is their base class;
``jit`` the one numba decorator (fast-math off). ``view_params`` emits each view's decisions
instead of pixels, and ``device_augment`` applies them as torch ops on the training device.

Imports: numpy, numba, torch, ffcv, and ``ffcv_bt.errors``. Kernels are compiled per
process, never cached on disk (docs/design.md says why).
"""
