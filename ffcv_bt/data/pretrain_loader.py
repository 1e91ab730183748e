"""The Barlow Twins two-view pretraining loader on FFCV.

One call, :func:`make_pretrain_loader`, builds an FFCV ``Loader`` whose image pipeline
decodes each JPEG once, cuts two random-resized crops and augments each with its own
probabilities (REFERENCE.md's table), then yields ``(view1, view2)`` ImageNet-normalised
float32 tensors on the device.

Randomness: the sample order comes from FFCV (``seed + epoch``; under ``distributed`` a
``DistributedSampler`` seeded the same way) and every augmentation number from
``(seed, epoch, sample index, view, op)`` (:mod:`ffcv_bt.ops.rng`). A given seed therefore
yields the same batches whatever the worker count, and ``set_epoch(e)`` on a fresh loader
reproduces epoch ``e`` of a running one.

``decode_once=False`` builds FFCV's stock layout instead (a second pipeline ``image2`` that
decodes the same image again) with the same ops and random keys: the same batches, slower.
It is kept for the benchmark.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline import PipelineSpec
from ffcv.reader import Reader
from ffcv.transforms import ToTensor

from ..ops.blur import RandomGaussianBlurViews
from ..ops.color_jitter import RandomColorJitterViews
from ..ops.crop_decoder import MultiViewRandomResizedCropDecoder
from ..ops.flip import RandomFlipViews
from ..ops.grayscale import RandomGrayscaleViews
from ..ops.rng import EpochSeed
from ..ops.solarize import RandomSolarizeViews
from .normalize import labels_to_device, normalize_images

ORDERS = {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM,
          "sequential": OrderOption.SEQUENTIAL}


@dataclass
class AugmentationParams:
    """Barlow Twins augmentations; pairs are (view 1, view 2) probabilities.

    Defaults are the reference recipe. Lists (from YAML) are accepted for the pairs.
    """
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: tuple[float, float] = (0.5, 0.5)
    jitter_p: tuple[float, float] = (0.8, 0.8)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: tuple[float, float] = (0.2, 0.2)
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    solarize_p: tuple[float, float] = (0.0, 0.2)
    solarize_threshold: int = 128

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_p", "_scale", "_ratio", "_sigma")):
                if not isinstance(value, (tuple, list)) or len(value) != 2:
                    raise ValueError(f"augmentation.{f.name} must be a pair, got {value!r}")
                value = (float(value[0]), float(value[1]))
                setattr(self, f.name, value)
            if f.name.endswith("_p") and not all(0.0 <= p <= 1.0 for p in value):
                raise ValueError(f"augmentation.{f.name} must hold probabilities in [0, 1], got {value}")

    @classmethod
    def no_augmentation(cls) -> "AugmentationParams":
        """Whole-image crops and every probability 0: views are plain resizes of the image."""
        return cls(crop_scale=(1.0, 1.0), crop_ratio=(1e-3, 1e3), flip_p=(0.0, 0.0),
                   jitter_p=(0.0, 0.0), grayscale_p=(0.0, 0.0), blur_p=(0.0, 0.0),
                   solarize_p=(0.0, 0.0))


def check_beton(beton: str | os.PathLike, required_fields: Sequence[str]) -> tuple[list[str], int]:
    """Field names and sample count of ``beton``; a clear error if it or a field is missing."""
    if not os.path.isfile(beton):
        raise FileNotFoundError(f"dataset file not found: {beton}")
    reader = Reader(str(beton))
    names = list(reader.handlers)
    missing = [name for name in required_fields if name not in names]
    if missing:
        raise ValueError(f"{beton}: missing field(s) {missing}; it has {names}")
    return names, int(reader.num_samples)


def check_indices(beton: str | os.PathLike, indices: Optional[Sequence[int]],
                  num_samples: int) -> Optional[np.ndarray]:
    """``indices`` as a uint64 array (None stays None); a clear error if one is out of range."""
    if indices is None:
        return None
    array = np.asarray(indices)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{beton}: indices must be a non-empty list of integers")
    if array.min() < 0 or array.max() >= num_samples:
        raise ValueError(f"{beton}: indices must lie in [0, {num_samples}), got "
                         f"{array.min()}..{array.max()}")
    return array.astype(np.uint64)


def ffcv_order(order: str, distributed: bool) -> OrderOption:
    """FFCV's traversal order for ``order``; a clear error for unknown or unsupported ones."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
    if distributed and order == "quasi_random":
        raise ValueError("order 'quasi_random' is not supported by FFCV with distributed=True")
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("distributed=True needs torch.distributed initialised before the loader")
    return ORDERS[order]


def view_transforms(aug: AugmentationParams, seed: EpochSeed, views: slice) -> list:
    """The per-view ops after the crop, for the views selected by ``views`` (0, 1 or both)."""
    first = views.start or 0

    def pick(pair: tuple[float, float]) -> tuple[float, ...]:
        return pair[views]

    return [
        RandomFlipViews(pick(aug.flip_p), seed, first_view=first),
        RandomColorJitterViews(pick(aug.jitter_p), seed, aug.brightness, aug.contrast,
                               aug.saturation, aug.hue, first_view=first),
        RandomGrayscaleViews(pick(aug.grayscale_p), seed, first_view=first),
        RandomGaussianBlurViews(pick(aug.blur_p), seed, aug.blur_sigma,
                                aug.blur_kernel_fraction, first_view=first),
        RandomSolarizeViews(pick(aug.solarize_p), seed, aug.solarize_threshold, first_view=first),
        ToTensor(),
    ]


def two_view_pipelines(aug: AugmentationParams, res: int, seed: EpochSeed, decode_once: bool
                       ) -> tuple[dict[str, PipelineSpec], list[MultiViewRandomResizedCropDecoder]]:
    """FFCV pipelines for the two views, and their crop decoders (for ``set_resolution``).

    ``decode_once``: one pipeline "image" of (B, 2, res, res, 3); otherwise pipelines
    "image" and "image2" of (B, 1, res, res, 3), each decoding the image itself.
    """
    def decoder(num_views: int, first_view: int) -> MultiViewRandomResizedCropDecoder:
        return MultiViewRandomResizedCropDecoder(res, seed, num_views, aug.crop_scale,
                                                 aug.crop_ratio, first_view=first_view)

    if decode_once:
        both = decoder(2, 0)
        return {"image": PipelineSpec("image", both, view_transforms(aug, seed, slice(0, 2)))}, [both]
    first, second = decoder(1, 0), decoder(1, 1)
    return {
        "image": PipelineSpec("image", first, view_transforms(aug, seed, slice(0, 1))),
        "image2": PipelineSpec("image", second, view_transforms(aug, seed, slice(1, 2))),
    }, [first, second]


def keep_torch_threads(loader: Loader) -> Iterator:
    """Iterate ``loader`` with the caller's torch thread count.

    FFCV sets torch's thread count to its worker count when an epoch starts (in ``__iter__``
    and again in its batch thread); left alone, torch work on the CPU then competes with the
    numba workers for the cores. The count is restored once the first batch arrives, when
    both calls have happened.
    """
    threads = torch.get_num_threads()
    for i, batch in enumerate(loader):
        if i == 0:
            torch.set_num_threads(threads)
        yield batch


class TwoViewLoader:
    """Iterates ``(view1, view2)`` (or ``(view1, view2, labels)``) batches of one epoch.

    The epoch advances by one after each complete pass; :meth:`set_epoch` sets it
    explicitly (call it when resuming). Built by :func:`make_pretrain_loader`.
    """

    def __init__(self, loader: Loader, decoders: list[MultiViewRandomResizedCropDecoder],
                 seed: EpochSeed, device: torch.device, channels_last: bool, with_labels: bool):
        self._loader = loader
        self._decoders = decoders
        self._seed = seed
        self._outputs = list(loader.pipeline_specs)  # FFCV yields one tensor per pipeline, in this order
        self.device = device
        self.channels_last = channels_last
        self.with_labels = with_labels
        self.epoch = 0

    @property
    def ffcv_loader(self) -> Loader:
        """The underlying FFCV loader: uint8 (B, V, H, W, 3) batches in reused buffers, no
        epoch handling (for benchmarks and debugging)."""
        return self._loader

    @property
    def resolution(self) -> int:
        return self._decoders[0].output_size

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (its order and its augmentations)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def set_resolution(self, res: int) -> None:
        """Crop size from the next pass on; FFCV reallocates its buffers every epoch."""
        for decoder in self._decoders:
            decoder.set_output_size(res)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        self._seed.set_epoch(self.epoch)
        self._loader.next_epoch = self.epoch
        for outputs in keep_torch_threads(self._loader):
            batch = dict(zip(self._outputs, outputs))
            # Move whole uint8 batches (contiguous, pinned when CUDA is present), then slice.
            images = batch["image"].to(self.device, non_blocking=True)
            if "image2" in batch:
                first = images[:, 0]
                second = batch["image2"].to(self.device, non_blocking=True)[:, 0]
            else:
                first, second = images[:, 0], images[:, 1]
            views = (normalize_images(first, self.device, self.channels_last),
                     normalize_images(second, self.device, self.channels_last))
            if self.with_labels:
                views += (labels_to_device(batch["label"], self.device),)
            yield views
        self.epoch += 1


def default_device() -> torch.device:
    """CUDA (this process's current device) when available, else CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def make_pretrain_loader(beton: str | os.PathLike, batch_size: int, num_workers: int,
                         aug: AugmentationParams, res: int, seed: int,
                         device: Optional[torch.device | str] = None, distributed: bool = False,
                         order: str = "random", in_memory: bool = True,
                         channels_last: bool = False, drop_last: bool = True,
                         decode_once: bool = True, indices: Optional[Sequence[int]] = None,
                         with_labels: bool = False) -> TwoViewLoader:
    """Build the two-view Barlow Twins loader over the "image" field of ``beton``.

    Parameters
    ----------
    batch_size : samples per batch on this rank.
    num_workers : numba threads decoding and augmenting.
    aug : augmentation strengths and per-view probabilities.
    res : side of the square views (change later with ``set_resolution``).
    seed : seeds the order and every augmentation.
    device : where batches go; default CUDA when available, else CPU.
    distributed : each rank of the initialised process group reads a disjoint shard.
    order : "random", "quasi_random" (less disk reading when the data exceed RAM) or "sequential".
    in_memory : let the OS page cache hold the file (FFCV's ``os_cache``); False uses
        FFCV's own process cache, better when the data exceed RAM.
    decode_once : decode each JPEG once for both views (False: FFCV's stock two pipelines).
    indices : restrict to these sample indices of the file.
    with_labels : also yield the int64 labels (the "label" field).
    """
    if batch_size < 1 or num_workers < 1 or res < 1:
        raise ValueError(f"batch_size, num_workers and res must be >= 1, got "
                         f"{batch_size}, {num_workers}, {res}")
    required = ["image", "label"] if with_labels else ["image"]
    field_names, num_samples = check_beton(beton, required)
    ffcv_order_option = ffcv_order(order, distributed)
    epoch_seed = EpochSeed(seed)
    pipelines, decoders = two_view_pipelines(aug, res, epoch_seed, decode_once)
    for name in field_names:
        if name not in pipelines:
            pipelines[name] = None  # disabled field
    if with_labels:
        pipelines["label"] = PipelineSpec("label", IntDecoder(), [ToTensor()])
    threads = torch.get_num_threads()  # FFCV's constructor changes it; give it back
    loader = Loader(str(beton), batch_size=batch_size, num_workers=num_workers,
                    os_cache=in_memory, order=ffcv_order_option, distributed=distributed,
                    seed=seed, indices=check_indices(beton, indices, num_samples),
                    pipelines=pipelines, drop_last=drop_last)
    torch.set_num_threads(threads)
    if len(loader) == 0:
        raise ValueError(f"{beton}: {len(loader.first_traversal_order)} samples on this rank "
                         f"give no batch of {batch_size} with drop_last={drop_last}")
    device = default_device() if device is None else torch.device(device)
    return TwoViewLoader(loader, decoders, epoch_seed, device, channels_last, with_labels)
