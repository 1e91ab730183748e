"""Synthetic pictures for the benchmarks, which take no data from the user.

Three kinds, each the input its benchmark's recorded numbers were measured on (a new
picture would change those numbers):

- ``photo_like``: sine gradients, hard-edged shapes, clipped patches and noise, so every
  augmentation op sees flat areas, edges and clipped values (bench.fidelity, as lossless
  PNGs; tests of the ops).
- ``smooth_photo``: a smooth colour field with texture noise at a photo's JPEG size, about
  256 x 340 (bench.loader's JPEG folder).
- ``class_image``: a colour field, texture and filled shapes whose kind and colour lean on
  the class, so a linear probe has something to find (bench.gpu_check's ImageNet-style tree).

numpy only at import: PIL, OpenCV and tqdm are imported where an image is made, so the
GPU check's torch-only phases run on a node without them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


# ----- photo_like: for the augmentation ops (bench.fidelity) ---------------------------------
def photo_like(rng: np.random.Generator, height: int = 256, width: int = 340) -> np.ndarray:
    """A uint8 (H, W, 3) image: smooth colour gradients, texture noise, hard-edged shapes and
    saturated patches, so that every op sees flat areas, edges, and clipped values."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y / height, x / width
    image = np.zeros((height, width, 3))
    for c in range(3):
        a, b, phase = rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(0, 2 * math.pi)
        image[..., c] = 128 + 110 * np.sin(a * x + b * y + phase)
    for _ in range(int(rng.integers(3, 8))):  # rectangles and disks with sharp edges
        colour = rng.uniform(0, 255, size=3)
        if rng.random() < 0.5:
            top, left = rng.uniform(0, 0.8, size=2)
            mask = ((y >= top) & (y < top + rng.uniform(0.05, 0.4))
                    & (x >= left) & (x < left + rng.uniform(0.05, 0.4)))
        else:
            cy, cx, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.25)
            mask = (y - cy) ** 2 + (x - cx) ** 2 < radius ** 2
        image[mask] = colour
    image += rng.normal(0, rng.uniform(2, 15), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_photo_like_pngs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` photo-like PNGs (lossless) of about 256 x 340 into ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"test-{i:03d}.png"
        size = (int(rng.integers(224, 289)), int(rng.integers(300, 381)))
        Image.fromarray(photo_like(rng, *size)).save(path)
        paths.append(path)
    return paths


# ----- smooth_photo: JPEGs for the loader (bench.loader) -------------------------------------
def smooth_photo(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field plus texture noise, about 256 x 340 (photo-like JPEG size)."""
    import cv2

    height = int(rng.integers(224, 289))
    width = int(rng.integers(300, 381))
    coarse = rng.uniform(0, 255, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
    field = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    detail = cv2.resize(rng.normal(0, 25, size=(height // 4, width // 4, 3)).astype(np.float32),
                        (width, height), interpolation=cv2.INTER_LINEAR)
    image = field + detail + rng.normal(0, 6, size=field.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def smooth_photo_folder(cache: Path, num_images: int, classes: int = 10) -> Path:
    """``cache/synthetic-N/<class>/<i>.jpg``, generated once (quality 90)."""
    from PIL import Image
    from tqdm import tqdm

    folder = cache / f"synthetic-{num_images}"
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    for i in tqdm(range(num_images), desc="generating synthetic JPEGs", unit="img"):
        path = folder / f"class{i % classes:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_photo(rng)).save(path, quality=90)
    done.touch()
    return folder


# ----- class_image: an ImageNet-style tree with classes (bench.gpu_check) --------------------
def class_image(seed: int, label: int, size: tuple[int, int]) -> np.ndarray:
    """An ImageNet-like picture: a smooth colour field, textured noise and a few filled
    shapes whose kind and colour lean on the class (so a linear probe has something to find)."""
    import cv2

    rng = np.random.default_rng(seed)
    h = int(rng.integers(size[0] - 50, size[0] + 51))
    w = int(rng.integers(size[1] - 50, size[1] + 51))
    coarse = rng.uniform(0, 255, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
    image = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    texture = rng.normal(0, 20, size=(h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    image += cv2.resize(texture, (w, h), interpolation=cv2.INTER_LINEAR)
    base_colour = np.array([(label * 83) % 256, (label * 151) % 256, (label * 47) % 256], float)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(float(c) for c in np.clip(base_colour + rng.normal(0, 30, 3), 0, 255))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(min(h, w) // 10, min(h, w) // 3))
        kind = (label + int(rng.integers(0, 2))) % 3
        if kind == 0:
            cv2.circle(image, (cx, cy), r, colour, -1)
        elif kind == 1:
            cv2.rectangle(image, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(image, [pts], colour)
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_class_image(job: tuple[str, int, int, tuple[int, int]]) -> None:
    from PIL import Image

    path, seed, label, size = job
    Image.fromarray(class_image(seed, label, size)).save(path, quality=90)


def write_class_images(folder: Path, train_images: int, val_images: int, classes: int,
                       image_size: tuple[int, int], cores: int) -> Path:
    """``folder/{train,val}/class_XX/NNNNN.jpg`` (an ImageNet-style tree), JPEG quality 90,
    images varying around ``image_size`` (height, width); on ``cores`` forked processes."""
    import concurrent.futures
    import multiprocessing

    jobs = []
    for split, count, offset in (("train", train_images, 0), ("val", val_images, 10**6)):
        for i in range(count):
            label = i % classes
            path = folder / split / f"class_{label:02d}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(path), offset + i, label, image_size))
    if cores > 1 and len(jobs) > 200:
        # fork: nothing here has touched CUDA or started loader threads yet
        with concurrent.futures.ProcessPoolExecutor(
                cores, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(_write_class_image, jobs, chunksize=32))
    else:
        for job in jobs:
            _write_class_image(job)
    return folder
