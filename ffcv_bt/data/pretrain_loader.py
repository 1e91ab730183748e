"""The Barlow Twins two-view pretraining loader on FFCV.

One call, :func:`make_pretrain_loader`, builds an FFCV ``Loader`` whose image pipeline
decodes each JPEG once, cuts two random-resized crops and augments each with its own
probabilities (the table of Zbontar et al. 2021, arXiv 2103.03230, appendix), then yields ``(view1, view2)`` ImageNet-normalised
float32 tensors on the device.

Randomness: the sample order comes from FFCV (``seed + epoch``; under ``distributed`` a
``DistributedSampler`` seeded the same way) and every augmentation number from
``(seed, epoch, sample index, view, op)`` (:mod:`ffcv_bt.augment.rng`). A given seed therefore
yields the same batches whatever the worker count, and ``set_epoch(e)`` on a fresh loader
reproduces epoch ``e`` of a running one.

``augment_on="gpu"`` (the recipe's ``aug.device``) leaves only decode, crop and flip to the
workers: a third output "params" carries each view's decisions
(:mod:`ffcv_bt.augment.view_params`) and :mod:`ffcv_bt.augment.device_augment` applies the colour
jitter, grayscale, blur and solarize as batched torch ops on ``device``, equal to the
numba ops to the level.

``decode_once=False`` builds FFCV's stock layout instead (a second pipeline ``image2`` that
decodes the same image again) with the same ops and random keys: the same batches, slower.
It is kept for the benchmark.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional, Sequence

import torch
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader
from ffcv.pipeline import PipelineSpec
from ffcv.transforms import ToTensor

from ffcv_bt.augment.blur import RandomGaussianBlurViews
from ffcv_bt.augment.color_jitter import RandomColorJitterViews
from ffcv_bt.augment.crop_decoder import MultiViewRandomResizedCropDecoder
from ffcv_bt.augment.device_augment import augment_views
from ffcv_bt.augment.flip import RandomFlipViews
from ffcv_bt.augment.fused import fuse_view_ops
from ffcv_bt.augment.grayscale import RandomGrayscaleViews
from ffcv_bt.augment.rng import EpochSeed
from ffcv_bt.augment.solarize import RandomSolarizeViews
from ffcv_bt.augment.view_op import ViewOperation
from ffcv_bt.augment.view_params import ViewParamsDecoder
from ffcv_bt.data.ffcv_loading import (
    BufferGuard,
    build_loader,
    check_beton,
    check_indices,
    default_device,
    keep_torch_threads,
)
from ffcv_bt.data.normalize import labels_to_device, normalize_images

AUGMENT_ON = ("cpu", "gpu")  # where the per-view ops after the flip run (recipe: aug.device)


@dataclass
class AugmentationParams:
    """Barlow Twins augmentations; pairs are (view 1, view 2) probabilities.

    No defaults here: the recipe's ``aug`` section (rules/base.yaml states the reference's
    values) is the one place they are written; build with :meth:`from_config`. Lists (from
    YAML) are accepted for the pairs.
    """
    crop_scale: tuple[float, float]
    flip_p: tuple[float, float]
    jitter_p: tuple[float, float]
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale_p: tuple[float, float]
    blur_p: tuple[float, float]
    blur_sigma: tuple[float, float]
    solarize_p: tuple[float, float]
    solarize_threshold: int
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's, fixed

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
    def from_config(cls, aug: dict[str, Any]) -> AugmentationParams:
        """The recipe's ``aug`` section as per-view parameters."""
        return cls(
            crop_scale=(aug["scale_min"], aug["scale_max"]),
            flip_p=(aug["flip_p"], aug["flip_p"]), jitter_p=(aug["jitter_p"], aug["jitter_p"]),
            brightness=aug["brightness"], contrast=aug["contrast"], saturation=aug["saturation"],
            hue=aug["hue"], grayscale_p=(aug["grayscale_p"], aug["grayscale_p"]),
            blur_p=(aug["blur_p1"], aug["blur_p2"]),
            blur_sigma=(aug["blur_sigma_min"], aug["blur_sigma_max"]),
            solarize_p=(aug["solarize_p1"], aug["solarize_p2"]),
            solarize_threshold=aug["solarize_threshold"])


def view_ops(aug: AugmentationParams, seed: EpochSeed, views: slice) -> dict[str, ViewOperation]:
    """The per-view ops after the crop, configured for the views selected by ``views`` (0, 1 or both)."""
    first = views.start or 0

    def pick(pair: tuple[float, float]) -> tuple[float, ...]:
        return pair[views]

    return {
        "flip": RandomFlipViews(pick(aug.flip_p), seed, first_view=first),
        "jitter": RandomColorJitterViews(pick(aug.jitter_p), seed, aug.brightness, aug.contrast,
                                         aug.saturation, aug.hue, first_view=first),
        "grayscale": RandomGrayscaleViews(pick(aug.grayscale_p), seed, first_view=first),
        "blur": RandomGaussianBlurViews(pick(aug.blur_p), seed, aug.blur_sigma, first_view=first),
        "solarize": RandomSolarizeViews(pick(aug.solarize_p), seed, aug.solarize_threshold,
                                        first_view=first),
    }


def view_transforms(aug: AugmentationParams, seed: EpochSeed, views: slice,
                    augment_on: str = "cpu") -> list:
    """The FFCV transforms after the crop for the views selected by ``views``.

    ``augment_on="cpu"``: every per-view op, fused into one (ffcv_bt/augment/fused.py: the same
    pixels as the five in turn, fewer passes). ``"gpu"``: the flip only; the rest runs on
    the training device (:mod:`ffcv_bt.augment.device_augment`).
    """
    ops = view_ops(aug, seed, views)
    if augment_on == "gpu":
        return [ops["flip"], ToTensor()]
    return fuse_view_ops(list(ops.values()) + [ToTensor()])


def view_params_pipeline(aug: AugmentationParams, seed: EpochSeed) -> PipelineSpec:
    """A pipeline "params" of (B, 2, PARAMS_PER_VIEW) decisions of the device-side ops."""
    ops = view_ops(aug, seed, slice(0, 2))
    decoder = ViewParamsDecoder(ops["jitter"], ops["grayscale"], ops["blur"], ops["solarize"])
    return PipelineSpec("image", decoder, [ToTensor()])


def two_view_pipelines(aug: AugmentationParams, res: int, seed: EpochSeed, decode_once: bool,
                       augment_on: str = "cpu"
                       ) -> tuple[dict[str, PipelineSpec], list[MultiViewRandomResizedCropDecoder]]:
    """FFCV pipelines for the two views, and their crop decoders (for ``set_resolution``).

    ``decode_once``: one pipeline "image" of (B, 2, res, res, 3); otherwise pipelines
    "image" and "image2" of (B, 1, res, res, 3), each decoding the image itself.
    ``augment_on="gpu"`` adds the pipeline "params" (:func:`view_params_pipeline`).
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")

    def decoder(num_views: int, first_view: int) -> MultiViewRandomResizedCropDecoder:
        return MultiViewRandomResizedCropDecoder(res, seed, num_views, aug.crop_scale,
                                                 aug.crop_ratio, first_view=first_view)

    if decode_once:
        both = decoder(2, 0)
        pipelines = {"image": PipelineSpec("image", both, view_transforms(aug, seed, slice(0, 2), augment_on))}
        decoders = [both]
    else:
        first, second = decoder(1, 0), decoder(1, 1)
        pipelines = {
            "image": PipelineSpec("image", first, view_transforms(aug, seed, slice(0, 1), augment_on)),
            "image2": PipelineSpec("image", second, view_transforms(aug, seed, slice(1, 2), augment_on)),
        }
        decoders = [first, second]
    if augment_on == "gpu":
        pipelines["params"] = view_params_pipeline(aug, seed)
    return pipelines, decoders


class TwoViewLoader:
    """Iterates ``(view1, view2)`` (or ``(view1, view2, labels)``) batches of one epoch.

    The epoch advances by one after each complete pass; :meth:`set_epoch` sets it
    explicitly (call it when resuming). Built by :func:`make_pretrain_loader`.
    """

    def __init__(self, loader: Loader, decoders: list[MultiViewRandomResizedCropDecoder],
                 seed: EpochSeed, device: torch.device, channels_last: bool, with_labels: bool,
                 solarize_threshold: int = 128):
        self._loader = loader
        self.solarize_threshold = solarize_threshold
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
        guard = BufferGuard(self.device)
        batches = keep_torch_threads(self._loader)
        try:
            for outputs in batches:
                batch = dict(zip(self._outputs, outputs))
                # Move whole uint8 batches (contiguous, pinned when CUDA is present), then slice;
                # on CUDA the copies run on a side stream, beside the previous step.
                with guard.side_stream():
                    copies = [batch[name].to(self.device, non_blocking=True)
                              for name in ("image", "image2") if name in batch]
                    if self.with_labels:
                        copies.append(labels_to_device(batch["label"], self.device))
                guard.copied(*copies)  # the compute stream waits for them
                if "image2" in batch:
                    first, second = copies[0][:, 0], copies[1][:, 0]
                else:
                    first, second = copies[0][:, 0], copies[0][:, 1]
                if "params" in batch:  # aug.device gpu: the remaining ops run here, on the device
                    first = augment_views(first, batch["params"][:, 0], self.solarize_threshold)
                    second = augment_views(second, batch["params"][:, 1], self.solarize_threshold)
                views = (normalize_images(first, self.device, self.channels_last),
                         normalize_images(second, self.device, self.channels_last))
                if self.with_labels:
                    views += (copies[-1],)
                yield views
                guard.wait()  # before FFCV may refill the buffers this batch was copied from
        finally:
            batches.close()  # an early end (break, exception) closes FFCV's epoch too
        self.epoch += 1


def make_pretrain_loader(beton: str | os.PathLike, batch_size_per_rank: int, num_workers: int,
                         aug: AugmentationParams, res: int, seed: int,
                         device: Optional[torch.device | str] = None, distributed: bool = False,
                         order: str = "random", in_memory: bool = True,
                         channels_last: bool = False, drop_last: bool = True,
                         decode_once: bool = True, indices: Optional[Sequence[int]] = None,
                         with_labels: bool = False, augment_on: str = "cpu") -> TwoViewLoader:
    """Build the two-view Barlow Twins loader over the "image" field of ``beton``.

    Parameters
    ----------
    batch_size_per_rank : samples per batch on this rank (the global batch / world size).
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
    augment_on : "cpu": every augmentation in the loader's numba workers; "gpu": the workers
        decode, crop and flip, and colour jitter, grayscale, blur and solarize run as batched
        torch ops on ``device`` with the same draws (the recipe's ``aug.device``).
    """
    if batch_size_per_rank < 1 or num_workers < 1 or res < 1:
        raise ValueError(f"batch_size_per_rank, num_workers and res must be >= 1, got "
                         f"{batch_size_per_rank}, {num_workers}, {res}")
    required = ["image", "label"] if with_labels else ["image"]
    field_names, num_samples = check_beton(beton, required)
    epoch_seed = EpochSeed(seed)
    pipelines, decoders = two_view_pipelines(aug, res, epoch_seed, decode_once, augment_on)
    for name in field_names:
        if name not in pipelines:
            pipelines[name] = None  # disabled field
    if with_labels:
        pipelines["label"] = PipelineSpec("label", IntDecoder(), [ToTensor()])
    loader = build_loader(beton, pipelines, batch_size_per_rank=batch_size_per_rank,
                          num_workers=num_workers, order=order, distributed=distributed,
                          seed=seed, indices=check_indices(beton, indices, num_samples),
                          drop_last=drop_last, in_memory=in_memory)
    device = default_device() if device is None else torch.device(device)
    return TwoViewLoader(loader, decoders, epoch_seed, device, channels_last, with_labels,
                         aug.solarize_threshold)
