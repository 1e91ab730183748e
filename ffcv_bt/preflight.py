"""Every input a run will read, checked before the first step of the first stage.

The manifest, both .beton headers (against the manifest's counts), the label subsets the
semi-supervised stages read, the settings the device cannot run (``train.deterministic`` on
CUDA), and the writability of the run and results folders: a bad
one is the one-line error the stage itself would raise, but seconds after the start
instead of after hours of pretraining. The recipe and protocol files were checked when the
recipe was loaded.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ffcv_bt.config import Recipe
from ffcv_bt.data.ffcv_loading import check_beton
from ffcv_bt.data.manifest import REWRITE_HINT, Manifest, beton_path
from ffcv_bt.errors import ConfigError, DataError, RunFolderError


def check_data(recipe: Recipe) -> Manifest:
    """The data folder as every stage of ``recipe`` will read it; returns its manifest."""
    data_dir = Path(recipe.data.dir)
    manifest = Manifest.read(data_dir)
    sizes = {}
    for split in ("train", "val"):
        _, sizes[split] = check_beton(beton_path(data_dir, split), ["image", "label"])
        if sizes[split] != manifest.num_images(split):
            raise DataError(f"{beton_path(data_dir, split)} holds {sizes[split]} images but "
                            f"{data_dir / 'manifest.json'} says {manifest.num_images(split)}; "
                            f"{REWRITE_HINT}")
    for stage in recipe.stages:
        if stage in ("semi1", "semi10"):
            check_subset(manifest, int(stage[4:]), sizes["train"])
    return manifest


def check_subset(manifest: Manifest, percent: int, train_images: int) -> np.ndarray:
    """The ``percent`` % subset file: readable, distinct indices inside train.beton, as many
    as the manifest records."""
    path = manifest.subset_path(percent)
    try:
        indices = manifest.read_subset(percent)
    except ValueError as exc:
        raise DataError(f"{path}: not a list of train indices ({exc}); {REWRITE_HINT}") from None
    counts = manifest.subset_counts()
    if len(np.unique(indices)) != len(indices):
        raise DataError(f"{path}: repeated indices; {REWRITE_HINT}")
    if len(indices) and (indices.min() < 0 or indices.max() >= train_images):
        raise DataError(f"{path}: indices outside 0..{train_images - 1}; {REWRITE_HINT}")
    if percent in counts and counts[percent] != len(indices):
        raise DataError(f"{path}: {len(indices)} indices, the manifest says {counts[percent]}; "
                        f"{REWRITE_HINT}")
    return indices


def check_device_settings(recipe: Recipe, cuda: bool | None = None) -> None:
    """Refuse settings the device cannot run; ``cuda`` defaults to where the run will train
    (``torch.cuda.is_available()``, as ffcv_bt.distributed.process_group.setup picks).

    ``train.deterministic`` on CUDA: the backbone's adaptive-avg-pool backward has no
    deterministic CUDA kernel (and cuBLAS would need ``CUBLAS_WORKSPACE_CONFIG``), so
    ``torch.use_deterministic_algorithms`` makes the first step raise.
    """
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda and recipe.train.deterministic:
        raise ConfigError("train.deterministic: true cannot run on CUDA (adaptive-avg-pool backward "
                          "has no deterministic CUDA kernel): set --train.deterministic=false, or "
                          "run on the CPU with CUDA_VISIBLE_DEVICES=\"\"")


def check_writable(folder: Path, what: str) -> None:
    """``folder`` (created if missing) accepts a new file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise RunFolderError(f"{what} {folder} is not writable ({exc.strerror or exc}); "
                             f"choose another with --out / --results-dir") from None
    if not os.access(folder, os.W_OK):
        raise RunFolderError(f"{what} {folder} is not writable; choose another")


def check_run_inputs(recipe: Recipe, run_root: Path, results_dir: Path) -> Manifest:
    """All of the above for one ``run.py`` call; returns the manifest."""
    manifest = check_data(recipe)
    check_device_settings(recipe)
    check_writable(run_root, "run folder")
    check_writable(results_dir, "results folder")
    runs_csv = results_dir / "runs.csv"
    if runs_csv.exists() and not os.access(runs_csv, os.W_OK):
        raise RunFolderError(f"{runs_csv} is not writable; choose another --results-dir")
    return manifest
