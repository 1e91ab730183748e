"""Loaders for the evaluation protocols (linear probe and semi-supervised fine-tuning).

Train split: random-resized crop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip p=0.5,
reproducible like the pretraining loader (same counter-based random streams), random order.
Val split: FFCV's ``CenterCropRGBImageDecoder`` (centre crop of ``resize_ratio`` of the
short side, resized to ``res``: resize 256 / centre crop 224 at the defaults), sequential
order, no dropped batch. Both yield ``(images, labels)``: ImageNet-normalised float32
(B, 3, res, res) and int64 (B,), on the device.

Under ``distributed`` FFCV shards with a ``DistributedSampler`` that pads the last shard by
repeating samples, so a distributed val pass may count a few images twice; evaluate on one
rank (or de-duplicate) for exact numbers.
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Optional, Sequence

import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
from ffcv.loader import Loader
from ffcv.pipeline import PipelineSpec
from ffcv.transforms import ToTensor

from ffcv_bt.augment.crop_decoder import MultiViewRandomResizedCropDecoder
from ffcv_bt.augment.flip import RandomFlipViews
from ffcv_bt.augment.rng import EpochSeed
from ffcv_bt.data.ffcv_loading import (
    BufferGuard,
    build_loader,
    check_beton,
    check_indices,
    default_device,
    keep_torch_threads,
)
from ffcv_bt.data.normalize import labels_to_device, normalize_images

SPLITS = ("train", "val")


class EvalLoader:
    """Iterates ``(images, labels)`` batches; built by :func:`make_eval_loader`.

    The epoch advances by one after each complete pass; :meth:`set_epoch` sets it (order
    and, for the train split, augmentations).
    """

    def __init__(self, loader: Loader, seed: EpochSeed, device: torch.device, channels_last: bool,
                 crop_decoder: MultiViewRandomResizedCropDecoder | None = None):
        self._loader = loader
        self._crop_decoder = crop_decoder
        self._seed = seed
        self._outputs = list(loader.pipeline_specs)
        self.device = device
        self.channels_last = channels_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def set_resolution(self, res: int) -> None:
        """Train split only: the side of the crops from the next epoch on (FFCV's progressive
        resolution, as the pretraining loader)."""
        if self._crop_decoder is None:
            raise ValueError("set_resolution: the val split has a fixed centre crop")
        self._crop_decoder.set_output_size(res)

    def __len__(self) -> int:
        return len(self._loader)

    @property
    def num_samples(self) -> int:
        """Samples one pass visits on this rank (before any dropped last batch)."""
        return len(self._loader.first_traversal_order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._seed.set_epoch(self.epoch)
        self._loader.next_epoch = self.epoch
        guard = BufferGuard(self.device)
        batches = keep_torch_threads(self._loader)
        try:
            for outputs in batches:
                batch = dict(zip(self._outputs, outputs))
                images = batch["image"]
                if images.dim() == 5:  # (B, 1, H, W, 3) from the one-view crop decoder
                    images = images[:, 0]
                out = (normalize_images(images, self.device, self.channels_last),
                       labels_to_device(batch["label"], self.device))
                guard.copied()
                yield out
                guard.wait()  # before FFCV may refill the buffers this batch was copied from
        finally:
            batches.close()  # an early end (break, exception) closes FFCV's epoch too
        self.epoch += 1


def make_eval_loader(beton: str | os.PathLike, batch_size_per_rank: int, split: str,
                     num_workers: int,
                     device: Optional[torch.device | str] = None, res: int = 224,
                     resize_ratio: float = 224 / 256, indices: Optional[Sequence[int]] = None,
                     seed: int = 0, distributed: bool = False, drop_last: Optional[bool] = None,
                     channels_last: bool = False, in_memory: bool = True) -> EvalLoader:
    """Build the loader of ``split`` ("train": augmented, shuffled; "val": centre crop, in order).

    Parameters
    ----------
    batch_size_per_rank : samples per batch on this rank (the global batch / world size).
    indices : restrict to these sample indices (e.g. the 1% / 10% label subsets).
    resize_ratio : val only: centre crop side / short side (224/256).
    drop_last : default True for train (False when the subset holds less than one batch on
        this rank, so a tiny label subset still trains), False for val.
    seed : order and augmentation seed (train split).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if batch_size_per_rank < 1 or num_workers < 1 or res < 1:
        raise ValueError(f"batch_size_per_rank, num_workers and res must be >= 1, got "
                         f"{batch_size_per_rank}, {num_workers}, {res}")
    if not 0 < resize_ratio <= 1:
        raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
    field_names, num_samples = check_beton(beton, ["image", "label"])
    train = split == "train"
    epoch_seed = EpochSeed(seed)
    crop_decoder = MultiViewRandomResizedCropDecoder(res, epoch_seed, num_views=1) if train else None
    if train:
        image = PipelineSpec("image", crop_decoder, [RandomFlipViews((0.5,), epoch_seed), ToTensor()])
    else:
        image = PipelineSpec("image", CenterCropRGBImageDecoder((res, res), ratio=resize_ratio),
                             [ToTensor()])
    pipelines: dict = {name: None for name in field_names}
    pipelines["image"] = image
    pipelines["label"] = PipelineSpec("label", IntDecoder(), [ToTensor()])
    subset = check_indices(beton, indices, num_samples)
    if drop_last is None:
        per_rank = num_samples if subset is None else len(subset)
        if distributed:
            per_rank = math.ceil(per_rank / torch.distributed.get_world_size())
        drop_last = train and per_rank >= batch_size_per_rank
    loader = build_loader(beton, pipelines, batch_size_per_rank=batch_size_per_rank,
                          num_workers=num_workers, order="random" if train else "sequential",
                          distributed=distributed, seed=seed, indices=subset, drop_last=drop_last,
                          in_memory=in_memory)
    device = default_device() if device is None else torch.device(device)
    return EvalLoader(loader, epoch_seed, device, channels_last, crop_decoder)
