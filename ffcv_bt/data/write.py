"""Convert an ImageNet-style folder tree into FFCV ``.beton`` files, label subsets and a manifest.

Input ``DATA/{train,val}/<class>/<image>``; output in ``OUT``:
``train.beton`` and ``val.beton`` (fields "image": RGBImageField, "label": IntField),
``train_subset_1.txt`` and ``train_subset_10.txt`` (ascending train.beton indices) and
``manifest.json``.

The steps run in an order that keeps failures cheap and outputs whole:
scan -> validate every image (parallel, before anything is written) -> resolve the label
subsets -> write each .beton to a temporary name and rename it -> subset files -> manifest last.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import hashlib
import importlib.metadata
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import PIL
from PIL import Image, ImageOps
from tqdm import tqdm

from ffcv_bt.atomic_files import atomic_write
from ffcv_bt.data.manifest import MANIFEST_NAME, SPLITS, Manifest, beton_path, count_per_class
from ffcv_bt.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp"})
WRITE_MODES = ("raw", "jpg", "smart", "proportion")
SUBSET_PERCENTS = (1, 10)
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


# ----------------------------------------------------------------------------- scanning

def _skip(path: Path, reason: str) -> dict[str, str]:
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
            skipped.append(_skip(Path(entry.path), "hidden"))
        elif entry.is_dir():
            classes.append(entry.name)
        else:
            skipped.append(_skip(Path(entry.path), "not a class directory"))
    if not classes:
        raise DataError(f"{split_dir}: no class subfolders found")
    return classes, skipped


def list_images(class_dir: Path, label: int) -> tuple[list[Sample], list[dict[str, str]]]:
    """Image files directly inside ``class_dir``, sorted by name, plus what was ignored and why."""
    samples, skipped = [], []
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            skipped.append(_skip(path, "hidden"))
        elif entry.is_dir():
            skipped.append(_skip(path, "directory inside a class folder"))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(_skip(path, "not an image file extension"))
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


# ------------------------------------------------------------------------ image loading

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


_HELPER: concurrent.futures.ProcessPoolExecutor | None = None
_IN_HELPER = False


def _mark_helper() -> None:
    global _IN_HELPER
    _IN_HELPER = True
    # A spawned process spawns its own children too; FFCV's workers should fork from this
    # clean helper instead (re-importing ffcv per worker costs ~10 s).
    multiprocessing.set_start_method("fork", force=True)


def in_clean_process(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function`` in a long-lived helper process spawned for the purpose.

    FFCV's writer and the validation pool fork worker processes. Forking a process whose
    torch/numba/FFCV-loader threads are running (a test session, a notebook) can kill or
    deadlock a worker, and FFCV's writer then waits forever (seen in this project's test
    suite). The spawned helper runs nothing but this module's work; it is reused, so ffcv
    is imported in it once.
    """
    global _HELPER
    if _IN_HELPER:
        return function(*args, **kwargs)
    if _HELPER is None:
        _HELPER = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_mark_helper)
        atexit.register(_HELPER.shutdown)
    return _HELPER.submit(function, *args, **kwargs).result()


def find_unreadable(paths: Sequence[Path], num_workers: int) -> list[dict[str, str]]:
    """Check every image (in ``num_workers`` processes) and return the unreadable ones."""
    return in_clean_process(_find_unreadable_here, list(paths), num_workers)


def _find_unreadable_here(paths: Sequence[Path], num_workers: int) -> list[dict[str, str]]:
    """find_unreadable's work, in the current process."""
    chunk = max(1, min(256, len(paths) // (4 * num_workers)))
    with contextlib.ExitStack() as stack:
        if num_workers > 1 and len(paths) > 1:
            pool = stack.enter_context(multiprocessing.Pool(num_workers))
            reasons: Iterator[str | None] = pool.imap(check_image, paths, chunksize=chunk)
        else:
            reasons = map(check_image, paths)
        reasons = list(tqdm(reasons, total=len(paths), desc="checking images", unit="img"))
    return [_skip(path, f"unreadable: {reason}")
            for path, reason in zip(paths, reasons) if reason is not None]


# ---------------------------------------------------------------------------- subsets

def subset_size(percent: int, class_size: int) -> int:
    """round(percent / 100 * class_size), halves rounded up, and at least 1."""
    return max(1, (percent * class_size + 50) // 100)


def balanced_subset(labels: Sequence[int], percent: int, seed: int) -> list[int]:
    """Ascending sample indices holding ``subset_size(percent, n)`` random images of each class."""
    rng = np.random.default_rng([seed, percent])
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    chosen: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        chosen += rng.choice(members, size=subset_size(percent, len(members)), replace=False).tolist()
    return sorted(chosen)


def subset_from_file(list_path: Path, samples: Sequence[Sample],
                     skipped_names: set[str]) -> tuple[list[int], dict[str, Any]]:
    """Train indices of the file names listed in ``list_path`` (e.g. SimCLR's 1percent.txt).

    Lines are matched by file name. Names of files skipped as unreadable are dropped and
    reported; any other unknown or ambiguous name is an error.
    """
    try:
        text = list_path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"subset file {list_path}: cannot read it ({error})") from None
    names = [Path(line.strip()).name for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"subset file {list_path}: no file names in it")
    index_of: dict[str, int] = {}
    counts = Counter(sample.path.name for sample in samples)
    for index, sample in enumerate(samples):
        index_of.setdefault(sample.path.name, index)
    dropped = sorted({name for name in names if name in skipped_names and name not in index_of})
    missing = [name for name in names if name not in index_of and name not in skipped_names]
    if missing:
        raise DataError(f"subset file {list_path}: {len(missing)} of {len(names)} names are not "
                           f"train images, first ones: {', '.join(missing[:5])}")
    ambiguous = sorted({name for name in names if counts[name] > 1})
    if ambiguous:
        raise DataError(f"subset file {list_path}: names matching several train images: "
                           f"{', '.join(ambiguous[:5])}")
    indices = sorted({index_of[name] for name in names if name in index_of})
    sha256 = hashlib.sha256(list_path.read_bytes()).hexdigest()
    how = {"drawn": "from file", "source": str(list_path.resolve()), "sha256": sha256,
           "names_listed": len(names), "dropped_unreadable": dropped}
    return indices, how


def resolve_subsets(samples: Sequence[Sample], subset_files: dict[int, str] | None, seed: int,
                    unreadable: Sequence[dict[str, str]]) -> dict[int, tuple[list[int], dict[str, Any]]]:
    """The 1% and 10% subsets: from the given lists, else class-balanced random with ``seed``."""
    subset_files = dict(subset_files or {})
    unknown = sorted(set(subset_files) - set(SUBSET_PERCENTS))
    if unknown:
        raise DataError(f"subset files given for {unknown} %; only {list(SUBSET_PERCENTS)} exist")
    skipped_names = {Path(entry["path"]).name for entry in unreadable}
    subsets = {}
    for percent in SUBSET_PERCENTS:
        if percent in subset_files:
            subsets[percent] = subset_from_file(Path(subset_files[percent]), samples, skipped_names)
        else:
            indices = balanced_subset([s.label for s in samples], percent, seed)
            subsets[percent] = indices, {"drawn": f"class-balanced random, seed={seed}"}
    return subsets


# ------------------------------------------------------------------------- conversion

class FolderImages:
    """Indexable (image, label) pairs for FFCV's DatasetWriter, read in its worker processes.

    A file that fails to load (after passing validation) cannot be dropped at that point, so
    it is flagged in ``failed`` (shared memory) and stands in as a black pixel; the caller
    then refuses the file. The global numpy RNG, which FFCV's 'proportion' mode draws from,
    is seeded per sample so the same inputs and seed give the same .beton.
    """

    def __init__(self, samples: Sequence[Sample], max_side: int | None, seed: int):
        self.samples = list(samples)
        self.max_side = max_side
        self.seed = seed
        self.failed = multiprocessing.RawArray("b", max(1, len(self.samples)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        sample = self.samples[index]
        np.random.seed([self.seed, index])
        try:
            image = load_rgb(sample.path, self.max_side)
        except Exception:  # reported by the caller once the writer has finished
            self.failed[index] = 1
            image = np.zeros((1, 1, 3), np.uint8)
        return image, sample.label


def _load_error(path: Path, max_side: int | None) -> str:
    """Why loading ``path`` fails, found by trying again in this process."""
    try:
        load_rgb(path, max_side)
    except Exception as error:  # reporting, not handling
        return f"{type(error).__name__}: {error}"
    return "failed in a writer process only"


@contextlib.contextmanager
def _labelled_ffcv_progress(description: str) -> Iterator[None]:
    """Give FFCV's own writer progress bar a name and an images/s unit while it runs."""
    import ffcv.writer

    bare = ffcv.writer.tqdm
    ffcv.writer.tqdm = functools.partial(bare, desc=description, unit="img")
    try:
        yield
    finally:
        ffcv.writer.tqdm = bare


def write_beton(samples: Sequence[Sample], path: Path, **settings: Any) -> None:
    """Write ``samples`` to ``path`` with FFCV; the file appears only once complete.

    Runs in the clean helper process (see in_clean_process).
    """
    in_clean_process(_write_beton_here, list(samples), path, **settings)


def _write_beton_here(samples: Sequence[Sample], path: Path, *, write_mode: str,
                      max_resolution: int | None, compress_probability: float, jpeg_quality: int,
                      num_workers: int, chunk_size: int, seed: int) -> None:
    """write_beton's work, in the current process."""
    from ffcv.fields import IntField, RGBImageField  # importing ffcv pulls in torch (~7 s)
    from ffcv.writer import DatasetWriter

    images = FolderImages(samples, max_resolution, seed)
    fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=None,
                                     jpeg_quality=jpeg_quality,
                                     compress_probability=compress_probability),
              "label": IntField()}

    def write(tmp: str) -> None:
        with _labelled_ffcv_progress(f"writing {path.name}"):
            DatasetWriter(tmp, fields, num_workers=num_workers).from_indexed_dataset(
                images, chunksize=chunk_size)
        failed = [samples[i].path for i in range(len(samples)) if images.failed[i]]
        if failed:
            listing = "\n  ".join(f"{p}: {_load_error(p, max_resolution)}" for p in failed)
            raise DataError(f"{len(failed)} images passed validation but failed to load while "
                               f"writing {path}; nothing written:\n  {listing}")

    atomic_write(path, write)


# ---------------------------------------------------------------------------- the run

def default_num_workers() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0))


def _check_settings(write_mode: str, max_resolution: int | None, compress_probability: float,
                    jpeg_quality: int, num_workers: int, chunk_size: int) -> None:
    problems = []
    if write_mode not in WRITE_MODES:
        problems.append(f"write_mode={write_mode!r} (choose from {', '.join(WRITE_MODES)})")
    if max_resolution is not None and max_resolution < 1:
        problems.append(f"max_resolution={max_resolution} (must be >= 1)")
    if not 0 <= compress_probability <= 1:
        problems.append(f"compress_probability={compress_probability} (must be in [0, 1])")
    if not 0 <= jpeg_quality <= 100:
        problems.append(f"jpeg_quality={jpeg_quality} (must be in [0, 100])")
    if num_workers < 1:
        problems.append(f"num_workers={num_workers} (must be >= 1)")
    if chunk_size < 1:
        problems.append(f"chunk_size={chunk_size} (must be >= 1)")
    if problems:
        raise DataError("bad settings: " + "; ".join(problems))


def scan_dataset(data_dir: Path) -> tuple[list[str], dict[str, list[Sample]], list[dict[str, str]]]:
    """Classes (from train/), samples per split and ignored entries; val uses train's indices."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found")
    classes, skipped = list_classes(data_dir / "train")
    val_classes, val_skipped = list_classes(data_dir / "val")
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


def drop_unreadable(samples: dict[str, list[Sample]], num_workers: int, skip_bad: bool
                    ) -> tuple[dict[str, list[Sample]], list[dict[str, str]]]:
    """Validate every image; fail listing the unreadable ones, or leave them out if ``skip_bad``."""
    bad = find_unreadable([s.path for split in SPLITS for s in samples[split]], num_workers)
    if bad and not skip_bad:
        listing = "\n  ".join(f"{entry['path']}: {entry['reason']}" for entry in bad)
        raise DataError(f"{len(bad)} unreadable image files (pass --skip-bad to leave them out); "
                           f"nothing written:\n  {listing}")
    bad_paths = {entry["path"] for entry in bad}
    readable = {split: [s for s in samples[split] if str(s.path) not in bad_paths] for split in SPLITS}
    return readable, bad


def _check_not_empty(data_dir: Path, classes: Sequence[str], samples: dict[str, list[Sample]]) -> None:
    """Every train class needs an image (as in ImageFolder), and val needs at least one."""
    train_counts = count_per_class([s.label for s in samples["train"]], classes)
    empty = [str(data_dir / "train" / name) for name, count in train_counts.items() if count == 0]
    if empty:
        raise DataError(f"train classes without readable images: {', '.join(empty)}")
    if not samples["val"]:
        raise DataError(f"{data_dir / 'val'}: no readable images")


def _versions() -> dict[str, str]:
    return {"ffcv": importlib.metadata.version("ffcv"), "pillow": PIL.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__}


def write_dataset(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  write_mode: str = "proportion", max_resolution: int | None = 500,
                  compress_probability: float = 0.5, jpeg_quality: int = 90,
                  num_workers: int | None = None, chunk_size: int = 100,
                  subset_files: dict[int, str] | None = None, seed: int = 0,
                  skip_bad: bool = False) -> dict[str, Any]:
    """Convert ``data_dir/{train,val}`` into ``out_dir`` and return the manifest written there.

    Defaults are FFCV's published ImageNet settings. Raises DataError, before writing
    anything, for bad input: missing folders, val classes that train lacks, empty classes,
    unreadable images (unless ``skip_bad``) and bad subset lists.
    """
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    num_workers = default_num_workers() if num_workers is None else num_workers
    _check_settings(write_mode, max_resolution, compress_probability, jpeg_quality,
                    num_workers, chunk_size)
    classes, samples, skipped = scan_dataset(data_dir)
    samples, unreadable = drop_unreadable(samples, num_workers, skip_bad)
    skipped += unreadable
    _check_not_empty(data_dir, classes, samples)
    subsets = resolve_subsets(samples["train"], subset_files, seed, unreadable)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # present again only once all is written
    manifest = Manifest.new(out_dir, data_dir, classes)
    for split in SPLITS:
        write_beton(samples[split], beton_path(out_dir, split), write_mode=write_mode,
                    max_resolution=max_resolution, compress_probability=compress_probability,
                    jpeg_quality=jpeg_quality, num_workers=num_workers, chunk_size=chunk_size,
                    seed=seed)
        manifest.add_split(split, [s.label for s in samples[split]])
    for percent, (indices, how) in subsets.items():
        manifest.add_subset(percent, indices, [samples["train"][i].label for i in indices], how)
    manifest.content["settings"] = {
        "write_mode": write_mode, "max_resolution": max_resolution,
        "compress_probability": compress_probability, "jpeg_quality": jpeg_quality,
        "num_workers": num_workers, "chunk_size": chunk_size, "seed": seed, "skip_bad": skip_bad,
        "rgb_conversion": RGB_CONVERSION}
    manifest.content.update(skipped=skipped, versions=_versions())
    manifest.write()
    return manifest.content
