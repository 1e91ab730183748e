"""Pixel fidelity of our augmentation kernels against the reference's PIL path.

Claim measured: with fixed parameters, each of our numba kernels gives the same uint8 image
as the PIL code the Barlow Twins reference runs (torchvision's functional ops on PIL
images), borders included. Per op it prints the mean and max absolute difference in levels
over all pixels of all images:

- brightness 1.3, contrast 0.7, saturation 1.2: ``PIL.ImageEnhance`` Brightness, Contrast,
  Color (what torchvision's ``adjust_*`` call for PIL images);
- hue 0.07: torchvision's ``adjust_hue`` on a PIL image (PIL HSV, 8-bit H shift);
- grayscale: ``img.convert("L")`` on 3 channels; solarize: ``ImageOps.solarize(img, 128)``;
- blur at sigma 0.1, 1 and 2: ``ImageFilter.GaussianBlur(sigma)``;
- crop-and-resize of a fixed box to 224 px: FFCV's ``resize_crop`` (OpenCV INTER_AREA)
  against PIL bicubic. Reported only: the interpolation differs on purpose.

The last line is the worst mean over the ops with a target (all but resize). A final line
times our blur against PIL's GaussianBlur (the reference's) at sigma 2 on 224 px views.

Usage: python -m bench.fidelity [--images DIR] [--n 50]
Without --images, ~50 photo-like test images (about 256 x 340) are generated in a temporary
directory.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from bench.synthetic_images import write_photo_like_pngs
from ffcv_bt.augment.blur import gaussian_blur
from ffcv_bt.augment.color_jitter import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    JITTER_PARAMS,
    SATURATION,
    color_jitter,
)
from ffcv_bt.augment.grayscale import to_grayscale
from ffcv_bt.augment.solarize import solarize

CROP_BOX = (0.1, 0.15, 0.6, 0.7)  # top, left, height, width as fractions of the image
CROP_SIZE = 224
NO_TARGET = ("resize",)  # reported, not part of the worst-case line


def load_images(folder: Path, limit: int) -> list[np.ndarray]:
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)[:limit]
    if not paths:
        raise SystemExit(f"--images {folder}: no image files found")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


# ----- our kernels and the reference's PIL calls, one pair per op -----------------------------
def jitter_part(part: int, factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def ours(image: np.ndarray) -> np.ndarray:
        params = np.full(JITTER_PARAMS, np.nan)
        params[part] = factor
        params[4:] = (part,) + tuple(p for p in range(4) if p != part)
        out = image.copy()
        color_jitter(out, params)
        return out
    return ours


def in_place(kernel: Callable, *args) -> Callable[[np.ndarray], np.ndarray]:
    def ours(image: np.ndarray) -> np.ndarray:
        out = image.copy()
        kernel(out, *args)
        return out
    return ours


def crop_box(image: np.ndarray) -> tuple[int, int, int, int]:
    height, width = image.shape[:2]
    top, left, h, w = CROP_BOX
    return int(top * height), int(left * width), int(h * height), int(w * width)


def ffcv_resize(image: np.ndarray) -> np.ndarray:
    from ffcv.libffcv import resize_crop

    top, left, h, w = crop_box(image)
    out = np.empty((CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    resize_crop(np.ascontiguousarray(image), top, top + h, left, left + w, out)
    return out


def pil_resize(image: np.ndarray) -> np.ndarray:
    top, left, h, w = crop_box(image)
    crop = Image.fromarray(image).crop((left, top, left + w, top + h))
    return np.asarray(crop.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BICUBIC))


def pil(function: Callable[[Image.Image], Image.Image]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda image: np.asarray(function(Image.fromarray(image)))


def pil_hue(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    from torchvision.transforms import _functional_pil as F_pil

    return pil(lambda img: F_pil.adjust_hue(img, factor))


def op_pairs() -> dict[str, tuple[Callable, Callable]]:
    """op name -> (ours, reference), each mapping a uint8 (H, W, 3) array to a new one."""
    pairs = {
        "brightness 1.3": (jitter_part(BRIGHTNESS, 1.3), pil(lambda i: ImageEnhance.Brightness(i).enhance(1.3))),
        "contrast 0.7": (jitter_part(CONTRAST, 0.7), pil(lambda i: ImageEnhance.Contrast(i).enhance(0.7))),
        "saturation 1.2": (jitter_part(SATURATION, 1.2), pil(lambda i: ImageEnhance.Color(i).enhance(1.2))),
        "hue 0.07": (jitter_part(HUE, 0.07), pil_hue(0.07)),
        "grayscale": (in_place(to_grayscale), pil(lambda i: i.convert("L").convert("RGB"))),
        "solarize 128": (in_place(solarize, 128), pil(lambda i: ImageOps.solarize(i, 128))),
    }
    for sigma in (0.1, 1.0, 2.0):
        pairs[f"blur sigma {sigma:g}"] = (in_place(gaussian_blur, sigma, False, 256),
                                          pil(lambda i, s=sigma: i.filter(ImageFilter.GaussianBlur(s))))
    pairs["resize"] = (ffcv_resize, pil_resize)
    return pairs


def fidelity(images: list[np.ndarray]) -> dict[str, tuple[float, int]]:
    """op name -> (mean, max) absolute difference in levels between ours and the reference,
    over every pixel and channel of ``images``."""
    results = {}
    for name, (ours, reference) in op_pairs().items():
        total, count, worst = 0.0, 0, 0
        for image in images:
            diff = np.abs(ours(image).astype(np.int16) - reference(image).astype(np.int16))
            total += float(diff.sum())
            count += diff.size
            worst = max(worst, int(diff.max()))
        results[name] = (total / count, worst)
    return results


def worst_mean(results: dict[str, tuple[float, int]]) -> tuple[str, float]:
    """(op, mean) of the largest mean difference among the ops with a target."""
    scored = {name: mean for name, (mean, _) in results.items() if not name.startswith(NO_TARGET)}
    name = max(scored, key=scored.get)
    return name, scored[name]


# ----- blur speed: ours against the reference's PIL blur ------------------------------------------
def blur_speed(images: list[np.ndarray], sigma: float = 2.0, repeats: int = 5) -> tuple[float, float]:
    """Seconds per 224 x 224 view (best of ``repeats`` rounds over the images' centre crops)
    for (PIL's ``ImageFilter.GaussianBlur``, ours), run alternately so machine load hits
    both alike. PIL's time includes no array conversion: it blurs PIL images."""
    views = [np.ascontiguousarray(image[:CROP_SIZE, :CROP_SIZE]) for image in images]
    views = [v for v in views if v.shape[:2] == (CROP_SIZE, CROP_SIZE)]
    pil_views = [Image.fromarray(v) for v in views]
    blur = ImageFilter.GaussianBlur(sigma)
    gaussian_blur(views[0].copy(), sigma, False, 256)  # compile outside the timing
    best_pil, best_ours = math.inf, math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for v in pil_views:
            v.filter(blur)
        best_pil = min(best_pil, (time.perf_counter() - start) / len(views))
        work = [v.copy() for v in views]
        start = time.perf_counter()
        for v in work:
            gaussian_blur(v, sigma, False, 256)
        best_ours = min(best_ours, (time.perf_counter() - start) / len(views))
    return best_pil, best_ours


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--n", type=int, default=50, help="number of images to use")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise SystemExit("--n must be >= 1")
    if args.images:
        images = load_images(args.images, args.n)
        source = str(args.images)
    else:
        with tempfile.TemporaryDirectory(prefix="fidelity-") as folder:
            images = [np.asarray(Image.open(p).convert("RGB"))
                      for p in write_photo_like_pngs(Path(folder), args.n)]
        source = "generated photo-like images"
    print(f"fidelity of our kernels vs the reference's PIL path: {len(images)} {source}")
    results = fidelity(images)
    for name, (mean, worst) in results.items():
        note = "  (no target: FFCV INTER_AREA vs PIL bicubic)" if name.startswith(NO_TARGET) else ""
        print(f"fidelity {name}: mean {mean:.4f} max {worst} levels{note}")
    name, mean = worst_mean(results)
    print(f"fidelity worst mean abs diff: {mean:.4f} levels ({name})")
    pil, ours = blur_speed(images)
    print(f"blur speed at sigma 2, 224 px view: PIL {pil * 1e3:.3f} ms, ours {ours * 1e3:.3f} ms, "
          f"ratio PIL/ours {pil / ours:.2f}")


if __name__ == "__main__":
    main()
