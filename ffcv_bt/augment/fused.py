"""All per-view augmentations of Barlow Twins in one FFCV op.

Separate ops (flip, colour jitter, grayscale, blur, solarize) each walk over every view.
:class:`FusedViewAugment` takes those five ops and, for each view, makes exactly their
decisions (same random streams, see :mod:`ffcv_bt.augment.view_op`), then runs:

- the jitter's parts (one in-place pass each, :func:`ffcv_bt.augment.color_jitter.pointwise_augment`)
  and the grayscale, solarize (when there is no blur) and flip passes that apply;
- the blur's six box passes, with solarize folded into the last one
  (:func:`ffcv_bt.augment.blur.gaussian_blur`).

Every pass works in place on the view (no temporary image) and, but for the blur's running
sums and the flip, is a loop numba vectorises; fusing the jitter parts into one per-pixel
loop measured slower (its branches keep the hue arithmetic from vectorising), so the gain
over the five separate ops is one FFCV op and one decision loop instead of five, not fewer
pixel passes.
Flip commutes with every pixel-wise op and with the (mirror-symmetric) blur, so the result
is bit-identical to the five ops one after the other (tests/augment/test_ops.py checks it).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Sequence, Tuple

from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from ffcv_bt.augment.blur import RandomGaussianBlurViews, gaussian_blur
from ffcv_bt.augment.color_jitter import RandomColorJitterViews, pointwise_augment
from ffcv_bt.augment.flip import RandomFlipViews
from ffcv_bt.augment.grayscale import RandomGrayscaleViews
from ffcv_bt.augment.jit import kernel
from ffcv_bt.augment.solarize import RandomSolarizeViews
from ffcv_bt.augment.view_op import ViewOperation, view_loop

COMPONENTS = (RandomFlipViews, RandomColorJitterViews, RandomGrayscaleViews,
              RandomGaussianBlurViews, RandomSolarizeViews)


@kernel
def augment_view(image, flip: bool, jitter, gray: bool, blur, solarize: bool,
                 threshold: int) -> None:
    """Apply the decided ops to one C-contiguous (H, W, 3) uint8 view, in place.

    ``jitter`` and ``blur`` are the ops' decision arrays (``[0]``: applies, then the
    parameters); the others say whether the op applies.
    """
    blurred = blur[0] != 0.0
    solarize_at = threshold if solarize else 256
    pointwise_at = 256 if blurred else solarize_at
    # no jitter: an empty parameter array, and pointwise_augment runs only the other passes
    pointwise_augment(image, jitter[1:] if jitter[0] != 0.0 else jitter[:0], gray,
                      pointwise_at, flip)
    if blurred:
        gaussian_blur(image, blur[1], False, solarize_at)


class FusedViewAugment(Operation):
    """Flip, colour jitter, grayscale, blur and solarize of each view in one op.

    Parameters are the five configured per-view ops (the same views, seed and first view);
    their probabilities, parameters and random streams are used unchanged.
    """

    def __init__(self, flip: RandomFlipViews, jitter: RandomColorJitterViews,
                 grayscale: RandomGrayscaleViews, blur: RandomGaussianBlurViews,
                 solarize: RandomSolarizeViews):
        super().__init__()
        self.components = (flip, jitter, grayscale, blur, solarize)
        for op, kind in zip(self.components, COMPONENTS):
            if not isinstance(op, kind):
                raise TypeError(f"FusedViewAugment expects a {kind.__name__}, got {type(op).__name__}")
        first = self.components[0]
        for op in self.components[1:]:
            if (op.seed is not first.seed or op.first_view != first.first_view
                    or len(op.probabilities) != len(first.probabilities)):
                raise ValueError("FusedViewAugment: the ops must share seed, first_view and "
                                 "number of views")
        self.seed = first.seed

    def generate_code(self) -> Callable:
        decide_flip, decide_jitter, decide_gray, decide_blur, decide_solarize = (
            op.decide_function() for op in self.components)
        threshold = self.components[4].threshold

        def augment_one_view(image, seed, epoch, sample, v):
            flip = decide_flip(seed, epoch, sample, v)[0] != 0.0
            jitter = decide_jitter(seed, epoch, sample, v)
            gray = decide_gray(seed, epoch, sample, v)[0] != 0.0
            blur = decide_blur(seed, epoch, sample, v)
            solarize = decide_solarize(seed, epoch, sample, v)[0] != 0.0
            augment_view(image, flip, jitter, gray, blur, solarize, threshold)
        return view_loop(Compiler.compile(augment_one_view), self.seed)

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        for op in self.components:
            op.declare_state_and_memory(previous_state)  # the same checks of shape and dtype
        return replace(previous_state, jit_mode=True), None


def fuse_view_ops(ops: Sequence[Operation]) -> list[Operation]:
    """``ops`` with a run of flip, jitter, grayscale, blur, solarize (in that order) replaced
    by one :class:`FusedViewAugment`; other ops are kept as they are."""
    ops = list(ops)
    kinds = [type(op) for op in ops]
    for start in range(len(ops) - len(COMPONENTS) + 1):
        if tuple(kinds[start:start + len(COMPONENTS)]) == COMPONENTS:
            fused = FusedViewAugment(*ops[start:start + len(COMPONENTS)])
            return ops[:start] + [fused] + ops[start + len(COMPONENTS):]
    return ops


def view_operations(ops: Sequence[Operation]) -> list[ViewOperation]:
    """The per-view ops in ``ops``, with fused ops expanded into their components."""
    found: list[ViewOperation] = []
    for op in ops:
        if isinstance(op, FusedViewAugment):
            found.extend(op.components)
        elif isinstance(op, ViewOperation):
            found.append(op)
    return found
