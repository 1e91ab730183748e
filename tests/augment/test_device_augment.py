"""``aug.device: gpu``: the batched torch ops against the reference's PIL calls, and the two
loader modes against each other and against PIL on the loader's own crops.

The reference path is torchvision's functional ops on PIL images (``_functional_pil``:
ImageEnhance blends, the 8-bit HSV hue shift), ``ImageFilter.GaussianBlur``, ``convert("L")``
and ``ImageOps.solarize``, applied with the decisions the loader drew. No numba kernel is
called directly here (see the Makefile's KERNEL_TESTS): the numba side runs inside FFCV.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import _functional_pil as F_pil

from bench.synthetic_images import photo_like
from ffcv_bt.augment import device_augment as dev
from ffcv_bt.augment.view_params import BLUR, GRAY, JITTER, PARAMS_PER_VIEW, SOLARIZE
from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader

PIL_PARTS = [F_pil.adjust_brightness, F_pil.adjust_contrast, F_pil.adjust_saturation,
             F_pil.adjust_hue]
THRESHOLD = 128


def pil_reference(view: np.ndarray, row: np.ndarray, threshold: int = THRESHOLD) -> np.ndarray:
    """The reference's transforms after crop and flip, with the decisions of one view."""
    image = Image.fromarray(view)
    jitter = row[JITTER]
    if jitter[0]:
        for part in jitter[5:].astype(int):
            if not np.isnan(jitter[1 + part]):
                image = PIL_PARTS[part](image, float(jitter[1 + part]))
    if row[GRAY]:
        image = F_pil.to_grayscale(image, num_output_channels=3)
    if row[BLUR.start]:
        image = image.filter(ImageFilter.GaussianBlur(float(row[BLUR.start + 1])))
    if row[SOLARIZE]:
        image = ImageOps.solarize(image, threshold)
    return np.asarray(image)


def as_planes(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.int32)


def as_images(planes: torch.Tensor) -> np.ndarray:
    return planes.permute(0, 2, 3, 1).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    rng = np.random.default_rng(11)
    return np.stack([photo_like(rng, 37, 53) for _ in range(8)])


@pytest.mark.parametrize("part,factors", [
    (0, [0.0, 0.6, 0.93, 1.07, 1.4, 2.5, 1.0, 0.2]),   # brightness
    (1, [0.0, 0.6, 0.93, 1.07, 1.4, 2.5, 1.0, 0.2]),   # contrast
    (2, [0.0, 0.6, 0.93, 1.07, 1.4, 2.5, 1.0, 0.2]),   # saturation
    (3, [-0.5, -0.1, -0.013, 0.0, 0.004, 0.05, 0.1, 0.5]),  # hue
])
def test_colour_parts_equal_pil(photos, part, factors):
    torch_part = [dev.adjust_brightness, dev.adjust_contrast, dev.adjust_saturation,
                  dev.rotate_hue][part]
    ours = as_images(torch_part(as_planes(photos), torch.tensor(factors, dtype=torch.float64)))
    for i, factor in enumerate(factors):
        expected = np.asarray(PIL_PARTS[part](Image.fromarray(photos[i]), factor))
        np.testing.assert_array_equal(ours[i], expected, err_msg=f"part {part} factor {factor}")


def test_grayscale_solarize_and_blur_equal_pil(photos):
    gray = as_images(dev.to_grayscale(as_planes(photos)))
    solar = as_images(dev.solarize(as_planes(photos), THRESHOLD))
    # radius 0 and 1 (the recipe's sigmas) and beyond (radius 2 and 4)
    sigmas = np.array([0.1, 0.45, 0.9, 1.3, 2.0, 2.7, 4.5, 1.7])
    blurred = as_images(dev.gaussian_blur(as_planes(photos), sigmas))
    for i in range(len(photos)):
        image = Image.fromarray(photos[i])
        np.testing.assert_array_equal(gray[i], np.asarray(F_pil.to_grayscale(image, 3)))
        np.testing.assert_array_equal(solar[i], np.asarray(ImageOps.solarize(image, THRESHOLD)))
        np.testing.assert_array_equal(blurred[i], np.asarray(image.filter(
            ImageFilter.GaussianBlur(float(sigmas[i])))), err_msg=f"sigma {sigmas[i]}")


def random_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Decision rows as the loader lays them out: random factors, orders and flags."""
    rows = np.zeros((n, PARAMS_PER_VIEW))
    jitter = rows[:, JITTER]
    jitter[:, 0] = rng.random(n) < 0.8
    jitter[:, 1:4] = rng.uniform(0.6, 1.4, size=(n, 3))
    jitter[:, 4] = rng.uniform(-0.1, 0.1, size=n)
    jitter[rng.random(n) < 0.2, 1 + rng.integers(0, 4)] = np.nan  # a disabled part
    jitter[:, 5:] = [rng.permutation(4) for _ in range(n)]
    rows[:, GRAY] = rng.random(n) < 0.3
    rows[:, BLUR.start] = rng.random(n) < 0.6
    rows[:, BLUR.start + 1] = rng.uniform(0.1, 2.0, size=n)
    rows[:, SOLARIZE] = rng.random(n) < 0.3
    return rows


def test_augment_views_equals_the_pil_chain():
    rng = np.random.default_rng(3)
    images = np.stack([photo_like(rng, 29, 31) for _ in range(40)])
    rows = random_rows(len(images), rng)
    ours = dev.augment_views(torch.from_numpy(images), torch.from_numpy(rows), THRESHOLD).numpy()
    for i in range(len(images)):
        np.testing.assert_array_equal(ours[i], pil_reference(images[i], rows[i]),
                                      err_msg=f"sample {i}, decisions {rows[i]}")


def test_augment_views_rejects_bad_shapes():
    images = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        dev.augment_views(images.float(), torch.zeros(2, PARAMS_PER_VIEW), THRESHOLD)
    with pytest.raises(ValueError, match="decision rows"):
        dev.augment_views(images, torch.zeros(3, PARAMS_PER_VIEW), THRESHOLD)


# ----- through the loader --------------------------------------------------------------------
NUM_PHOTOS = 48


@pytest.fixture(scope="module")
def photo_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photo-like images of varied sizes stored raw (exact pixels)."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    rng = np.random.default_rng(4)
    samples = [(photo_like(rng, int(rng.integers(50, 90)), int(rng.integers(50, 90))), 0)
               for _ in range(NUM_PHOTOS)]
    path = tmp_path_factory.mktemp("photos") / "photos.beton"
    DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1).from_indexed_dataset(samples)
    return path


def raw_batches(loader) -> list[tuple[np.ndarray, ...]]:
    """The FFCV outputs of one pass (uint8 views, decision rows), copied out of the buffers."""
    return [tuple(t.numpy().copy() for t in batch) for batch in loader.ffcv_loader]


@pytest.mark.timeout(600)
def test_both_modes_equal_pil_on_the_loaders_own_crops(photo_beton):
    """The numba loader (``aug.device: cpu``, compiled by FFCV as in training) and the device
    path (``gpu``, run here on the CPU) against PIL applied to the device path's crops with
    the decisions the loader emitted. Both agree with PIL to the level."""
    aug = AugmentationParams.from_config(load_recipe(RULES_DIR / "base.yaml").aug)
    aug = dataclasses.replace(aug, solarize_p=(0.3, 0.3))  # more solarized views to compare
    common = dict(batch_size_per_rank=16, num_workers=1, aug=aug, res=40, seed=5, device="cpu",
                  order="sequential")
    numba_path = make_pretrain_loader(photo_beton, **common, augment_on="cpu")
    device_path = make_pretrain_loader(photo_beton, **common, augment_on="gpu")
    numba_raw, device_raw = raw_batches(numba_path), raw_batches(device_path)
    numba_views = [tuple(v.clone() for v in batch) for batch in numba_path]
    device_views = [tuple(v.clone() for v in batch) for batch in device_path]

    applied = np.zeros(4)
    for (numba_images,), (crops, rows) in zip(numba_raw, device_raw):
        assert rows.shape == (16, 2, PARAMS_PER_VIEW)
        for i in range(len(crops)):
            for v in range(2):
                expected = pil_reference(crops[i, v], rows[i, v])
                np.testing.assert_array_equal(numba_images[i, v], expected,
                                              err_msg=f"numba loader, sample {i} view {v}")
                applied += [rows[i, v, 0], rows[i, v, GRAY], rows[i, v, BLUR.start],
                            rows[i, v, SOLARIZE]]
    assert applied.min() >= 5, applied  # every op was exercised

    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    worst = 0.0
    for numba_batch, device_batch in zip(numba_views, device_views, strict=True):
        for a, b in zip(numba_batch, device_batch):
            worst = max(worst, float(((a - b).abs() * std * 255).max()))
    assert len(device_views) == len(numba_views) == NUM_PHOTOS // 16
    assert worst <= 1.0, f"device path differs from the numba path by {worst} levels"


def test_blur_sends_its_weights_to_the_device_once(photos, monkeypatch):
    """Four radii, one host-to-device copy (indices and weights together), not three per radius;
    the values are those of the per-sample blur."""
    sigmas = np.array([0.1, 0.45, 0.9, 1.3, 2.0, 2.7, 4.5, 1.7])
    assert len(np.unique(dev.pil_box_weights(sigmas)[0])) >= 4
    planes = as_planes(photos)
    device_moves = []
    original_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        if any(isinstance(a, (torch.device, str)) for a in args) or "device" in kwargs:
            device_moves.append(tuple(self.shape))
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    together = dev.gaussian_blur(planes, sigmas)
    monkeypatch.undo()
    assert device_moves == [(3, len(sigmas))]
    for i in range(len(sigmas)):
        alone = dev.gaussian_blur(planes[i:i + 1], sigmas[i:i + 1])
        assert torch.equal(together[i:i + 1], alone), f"sigma {sigmas[i]}"
