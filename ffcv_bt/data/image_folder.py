"""Reading an ImageNet-style folder: classes, image files, and each image as RGB.

``DATA/{train,val}/<class>/<image>``: class names are the sorted sub-folder names of train/
(val/ must not have others); files with an image extension are samples. Every image is
brought to RGB the same way (RGB_CONVERSION, recorded in the manifest) and shrunk to the
stored resolution.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

from ffcv_bt.data.manifest import SPLITS, count_per_class
from ffcv_bt.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
RGB_CONVERSION = (
    "EXIF orientation applied; 16-bit (I;16*, I) scaled by 255/65535 with rounding; "
    "alpha (RGBA, LA, PA, P or RGB with transparency) composited on white; "
    "every other mode (L, 1, P, CMYK, YCbCr...) by PIL convert('RGB'); "
    "longest side shrunk to max_resolution (cv2 INTER_AREA, each side at least 1 px)")


@dataclass(frozen=True)
class Sample:
    """One image file and its class index."""

    path: Path
    label: int


def skip_record(path: Path, reason: str) -> dict[str, str]:
    return {"path": str(path), "reason": reason}


def list_classes(split_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Class folder names of ``split_dir`` sorted by name (torchvision ImageFolder order).

    Hidden entries and files at class level are ignored and returned as skipped entries.
    """
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing directory (expected one subfolder per class)")
    classes, skipped = [], []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped.append(skip_record(Path(entry.path), "hidden"))
        elif entry.is_dir():
            classes.append(entry.name)
        else:
            skipped.append(skip_record(Path(entry.path), "not a class directory"))
    if not classes:
        raise DataError(f"{split_dir}: no class subfolders found")
    return classes, skipped


def list_images(class_dir: Path, label: int) -> tuple[list[Sample], list[dict[str, str]]]:
    """Image files directly inside ``class_dir``, sorted by name, plus what was ignored and why."""
    samples, skipped = [], []
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            skipped.append(skip_record(path, "hidden"))
        elif entry.is_dir():
            skipped.append(skip_record(path, "directory inside a class folder"))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(skip_record(path, "not an image file extension"))
        else:
            samples.append(Sample(path, label))
    return samples, skipped


def scan_split(split_dir: Path, classes: Sequence[str]) -> tuple[list[Sample], list[dict[str, str]]]:
    """All images of one split, class by class in index order; labels index ``classes``."""
    samples, skipped = [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        found, ignored = list_images(class_dir, label)
        samples += found
        skipped += ignored
    return samples, skipped


IMAGENET100 = "imagenet100"
IMAGENET100_FILE = Path(__file__).with_name("imagenet100.txt")


def read_class_list(spec: str | Path) -> list[str]:
    """Class folder names from a file (one per line; blank lines and ``#`` comments
    ignored), or the shipped ImageNet-100 list (CMC, Tian et al. 2019) for ``imagenet100``."""
    path = IMAGENET100_FILE if str(spec) == IMAGENET100 else Path(spec)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise DataError(f"{path}: cannot read the class list ({error.strerror or error})") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise DataError(f"{path}: the class list names no class")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: classes listed more than once: {', '.join(repeated)}")
    return names


# ------------------------------------------------------------------------ image loading

def scan_dataset(data_dir: Path, only: Sequence[str] | None = None
                 ) -> tuple[list[str], dict[str, list[Sample]], list[dict[str, str]]]:
    """Classes (from train/), samples per split and ignored entries; val uses train's indices.

    ``only``: keep just these classes (labels index them in sorted order, as ImageFolder
    would on a folder holding only them); a name that train/ lacks is a DataError listing
    every such name. Folders of other classes are left out silently, in both splits.
    """
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found")
    classes, skipped = list_classes(data_dir / "train")
    val_classes, val_skipped = list_classes(data_dir / "val")
    if only is not None:
        missing = [name for name in only if name not in classes]
        if missing:
            raise DataError(f"{data_dir / 'train'}: {len(missing)} of the {len(only)} listed "
                            f"classes are not class folders there: {', '.join(missing)}")
        classes = sorted(only)
        val_classes = [name for name in val_classes if name in classes]
    unknown = [name for name in val_classes if name not in classes]
    if unknown:
        raise DataError(f"{data_dir / 'val'}: classes missing from {data_dir / 'train'}: "
                           f"{', '.join(unknown)}")
    skipped += val_skipped
    samples = {}
    for split in SPLITS:
        samples[split], ignored = scan_split(data_dir / split, classes)
        skipped += ignored
    return classes, samples, skipped


def check_not_empty(data_dir: Path, classes: Sequence[str], samples: dict[str, list[Sample]]) -> None:
    """Every train class needs an image (as in ImageFolder), and val needs at least one."""
    train_counts = count_per_class([s.label for s in samples["train"]], classes)
    empty = [str(data_dir / "train" / name) for name, count in train_counts.items() if count == 0]
    if empty:
        raise DataError(f"train classes without readable images: {', '.join(empty)}")
    if not samples["val"]:
        raise DataError(f"{data_dir / 'val'}: no readable images")


def _scale_16bit_to_8bit(image: Image.Image) -> Image.Image:
    """Map 0..65535 linearly onto 0..255 with rounding (PIL's own conversion clips at 255)."""
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(gray)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as an 8-bit RGB image, the way it is meant to be displayed.

    EXIF orientation is applied first. Transparent images are composited on white (dropping
    alpha would expose whatever colour sits under transparent pixels, often black or noise).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        image = _scale_16bit_to_8bit(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        foreground = image.convert("RGBA")
        white = Image.new("RGBA", foreground.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, foreground).convert("RGB")
    return image.convert("RGB")


def fit_max_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink an HxWx3 image so its longest side is ``max_side``; smaller images are kept.

    Done here rather than by FFCV's RGBImageField, whose resizer truncates sizes and turns a
    2000x3 image into 500x0.
    """
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def load_rgb(path: Path, max_side: int | None) -> np.ndarray:
    """Read an image file as a contiguous HxWx3 uint8 RGB array (see ``to_rgb``)."""
    with Image.open(path) as image:
        rgb = np.asarray(to_rgb(image))
    return np.ascontiguousarray(fit_max_side(rgb, max_side))


def check_image(path: Path) -> str | None:
    """Return why ``path`` cannot be converted, or None when it can.

    Runs the whole conversion except the resize. JPEGs are decoded in PIL's draft mode
    (libjpeg's DCT scaling to 1/8 size): every byte is still entropy-decoded, so truncated
    and corrupt files fail as they would at full size, but the inverse DCT and colour
    conversion shrink. Measured here: 1.4 ms against 2.8 ms for a full load of a 500x375
    photo-like JPEG (0.75x for pure noise, where entropy decoding dominates); other formats
    are decoded in full.
    """
    try:
        with Image.open(path) as image:
            image.draft(None, (1, 1))
            to_rgb(image)
    except Exception as error:  # any decoder failure means the file is unusable
        return f"{type(error).__name__}: {error}"
    return None

