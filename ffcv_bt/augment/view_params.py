"""Emit each sample's augmentation decisions instead of applying them (``aug.device: gpu``).

With augmentations on the training device, the loader's CPU workers only decode, crop and
flip; the colour jitter, grayscale, blur and solarize run later as batched torch ops
(:mod:`ffcv_bt.augment.device_augment`). Those need the very numbers the numba ops would
have drawn, and the draws are keyed by the *sample index* (:mod:`ffcv_bt.augment.rng`), which
FFCV batches do not carry. :class:`ViewParamsDecoder` is a decoder on the image field that
reads no image data: for every sample of the batch it writes the decisions of the four ops
(their ``decide`` functions, the same compiled code as the in-loader path) into a
``(views, PARAMS_PER_VIEW)`` float64 row, which FFCV batches like any other output.

Row layout per view (``float64``): ``JITTER`` (9: applies, brightness, contrast, saturation
factors, hue factor, order of the four parts), ``GRAY`` (1: applies), ``BLUR`` (2: applies,
sigma), ``SOLARIZE`` (1: applies); NaN factors mark disabled jitter parts.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from ffcv_bt.augment.blur import RandomGaussianBlurViews
from ffcv_bt.augment.color_jitter import JITTER_PARAMS, RandomColorJitterViews
from ffcv_bt.augment.grayscale import RandomGrayscaleViews
from ffcv_bt.augment.rng import read_seed_epoch
from ffcv_bt.augment.solarize import RandomSolarizeViews

JITTER = slice(0, 1 + JITTER_PARAMS)
GRAY = 1 + JITTER_PARAMS
BLUR = slice(GRAY + 1, GRAY + 3)
SOLARIZE = GRAY + 3
PARAMS_PER_VIEW = SOLARIZE + 1


class ViewParamsDecoder(Operation):
    """Decoder yielding ``(views, PARAMS_PER_VIEW)`` float64 decisions per sample (no pixels).

    Parameters are the configured per-view ops; their probabilities, parameters, seed and
    first view are used unchanged, so the rows hold exactly what those ops would decide.
    """

    def __init__(self, jitter: RandomColorJitterViews, grayscale: RandomGrayscaleViews,
                 blur: RandomGaussianBlurViews, solarize: RandomSolarizeViews):
        super().__init__()
        self.components = (jitter, grayscale, blur, solarize)
        views = len(jitter.probabilities)
        for op in self.components:
            if op.seed is not jitter.seed or op.first_view != jitter.first_view \
                    or len(op.probabilities) != views:
                raise ValueError("ViewParamsDecoder: the ops must share seed, first_view and "
                                 "number of views")
        self.seed = jitter.seed
        self.views = views

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        shape = (self.views, PARAMS_PER_VIEW)
        float64 = np.dtype("<f8")
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=float64),
                AllocationQuery(shape, float64))

    def generate_code(self) -> Callable:
        decide_jitter, decide_gray, decide_blur, decide_solarize = (
            op.decide_function() for op in self.components)
        read_seed = Compiler.compile(read_seed_epoch)
        my_range = Compiler.get_iterator()
        address = self.seed.address
        jitter_end, gray_at, blur_end, solarize_at = JITTER.stop, GRAY, BLUR.stop, SOLARIZE

        def decide_views(batch_indices, destination, metadata, storage_state):
            seed, epoch = read_seed(address)
            for i in my_range(len(batch_indices)):
                sample = batch_indices[i]
                for v in range(destination.shape[1]):
                    row = destination[i, v]
                    row[:jitter_end] = decide_jitter(seed, epoch, sample, v)
                    row[gray_at] = decide_gray(seed, epoch, sample, v)[0]
                    row[gray_at + 1:blur_end] = decide_blur(seed, epoch, sample, v)
                    row[solarize_at] = decide_solarize(seed, epoch, sample, v)[0]
            return destination[:len(batch_indices)]

        decide_views.is_parallel = True
        return decide_views
