"""Decode each image once and cut several random-resized crops (the views) from it.

FFCV's ``RandomResizedCropRGBImageDecoder`` gives one crop per decode, so two views need
two pipelines and decode every JPEG twice. This decoder decodes into a scratch buffer and
resizes ``num_views`` independent crops out of it; its per-sample output is
``(num_views, res, res, 3)`` uint8.

Crop boxes follow torchvision's ``RandomResizedCrop.get_params`` (10 tries of area
~ U(scale) and log aspect ratio ~ U(log ratio), then a centred fallback), with numbers from
the counter-based streams of :mod:`ffcv_bt.augment.rng`, so crops are reproducible. Resizing is
FFCV's (OpenCV ``INTER_AREA``), while the reference uses bicubic: both are smooth
downsamplers, but pixels differ slightly.

The output size is read by ``declare_state_and_memory``, which FFCV calls again when it
allocates each epoch's buffers, and the compiled code takes the size from the destination
array: :meth:`set_output_size` between epochs changes the resolution without recompiling.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Tuple

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.state import State

from ffcv_bt.augment.jit import kernel
from ffcv_bt.augment.rng import (
    STREAM_CROP,
    EpochSeed,
    read_seed_epoch,
    stream_key,
    uniform_range,
)


@kernel
def random_crop_box(height: int, width: int, scale_low: float, scale_high: float,
                    log_ratio_low: float, log_ratio_high: float, key: np.uint64):
    """Top, left, height, width of a random-resized-crop box (torchvision's algorithm)."""
    area = height * width
    for attempt in range(10):
        target_area = area * uniform_range(key, 1 + 4 * attempt, scale_low, scale_high)
        aspect = math.exp(uniform_range(key, 2 + 4 * attempt, log_ratio_low, log_ratio_high))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(uniform_range(key, 3 + 4 * attempt, 0.0, height - h + 1)), height - h)
            left = min(int(uniform_range(key, 4 + 4 * attempt, 0.0, width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < math.exp(log_ratio_low):
        w = width
        h = int(round(w / math.exp(log_ratio_low)))
    elif in_ratio > math.exp(log_ratio_high):
        h = height
        w = int(round(h * math.exp(log_ratio_high)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


class MultiViewRandomResizedCropDecoder(SimpleRGBImageDecoder):
    """Decoder for ``RGBImageField``: one decode, ``num_views`` random-resized crops.

    Parameters
    ----------
    output_size : side of the square crops in pixels.
    seed : the loader's :class:`EpochSeed`.
    num_views : crops per image (2 for Barlow Twins, 1 for supervised training).
    scale : range of the crop area as a fraction of the image area.
    ratio : range of the crop aspect ratio (width / height), sampled log-uniformly.
    first_view : view number of the first crop, for the random keys (1 for the second
        pipeline of the decode-twice layout, so it draws the crops of view 2).
    """

    def __init__(self, output_size: int, seed: EpochSeed, num_views: int = 2,
                 scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), first_view: int = 0):
        super().__init__()
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {ratio}")
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.set_output_size(output_size)
        self.seed = seed
        self.num_views = int(num_views)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.first_view = int(first_view)

    def set_output_size(self, output_size: int) -> None:
        """Crop side used from the next epoch on (FFCV re-reads it when it allocates buffers)."""
        if int(output_size) < 1:
            raise ValueError(f"output_size must be a positive integer, got {output_size}")
        self.output_size = int(output_size)

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Tuple[AllocationQuery, ...]]:
        max_width = np.uint64(self.metadata["width"].max())
        max_height = np.uint64(self.metadata["height"].max())
        output_shape = (self.num_views, self.output_size, self.output_size, 3)
        uint8 = np.dtype("<u1")
        return (
            replace(previous_state, jit_mode=True, shape=output_shape, dtype=uint8),
            (AllocationQuery(output_shape, uint8),
             AllocationQuery((max_height * max_width * np.uint64(3),), uint8)),
        )

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        read_seed = Compiler.compile(read_seed_epoch)
        address = self.seed.address
        scale_low, scale_high = self.scale
        log_ratio_low, log_ratio_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        first_view = self.first_view

        def decode_views(batch_indices, my_storage, metadata, storage_state):
            destination, scratch = my_storage
            seed, epoch = read_seed(address)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    decoded = scratch[dst_ix]
                    imdecode_c(image_data, decoded, height, width, height, width,
                               0, 0, 1, 1, False, False)
                    image = decoded[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                for v in range(destination.shape[1]):
                    key = stream_key(seed, epoch, source_ix, first_view + v, STREAM_CROP)
                    top, left, h, w = random_crop_box(int(height), int(width), scale_low,
                                                      scale_high, log_ratio_low,
                                                      log_ratio_high, key)
                    resize_crop_c(image, top, top + h, left, left + w, destination[dst_ix, v])
            return destination[:len(batch_indices)]

        decode_views.is_parallel = True
        return decode_views
