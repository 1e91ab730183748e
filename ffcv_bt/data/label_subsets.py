"""The 1% and 10% label subsets of the semi-supervised protocol, as train.beton indices.

Either from the standard lists of training file names published with SimCLR (Chen et al.
2020; one name per line, as files, never fetched), or drawn class-balanced with a fixed seed;
the manifest records which. Drawn subsets are sets of distinct indices, exactly
``subset_size`` per class; the 1% and 10% draws are independent (not nested).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ffcv_bt.data.image_folder import Sample
from ffcv_bt.errors import DataError

SUBSET_PERCENTS = (1, 10)


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
