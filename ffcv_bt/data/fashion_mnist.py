"""Materialise Debian's Fashion-MNIST files as an ImageNet-style folder of RGB JPEGs.

The demo then converts that folder with the same code as real ImageNet, so the demo
exercises the real data path. Nothing is downloaded: the source is the Debian package
``dataset-fashion-mnist`` (idx files, gzipped).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ffcv_bt.atomic_files import atomic_write_json
from ffcv_bt.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Digit prefixes keep the sorted folder order equal to the label order 0..9.
CLASS_NAMES = ("0_T-shirt_top", "1_Trouser", "2_Pullover", "3_Dress", "4_Coat",
               "5_Sandal", "6_Shirt", "7_Sneaker", "8_Bag", "9_Ankle_boot")
SOURCE_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MARKER = "fashion_mnist.json"
JPEG_QUALITY = 95


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped idx file of unsigned bytes (magic 0x0000 0x08 ndim, big-endian dims)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: not found "
                           "(install the Debian package dataset-fashion-mnist)") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an idx file of unsigned bytes (header {raw[:4].hex()})")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: header truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=header_size)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def _read_split(source_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = SOURCE_FILES[split]
    images, labels = read_idx(source_dir / images_file), read_idx(source_dir / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{source_dir}: {images_file} {images.shape} does not match "
                           f"{labels_file} {labels.shape}")
    return images, labels


def _first_per_class(labels: np.ndarray, per_class: int | None, split: str) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class (all of them for None)."""
    chosen = []
    for label in range(len(CLASS_NAMES)):
        members = np.flatnonzero(labels == label)
        if per_class is not None and per_class > len(members):
            raise DataError(f"{split}: {per_class} images per class asked, "
                               f"class {CLASS_NAMES[label]} has {len(members)}")
        chosen.append(members if per_class is None else members[:per_class])
    return np.sort(np.concatenate(chosen))


def _is_complete(images_dir: Path, wanted: dict[str, dict[str, int]]) -> bool:
    """True when ``images_dir`` was materialised with the same counts and still holds them."""
    try:
        recorded = json.loads((images_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if recorded != wanted:
        return False
    return all(len(os.listdir(images_dir / split / name)) == count
               for split, counts in wanted.items() for name, count in counts.items())


def materialise_fashion_mnist(out_dir: str | os.PathLike, train_per_class: int | None = None,
                              val_per_class: int | None = None,
                              source_dir: str | os.PathLike = FASHION_MNIST_DIR) -> Path:
    """Write ``out_dir/images/{train,val}/<class>/<split>_<index>.jpg`` and return that folder.

    Takes the first ``*_per_class`` images of each class (all: 6000 train, 1000 val). A folder
    already complete with the same counts is reused; an interrupted run leaves only a
    ``.images.partial`` folder, replaced on the next call.
    """
    out_dir, source_dir = Path(out_dir), Path(source_dir)
    images_dir, partial = out_dir / "images", out_dir / ".images.partial"
    splits = {split: _read_split(source_dir, split) for split in SOURCE_FILES}
    picked = {"train": _first_per_class(splits["train"][1], train_per_class, "train"),
              "val": _first_per_class(splits["val"][1], val_per_class, "val")}
    wanted = {split: {name: int(np.sum(splits[split][1][picked[split]] == label))
                      for label, name in enumerate(CLASS_NAMES)} for split in SOURCE_FILES}
    if _is_complete(images_dir, wanted):
        return images_dir
    if images_dir.exists() and not (images_dir / MARKER).exists():
        raise DataError(f"{images_dir}: exists but was not made by the Fashion-MNIST demo; "
                           "remove it or choose another --out-dir")

    shutil.rmtree(partial, ignore_errors=True)
    for split, (images, labels) in splits.items():
        for name in CLASS_NAMES:
            (partial / split / name).mkdir(parents=True)
        for index in tqdm(picked[split], desc=f"fashion-mnist {split} jpegs", unit="img"):
            path = partial / split / CLASS_NAMES[labels[index]] / f"{split}_{index:05d}.jpg"
            Image.fromarray(images[index]).convert("RGB").save(path, quality=JPEG_QUALITY)
    atomic_write_json(partial / MARKER, wanted)
    if images_dir.exists():
        shutil.rmtree(images_dir)
    os.replace(partial, images_dir)
    return images_dir
