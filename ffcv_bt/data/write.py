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
import importlib.metadata
import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import PIL
from tqdm import tqdm

from ffcv_bt.atomic_files import atomic_write
from ffcv_bt.data.image_folder import (
    RGB_CONVERSION,
    Sample,
    check_image,
    check_not_empty,
    load_rgb,
    scan_dataset,
    skip_record,
)
from ffcv_bt.data.label_subsets import resolve_subsets
from ffcv_bt.data.manifest import MANIFEST_NAME, SPLITS, Manifest, beton_path
from ffcv_bt.errors import DataError

WRITE_MODES = ("raw", "jpg", "smart", "proportion")


# ----------------------------------------------------------------------------- scanning

_IN_HELPER = False
_HELPER: concurrent.futures.ProcessPoolExecutor | None = None


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
    return [skip_record(path, f"unreadable: {reason}")
            for path, reason in zip(paths, reasons) if reason is not None]


# ---------------------------------------------------------------------------- subsets

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
    from ffcv.fields import (  # importing ffcv pulls in torch (~7 s)
        IntField,
        RGBImageField,
    )
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


def _versions() -> dict[str, str]:
    return {"ffcv": importlib.metadata.version("ffcv"), "pillow": PIL.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__}


def write_dataset(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  write_mode: str = "proportion", max_resolution: int | None = 500,
                  compress_probability: float = 0.5, jpeg_quality: int = 90,
                  num_workers: int | None = None, chunk_size: int = 100,
                  subset_files: dict[int, str] | None = None, seed: int = 0,
                  skip_bad: bool = False, classes: Sequence[str] | None = None,
                  classes_source: str | None = None) -> dict[str, Any]:
    """Convert ``data_dir/{train,val}`` into ``out_dir`` and return the manifest written there.

    Defaults are FFCV's published ImageNet settings. Raises DataError, before writing
    anything, for bad input: missing folders, val classes that train lacks, empty classes,
    unreadable images (unless ``skip_bad``) and bad subset lists.

    ``classes`` converts only those class folders (e.g. ImageNet-100); ``classes_source``
    (the list's file, or ``imagenet100``) is recorded in the manifest with them.
    """
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    num_workers = default_num_workers() if num_workers is None else num_workers
    _check_settings(write_mode, max_resolution, compress_probability, jpeg_quality,
                    num_workers, chunk_size)
    classes, samples, skipped = scan_dataset(data_dir, only=classes)
    samples, unreadable = drop_unreadable(samples, num_workers, skip_bad)
    skipped += unreadable
    check_not_empty(data_dir, classes, samples)
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
    if classes_source is not None or classes is not None:
        manifest.content["class_subset"] = {"source": classes_source, "count": len(classes)}
    manifest.content.update(skipped=skipped, versions=_versions())
    manifest.write()
    return manifest.content
