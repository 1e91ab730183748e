"""Which samples each of 2 gloo ranks actually reads, per protocol.

Every image of a special data set is one flat colour that encodes its id, so crops, flips
and resizes keep it and the id is read back from the batch itself. Validation splits and
the kNN features must be split into disjoint rank shares that cover the split exactly once;
training shares: the linear probe's (FFCV's distributed order) cover the whole split, with
at most world_size - 1 samples repeated to even the ranks out; the semi-supervised ones are
disjoint and cover the subset but for its documented remainder (< world_size).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

WORLD = 2
TRAIN_PER_CLASS, VAL_PER_CLASS, CLASSES = 19, 7, 2  # odd counts: shares cannot be equal


def write_coloured_images(root: Path) -> None:
    """Image with id i: every pixel (i % 256, i // 256, 77); ids unique over both splits."""
    ident = 0
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.empty((20, 24, 3), dtype=np.uint8)
                pixels[...] = (ident % 256, ident // 256, 77)
                Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
                ident += 1


def decode_ids(images: torch.Tensor) -> list[int]:
    """The id of every image of a normalised (B, 3, H, W) batch."""
    from ffcv_bt.data.normalize import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (images.float().cpu() * std + mean) * 255
    centre = pixels[:, :, pixels.shape[2] // 2, pixels.shape[3] // 2].round().long()
    assert torch.all(centre[:, 2] == 77), "not one of the coloured images"
    return (centre[:, 0] + 256 * centre[:, 1]).tolist()


def rank_main(rank: int, data_dir: str, init: str, out: str) -> None:
    from recipes import write_tiny_recipe

    from ffcv_bt.config import load_recipe
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.evaluation import knn
    from ffcv_bt.evaluation.trained import Evaluation

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    info = DistInfo(rank=rank, world_size=WORLD)
    folder = Path(out) / f"rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(write_tiny_recipe(folder, Path(data_dir)), {"data.num_workers": "1"})
    seen: dict[str, list[int]] = {}
    for protocol in ("linear", "semi1", "semi10"):
        evaluation = Evaluation(recipe, protocol, "random", folder / protocol, info)
        for split, loader in (("train", evaluation.train_loader), ("val", evaluation.val_loader)):
            seen[f"{protocol}/{split}"] = [i for images, _ in loader for i in decode_ids(images)]
    read: list[int] = []
    extract = knn.extract_features

    def recording(backbone, batches, device):
        batches = list(batches)
        read.extend(i for images, _ in batches for i in decode_ids(images))
        return extract(backbone, batches, device)

    knn.extract_features = recording
    for split in ("train", "val"):
        read.clear()
        n = evaluation.manifest.num_images(split)
        knn.split_features(recipe, recipe.knn, torch.nn.Flatten(), Path(data_dir), split, n, info)
        seen[f"knn/{split}"] = list(read)
    (Path(out) / f"seen-{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def shares(tmp_path_factory) -> tuple[list[dict], dict]:
    from ffcv_bt.data.eval_loader import make_eval_loader
    from ffcv_bt.data.manifest import Manifest, beton_path
    from ffcv_bt.data.write import write_dataset

    root = tmp_path_factory.mktemp("coloured")
    write_coloured_images(root / "images")
    data = root / "data"
    write_dataset(root / "images", data, write_mode="raw", num_workers=1)
    ids = {}  # beton index -> id, read in order by one process
    for split in ("train", "val"):
        loader = make_eval_loader(str(beton_path(data, split)), 16, "val", num_workers=1, res=16,
                                  resize_ratio=1.0)
        ids[split] = [i for images, _ in loader for i in decode_ids(images)]
    manifest = Manifest.read(data)
    ids["semi1"] = [ids["train"][i] for i in manifest.read_subset(1)]
    ids["semi10"] = [ids["train"][i] for i in manifest.read_subset(10)]
    init = f"file://{root / 'rendezvous'}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(rank_main, args=(str(data), init, str(root)), nprocs=WORLD,
                       start_method="spawn")
    return [json.loads((root / f"seen-{r}.json").read_text()) for r in range(WORLD)], ids


def assert_exact_partition(parts: list[list[int]], split: list[int]) -> None:
    for part in parts:
        assert len(part) == len(set(part)), "a rank read a sample twice"
    assert not set(parts[0]) & set(parts[1]), "the ranks' shares overlap"
    assert sorted(parts[0] + parts[1]) == sorted(split), "the shares do not cover the split once"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("key", ["linear/val", "semi1/val", "semi10/val", "knn/train", "knn/val"])
def test_validation_and_knn_shares_cover_the_split_once(shares, key) -> None:
    seen, ids = shares
    split = ids["train"] if key == "knn/train" else ids["val"]
    assert_exact_partition([s[key] for s in seen], split)


@pytest.mark.timeout(600)
def test_linear_training_shares_cover_the_split(shares) -> None:
    seen, ids = shares
    parts = [s["linear/train"] for s in seen]
    assert len(parts[0]) == len(parts[1])  # equal steps for DDP
    assert set(parts[0]) | set(parts[1]) == set(ids["train"])
    repeated = len(parts[0]) + len(parts[1]) - len(ids["train"])
    assert 0 <= repeated < WORLD


@pytest.mark.timeout(600)
@pytest.mark.parametrize("percent", [1, 10])
def test_semi_training_shares_are_disjoint_parts_of_the_subset(shares, percent) -> None:
    seen, ids = shares
    parts = [s[f"semi{percent}/train"] for s in seen]
    subset = ids[f"semi{percent}"]
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) <= set(subset)
    assert len(subset) - WORLD < len(parts[0]) + len(parts[1]) <= len(subset)
    assert len(parts[0]) == len(parts[1])
