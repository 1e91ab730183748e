"""The evaluation loaders: val is a deterministic centre crop in file order, train a seeded
random-resized crop + flip; labels stay with their images."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from coded_images import (
    NUM_IMAGES,
    assert_views_match_labels,
    spy_epoch_iterators,
    to_pixels,
    write_coded_beton,
)

from ffcv_bt.data.eval_loader import make_eval_loader

RES, RATIO = 32, 32 / 36  # the 224 / 256 protocol scaled to small images


def textured_image(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    height, width = rng.integers(40, 90, size=2)
    y, x = np.mgrid[0:height, 0:width] / 20.0
    phase = rng.uniform(0, 6, size=3)
    image = 128 + 110 * np.stack([np.sin(x + phase[0]), np.cos(y + phase[1]),
                                  np.sin(x + y + phase[2])], axis=-1)
    return image.round().astype(np.uint8)


@pytest.fixture(scope="module")
def textured_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 smooth textured images of varied sizes stored raw (exact pixels), label = index."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = tmp_path_factory.mktemp("textured") / "textured.beton"
    writer = DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                           num_workers=1)
    writer.from_indexed_dataset([(textured_image(i), i) for i in range(10)])
    return path


def centre_crop_reference(image: np.ndarray) -> np.ndarray:
    """Independent val transform: the centred square of RATIO x the short side, area-resized."""
    height, width = image.shape[:2]
    side = int(RATIO * min(height, width))
    top, left = (height - side) // 2, (width - side) // 2
    return cv2.resize(image[top:top + side, left:left + side], (RES, RES),
                      interpolation=cv2.INTER_AREA).astype(np.float64)


@pytest.mark.timeout(300)
def test_val_loader_is_centre_crop_in_file_order(textured_beton):
    indices = [7, 2, 9, 0, 5]
    loader = make_eval_loader(textured_beton, batch_size_per_rank=2, split="val", num_workers=1,
                              device="cpu", res=RES, resize_ratio=RATIO, indices=indices)
    assert len(loader) == 3  # no dropped batch: 2 + 2 + 1
    batches = [(x.clone(), y.clone()) for x, y in loader]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.shape == (5, 3, RES, RES) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert labels.tolist() == indices  # sequential: the subset in the order given
    pixels = to_pixels(images)
    for got, label in zip(pixels, labels.tolist()):
        source = textured_image(label)
        assert np.abs(got - centre_crop_reference(source)).max() <= 1.0
        # The reference protocol (resize the short side, then centre crop) up to interpolation
        # and sub-pixel alignment: ~3 levels on these ~5 levels/pixel gradients (~70 apart
        # for two different images).
        short = round(RES / RATIO)
        tv = TF.center_crop(TF.resize(torch.from_numpy(source).permute(2, 0, 1), [short],
                                      antialias=True), [RES, RES]).permute(1, 2, 0).numpy()
        assert np.abs(got - tv).mean() < 6.0
    again = torch.cat([x for x, _ in loader])
    assert torch.equal(again, images)


@pytest.mark.timeout(300)
def test_train_loader_crops_flips_and_keeps_labels(tmp_path):
    beton = write_coded_beton(tmp_path / "coded.beton")
    loader = make_eval_loader(beton, batch_size_per_rank=8, split="train", num_workers=2, device="cpu",
                              res=RES, seed=1)
    assert len(loader) == NUM_IMAGES // 8
    epochs = []
    for _ in range(2):
        epochs.append([(x.clone(), y.clone()) for x, y in loader])
    flipped = []
    for epoch in epochs:
        labels = torch.cat([y for _, y in epoch])
        assert sorted(labels.tolist()) == list(range(NUM_IMAGES))
        for images, batch_labels in epoch:
            assert images.shape == (8, 3, RES, RES)
            assert_views_match_labels(images, batch_labels)
            blue = to_pixels(images)[..., 2]
            flipped.extend((blue[:, :, 0].mean(axis=1) > blue[:, :, -1].mean(axis=1)).tolist())
    n = len(flipped)
    assert abs(np.mean(flipped) - 0.5) < 4 * math.sqrt(0.25 / n)  # the blue ramp runs left to right
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])  # a new order each epoch
    loader.set_epoch(0)
    replay = [(x.clone(), y.clone()) for x, y in loader]
    for (x0, y0), (x1, y1) in zip(epochs[0], replay):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


@pytest.mark.timeout(300)
def test_train_subset_smaller_than_a_batch_still_yields_it(textured_beton):
    loader = make_eval_loader(textured_beton, batch_size_per_rank=8, split="train", num_workers=1,
                              device="cpu", res=RES, indices=[1, 4, 6])
    assert len(loader) == 1
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, RES, RES) and sorted(labels.tolist()) == [1, 4, 6]


def test_eval_loader_rejects_bad_split_and_ratio(textured_beton):
    with pytest.raises(ValueError, match="split"):
        make_eval_loader(textured_beton, 4, "test", 1, "cpu")
    with pytest.raises(ValueError, match="resize_ratio"):
        make_eval_loader(textured_beton, 4, "val", 1, "cpu", resize_ratio=1.5)


@pytest.mark.timeout(300)
def test_an_eval_epoch_ended_early_closes_ffcv_epoch(textured_beton, monkeypatch):
    """A break mid-epoch (as kNN extraction or a preempted probe does) ends FFCV's batch thread."""
    made = spy_epoch_iterators(monkeypatch)
    loader = make_eval_loader(textured_beton, batch_size_per_rank=1, split="val", num_workers=1,
                              device="cpu", res=RES, resize_ratio=RATIO)
    assert len(loader) == 10
    for _batch in loader:
        break
    assert len(made) == 1 and made[0].close_calls >= 1 and not made[0].is_alive()
    labels = torch.cat([y for _, y in loader])  # the next pass is whole
    assert labels.tolist() == list(range(10))
    assert len(made) == 2 and not made[1].is_alive()
