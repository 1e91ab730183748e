"""Each preflight check fails in every direction it guards: subsets with too few and too
many entries, indices below and above the train set (at the boundary), repeated indices,
and .beton image counts above and below the manifest's, for both splits. In-process."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from recipes import write_tiny_recipe

from ffcv_bt.config import load_recipe
from ffcv_bt.data.manifest import Manifest
from ffcv_bt.errors import DataError
from ffcv_bt.preflight import check_data, check_subset


@pytest.fixture
def data_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """The tiny dataset's manifest and subsets copied (to damage), its .beton files linked."""
    out = tmp_path / "data"
    out.mkdir()
    for f in tiny_dataset.iterdir():
        if f.suffix == ".beton":
            (out / f.name).symlink_to(f)
        elif f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _check(data: Path, tmp_path: Path, stages: str = "pretrain,knn,semi1,semi10") -> Manifest:
    recipe = load_recipe(write_tiny_recipe(tmp_path, data), {"run.stages": stages})
    return check_data(recipe)


def _subset(data: Path, percent: int) -> list[int]:
    return [int(x) for x in (data / f"train_subset_{percent}.txt").read_text().split()]


def _write_subset(data: Path, percent: int, indices: list[int]) -> None:
    (data / f"train_subset_{percent}.txt").write_text("".join(f"{i}\n" for i in indices))


def _train_images(data: Path) -> int:
    return Manifest.read(data).num_images("train")


def _unused(data: Path, percent: int) -> int:
    """A valid train index that is not in the subset."""
    return min(set(range(_train_images(data))) - set(_subset(data, percent)))


def test_intact_data_passes(data_copy, tmp_path):
    manifest = _check(data_copy, tmp_path)
    for percent in (1, 10):
        assert manifest.subset_counts()[percent] == len(_subset(data_copy, percent)) > 1


@pytest.mark.parametrize("percent", [1, 10])
def test_subset_with_one_entry_too_few(percent, data_copy, tmp_path):
    indices = _subset(data_copy, percent)
    _write_subset(data_copy, percent, indices[:-1])
    with pytest.raises(DataError, match=f"train_subset_{percent}.txt: {len(indices) - 1} indices, "
                                        f"the manifest says {len(indices)}"):
        _check(data_copy, tmp_path)


@pytest.mark.parametrize("percent", [1, 10])
def test_subset_with_one_entry_too_many(percent, data_copy, tmp_path):
    indices = _subset(data_copy, percent)
    _write_subset(data_copy, percent, sorted(indices + [_unused(data_copy, percent)]))
    with pytest.raises(DataError, match=f"train_subset_{percent}.txt: {len(indices) + 1} indices, "
                                        f"the manifest says {len(indices)}"):
        _check(data_copy, tmp_path)


@pytest.mark.parametrize("bad", ["first past the end", "negative"])
def test_subset_index_outside_the_train_set(bad, data_copy, tmp_path):
    indices = _subset(data_copy, 10)
    n = _train_images(data_copy)
    indices[-1] = n if bad == "first past the end" else -1  # same count, still distinct
    _write_subset(data_copy, 10, indices)
    with pytest.raises(DataError, match=f"train_subset_10.txt: indices outside 0..{n - 1}"):
        _check(data_copy, tmp_path)


def test_subset_holding_both_ends_of_the_train_set_passes(data_copy, tmp_path):
    n = _train_images(data_copy)
    indices = [i for i in _subset(data_copy, 10) if i not in (0, n - 1)]
    indices = [0] + indices[: len(_subset(data_copy, 10)) - 2] + [n - 1]
    _write_subset(data_copy, 10, indices)
    manifest = _check(data_copy, tmp_path)
    assert list(check_subset(manifest, 10, n)) == indices


def test_subset_with_a_repeated_index_and_the_right_count(data_copy, tmp_path):
    indices = _subset(data_copy, 1)
    indices[-1] = indices[0]
    _write_subset(data_copy, 1, indices)
    with pytest.raises(DataError, match="train_subset_1.txt: repeated indices"):
        _check(data_copy, tmp_path)


def test_subset_not_a_list_of_integers(data_copy, tmp_path):
    (data_copy / "train_subset_1.txt").write_text("0\n1.5\n")
    with pytest.raises(DataError, match="train_subset_1.txt: not a list of train indices"):
        _check(data_copy, tmp_path)


def test_only_the_subsets_of_the_stages_are_read(data_copy, tmp_path):
    (data_copy / "train_subset_10.txt").write_text("0\n0\n")
    _check(data_copy, tmp_path, "pretrain,knn,linear,semi1")  # semi10 does not run
    with pytest.raises(DataError, match="train_subset_10.txt: repeated"):
        _check(data_copy, tmp_path, "semi10")


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("delta", [-1, +1])
def test_beton_count_against_the_manifest(split, delta, data_copy, tmp_path):
    path = data_copy / "manifest.json"
    content = json.loads(path.read_text())
    actual = content["splits"][split]["num_images"]
    content["splits"][split]["num_images"] = actual + delta
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=f"{split}.beton holds {actual} images but .*manifest.json "
                                        f"says {actual + delta}"):
        _check(data_copy, tmp_path, "pretrain,knn")


def test_check_subset_counts_distinct_indices(data_copy):
    # np.unique on a shuffled list: order does not matter, only distinctness
    manifest = Manifest.read(data_copy)
    indices = _subset(data_copy, 10)[::-1]
    _write_subset(data_copy, 10, indices)
    assert np.array_equal(check_subset(manifest, 10, _train_images(data_copy)), indices)
