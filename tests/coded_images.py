"""Images that carry their label in their colour, written to a .beton: any view of image
``i`` (label ``i``) tells which image it came from; and a spy on FFCV's epoch iterators
(shared by the loader tests).

Image ``i`` has constant red ``10 + 6 i`` and green ``244 - 6 i`` and a blue ramp from left
to right. Crops, resizes, flips and blurs keep red and green constant, while the ramp makes
two crops of one image differ.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ffcv_bt.data.normalize import IMAGENET_MEAN, IMAGENET_STD

NUM_IMAGES = 40
CODE_STEP = 6  # levels between the colours of consecutive labels


def coded_image(label: int, rng: np.random.Generator) -> np.ndarray:
    height, width = rng.integers(36, 80, size=2)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = 10 + CODE_STEP * label
    image[..., 1] = 244 - CODE_STEP * label
    image[..., 2] = np.linspace(0, 255, width).round().astype(np.uint8)[None, :]
    return image


def write_coded_beton(path: Path, num_images: int = NUM_IMAGES) -> Path:
    """A .beton of ``num_images`` coded images of varied sizes, half JPEG and half raw."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    rng = np.random.default_rng(0)
    samples = [(coded_image(i, rng), i) for i in range(num_images)]
    np.random.seed(0)  # FFCV draws the JPEG-or-raw choice from numpy's global state
    writer = DatasetWriter(str(path), {
        "image": RGBImageField(write_mode="proportion", compress_probability=0.5, jpeg_quality=95),
        "label": IntField()}, num_workers=1)
    writer.from_indexed_dataset(samples)
    return path


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation: (B, 3, H, W) float -> (B, H, W, 3) levels 0..255."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images.cpu() * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def assert_views_match_labels(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Each view's red and green are its label's code: the view mean within 2.5 levels (the
    neighbouring codes are 6 away) and every pixel within 4 (JPEG chroma error)."""
    pixels = to_pixels(images)
    codes = {0: 10 + CODE_STEP * labels.numpy(), 1: 244 - CODE_STEP * labels.numpy()}
    for channel, code in codes.items():
        error = pixels[..., channel] - code[:, None, None]
        assert np.abs(error.mean(axis=(1, 2))).max() <= 2.5
        assert np.abs(error).max() <= 4


def spy_epoch_iterators(monkeypatch) -> list:
    """Record every FFCV EpochIterator made from now on, with how often it was closed."""
    import ffcv.loader.loader as ffcv_loader_module

    made = []

    class Spy(ffcv_loader_module.EpochIterator):
        def __init__(self, *args, **kwargs) -> None:
            self.close_calls = 0
            super().__init__(*args, **kwargs)
            made.append(self)

        def close(self) -> None:
            self.close_calls += 1
            super().close()

    monkeypatch.setattr(ffcv_loader_module, "EpochIterator", Spy)
    return made
