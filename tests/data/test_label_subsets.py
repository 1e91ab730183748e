"""The 1% / 10% label subsets as sets, where they are used: the indices the semi-supervised
evaluation hands its loader are distinct, exactly subset_size per class of the written
train.beton, drawn independently per percent (not nested, as label_subsets documents),
stable for a seed, and equal to the listed file names when lists are given."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from recipes import write_tiny_recipe

from ffcv_bt.config import load_recipe
from ffcv_bt.data.eval_loader import make_eval_loader
from ffcv_bt.data.label_subsets import balanced_subset, subset_size
from ffcv_bt.data.manifest import Manifest, beton_path
from ffcv_bt.data.write import write_dataset
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation import trained


def train_labels(data_dir) -> np.ndarray:
    """Every train image's label, read back from train.beton in index order."""
    loader = make_eval_loader(str(beton_path(data_dir, "train")), 64, "val", num_workers=1,
                              res=16, resize_ratio=1.0)
    return np.concatenate([labels.numpy() for _, labels in loader])


def indices_the_evaluation_reads(data_dir, percent, tmp_path, monkeypatch) -> np.ndarray:
    seen = {}
    build = trained.make_eval_loader

    def recording(beton, per_rank, split, **kwargs):
        if split == "train":
            seen["indices"] = kwargs.get("indices")
        return build(beton, per_rank, split, **kwargs)

    monkeypatch.setattr(trained, "make_eval_loader", recording)
    recipe = load_recipe(write_tiny_recipe(tmp_path, data_dir))
    trained.Evaluation(recipe, f"semi{percent}", "random", tmp_path / f"semi{percent}", DistInfo())
    return np.asarray(seen["indices"])


@pytest.mark.parametrize("percent", [1, 10])
def test_subsets_are_class_balanced_sets(percent, tiny_dataset, tmp_path, monkeypatch) -> None:
    labels = train_labels(tiny_dataset)
    used = indices_the_evaluation_reads(tiny_dataset, percent, tmp_path, monkeypatch)
    assert len(np.unique(used)) == len(used) > 0
    assert used.min() >= 0 and used.max() < len(labels)
    per_class = Counter(labels.tolist())
    assert Counter(labels[used].tolist()) == {c: subset_size(percent, n) for c, n in per_class.items()}
    # drawn independently of the other percent (not nested): the draw of this percent alone
    assert used.tolist() == balanced_subset(labels.tolist(), percent, seed=0)


@pytest.mark.timeout(300)
def test_subsets_are_stable_for_a_seed_and_change_with_it(tiny_dataset, tmp_path) -> None:
    images = tiny_dataset / "images"
    again, other = tmp_path / "again", tmp_path / "other"
    write_dataset(images, again, write_mode="raw", num_workers=1, seed=0)
    write_dataset(images, other, write_mode="raw", num_workers=1, seed=5)
    for percent in (1, 10):
        first = Manifest.read(tiny_dataset).read_subset(percent)
        assert np.array_equal(Manifest.read(again).read_subset(percent), first)
        assert not np.array_equal(Manifest.read(other).read_subset(percent), first)


@pytest.mark.timeout(300)
def test_listed_subset_is_exactly_the_listed_files(tiny_dataset, tmp_path, monkeypatch) -> None:
    images = tiny_dataset / "images" / "train"
    files = sorted(p for p in images.rglob("*") if p.is_file())
    chosen = files[3::17]  # any names, unbalanced on purpose
    listing = tmp_path / "1percent.txt"
    listing.write_text("".join(f"{p.name}\n" for p in chosen))
    out = tmp_path / "listed"
    write_dataset(tiny_dataset / "images", out, write_mode="raw", num_workers=1,
                  subset_files={1: str(listing)})
    used = indices_the_evaluation_reads(out, 1, tmp_path, monkeypatch)
    order = sorted(files, key=lambda p: (p.parent.name, p.name))  # write order: class, then name
    assert sorted(order[i].name for i in used) == sorted(p.name for p in chosen)


def test_balanced_draw_at_imagenet_like_class_sizes() -> None:
    """1,300 images per class as ImageNet: 13 and 130 distinct images of each class."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(20), 1300)).tolist()
    for percent, size in ((1, 13), (10, 130)):
        chosen = balanced_subset(labels, percent, seed=0)
        assert len(set(chosen)) == len(chosen) == 20 * size
        assert set(Counter(labels[i] for i in chosen).values()) == {size}
