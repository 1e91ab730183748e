"""The dataset folder's ``manifest.json``: the one place that knows its format.

write_dataset.py writes, beside ``train.beton`` and ``val.beton``, a manifest: the class
names, the images per split and per class, the 1% / 10% label subsets (``train_subset_<p>.txt``,
train.beton indices) and how they were drawn, the conversion settings, skipped files and
library versions. Evaluation, the dry-run plan and results read it through :class:`Manifest`.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ffcv_bt.atomic_files import atomic_write_json, atomic_write_text
from ffcv_bt.errors import DataError

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
REWRITE_HINT = "write it with write_dataset.py"


def beton_path(data_dir: str | Path, split: str) -> Path:
    """``<data_dir>/<split>.beton``."""
    return Path(data_dir) / f"{split}.beton"


def count_per_class(labels: Sequence[int], classes: Sequence[str]) -> dict[str, int]:
    """{class name: how many of ``labels`` are that class}."""
    counts = Counter(labels)
    return {name: counts[label] for label, name in enumerate(classes)}


class Manifest:
    """A dataset folder's manifest (read with :meth:`read`, built with the ``add_*`` methods)."""

    def __init__(self, data_dir: str | Path, content: dict[str, Any]) -> None:
        self.data_dir = Path(data_dir)
        self.content = content

    # ----- building (write_dataset.py) -------------------------------------------------
    @classmethod
    def new(cls, out_dir: str | Path, source_dir: str | Path, classes: Sequence[str]) -> Manifest:
        return cls(out_dir, {"data_dir": str(source_dir), "classes": list(classes),
                             "splits": {}, "subsets": {}})

    def add_split(self, split: str, labels: Sequence[int]) -> None:
        self.content["splits"][split] = {"file": beton_path(self.data_dir, split).name,
                                         "num_images": len(labels),
                                         "per_class": count_per_class(labels, self.classes)}

    def add_subset(self, percent: int, indices: Sequence[int], labels: Sequence[int],
                   how: dict[str, Any]) -> None:
        """Write the subset's index file and record it."""
        path = self.subset_path(percent)
        atomic_write_text(path, "".join(f"{i}\n" for i in indices))
        self.content["subsets"][str(percent)] = {"file": path.name, "count": len(indices), **how,
                                                 "per_class": count_per_class(labels, self.classes)}

    def write(self) -> Path:
        return atomic_write_json(self.data_dir / MANIFEST_NAME, self.content)

    # ----- reading ------------------------------------------------------------------------
    @classmethod
    def read(cls, data_dir: str | Path) -> Manifest:
        """The manifest of ``data_dir``; a DataError naming the folder if it is missing or bad."""
        path = Path(data_dir) / MANIFEST_NAME
        if not path.is_file():
            raise DataError(f"{path} not found: {data_dir} is not a dataset folder written by "
                            f"write_dataset.py (set data.dir, or {REWRITE_HINT})")
        try:
            content = json.loads(path.read_text())
            classes, splits = content["classes"], content["splits"]
            if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
                raise ValueError("'classes' is not a non-empty list of names")
            for split in ("train", "val"):
                n = splits[split]["num_images"]
                if not (isinstance(n, int) and n >= 1):
                    raise ValueError(f"splits.{split}.num_images is {n!r}, not a positive integer")
            for percent, entry in content.get("subsets", {}).items():
                if int(percent) not in (1, 10) or not isinstance(entry["count"], int):
                    raise ValueError(f"subsets.{percent} is not a 1 or 10 % subset with a count")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: not a valid manifest ({exc!r}); {REWRITE_HINT}") from None
        return cls(data_dir, content)

    @property
    def classes(self) -> list[str]:
        return list(self.content["classes"])

    def num_images(self, split: str) -> int:
        return int(self.content["splits"][split]["num_images"])

    def subset_counts(self) -> dict[int, int]:
        """{percent: images} of the label subsets."""
        return {int(k): int(v["count"]) for k, v in self.content.get("subsets", {}).items()}

    def subset_path(self, percent: int) -> Path:
        return self.data_dir / f"train_subset_{percent}.txt"

    def read_subset(self, percent: int) -> np.ndarray:
        """Train-set indices of the ``percent`` % label subset."""
        path = self.subset_path(percent)
        if not path.is_file():
            raise DataError(f"{path}: label subset not found; {REWRITE_HINT}")
        return np.loadtxt(path, dtype=np.int64, ndmin=1)

    def dataset_label(self) -> str:
        """A short name for results tables: folder name, classes and train images."""
        name = Path(self.content.get("data_dir", str(self.data_dir))).name or self.data_dir.name
        if name in ("images", ""):
            name = self.data_dir.name
        return f"{name} ({len(self.classes)} classes, {self.num_images('train'):,} train)"

    def dataset_fields(self) -> dict[str, Any]:
        """The data-set columns of a runs.csv row (see ffcv_bt.reporting.runs_csv)."""
        return {"dataset": self.dataset_label(), "dataset_classes": len(self.classes),
                "dataset_train_images": self.num_images("train")}
