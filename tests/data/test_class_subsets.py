"""write_dataset.py --classes: converting only some class folders (e.g. ImageNet-100)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffcv_bt.cli import run_command
from ffcv_bt.data.image_folder import IMAGENET100_FILE, read_class_list
from ffcv_bt.errors import DataError

REPO = Path(__file__).resolve().parents[2]
COUNTS = {"train": {"ant": 3, "bee": 2, "cat": 4, "dog": 1}, "val": {"ant": 1, "bee": 2, "cat": 1,
                                                                     "dog": 1, "eel": 2}}


def _write_dataset_main():
    spec = importlib.util.spec_from_file_location("write_dataset_cli", REPO / "write_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main


def _tree(root: Path) -> Path:
    """train/ and val/ with the COUNTS images per class (val has a class train lacks)."""
    rng = np.random.default_rng(0)
    for split, per_class in COUNTS.items():
        for name, count in per_class.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_class_list_file_converts_only_those_classes(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data")
    listing = tmp_path / "classes.txt"
    listing.write_text("# two of them\ncat\n\nant\n")
    out = tmp_path / "out"
    code = run_command(_write_dataset_main(), ["--data-dir", str(data), "--out-dir", str(out),
                                               "--classes", str(listing), "--write-mode", "raw",
                                               "--num-workers", "1"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["ant", "cat"]  # sorted, as ImageFolder labels them
    assert manifest["splits"]["train"]["per_class"] == {"ant": 3, "cat": 4}
    assert manifest["splits"]["val"]["per_class"] == {"ant": 1, "cat": 1}
    assert manifest["class_subset"] == {"source": str(listing.resolve()), "count": 2}


def test_names_missing_from_the_data_are_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _tree(tmp_path / "data")
    listing = tmp_path / "classes.txt"
    listing.write_text("ant\nzebra\nyak\n")
    out = tmp_path / "out"
    code = run_command(_write_dataset_main(), ["--data-dir", str(data), "--out-dir", str(out),
                                               "--classes", str(listing), "--num-workers", "1"])
    err = capsys.readouterr().err.strip()
    assert code == DataError.exit_code and "\n" not in err and "Traceback" not in err
    assert re.search(r"^error: .*train: 2 of the 3 listed classes are not class folders there: "
                     r"zebra, yak$", err)
    assert not out.exists()


def test_imagenet100_is_the_cmc_list(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = read_class_list("imagenet100")
    assert len(names) == len(set(names)) == 100
    assert all(re.fullmatch(r"n\d{8}", name) for name in names)
    assert (names[0], names[-1]) == ("n02869837", "n02090622")  # the released file's order
    assert "Tian et al. 2019" in IMAGENET100_FILE.read_text().splitlines()[0]
    code = run_command(_write_dataset_main(), ["--data-dir", str(_tree(tmp_path / "data")),
                                               "--out-dir", str(tmp_path / "out"),
                                               "--classes", "imagenet100"])
    assert code == DataError.exit_code
    assert "100 of the 100 listed classes are not class folders there: n02869837, " in (
        capsys.readouterr().err)


def test_bad_class_lists_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read the class list"):
        read_class_list(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="names no class"):
        read_class_list(tmp_path / "empty.txt")
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match="more than once: a"):
        read_class_list(tmp_path / "twice.txt")
