"""Evaluation protocols on tiny real data: learning, frozen backbone, subsets, resume,
exact top-k across ranks, and clear errors for bad checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from recipes import write_tiny_recipe

from ffcv_bt.config import load_recipe
from ffcv_bt.data.manifest import Manifest
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import BackboneLoadError
from ffcv_bt.evaluation.backbone_weights import load_backbone
from ffcv_bt.evaluation.trained import Evaluation, evaluate, topk_correct
from ffcv_bt.method.model import build_backbone

CPU = DistInfo()


def _recipe(tmp_path: Path, data: Path, **overrides):
    return load_recipe(write_tiny_recipe(tmp_path, data), overrides)


def test_topk_correct_against_hand_count() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    # sample 0: top-1 hit; sample 1: label 2 is ranked 3rd; sample 2: label 0 is ranked 3rd
    assert topk_correct(logits, labels, ks=(1, 2, 5)) == [1, 1, 3]


def _colour_dataset(root: Path) -> Path:
    """4 classes of noisy constant-colour 16x16 PNGs (linearly separable), as a dataset."""
    from PIL import Image

    from ffcv_bt.data.write import write_dataset
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200),
               "grey": (128, 128, 128)}
    for split, n in (("train", 40), ("val", 15)):
        for name, rgb in colours.items():
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (16, 16, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    write_dataset(root / "images", root, write_mode="raw", num_workers=2)
    return root


def _bn_calibrated_random_backbone(recipe, path: Path) -> None:
    """A random backbone whose BN running statistics were measured on data, saved as a
    plain state dict (so random features are on a sensible scale)."""
    # the pretraining initialisation (zero-init residual: every block starts as the
    # identity), whose pooled features keep the colour linearly readable
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", recipe.model.width, zero_init_residual=True,
                                 small_stem=True)
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    backbone.train()
    with torch.no_grad():
        for _ in range(5):
            backbone(torch.randn(64, 3, 16, 16) * 0.5)
    torch.save(backbone.state_dict(), path)


@pytest.mark.timeout(600)
def test_linear_probe_learns_a_separable_problem(tmp_path: Path) -> None:
    data = _colour_dataset(tmp_path / "colours")
    recipe = _recipe(tmp_path, data, **{"linear.epochs": "8"})
    weights = tmp_path / "calibrated.pth"
    _bn_calibrated_random_backbone(recipe, weights)
    result = evaluate(recipe, "linear", str(weights), tmp_path / "lin", CPU)
    assert result["top1"] >= 95.0, result  # chance is 25%
    log = [json.loads(l) for l in (tmp_path / "lin" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and log[-1]["train_loss"] < log[0]["train_loss"]
    assert result["checkpoint_sha256"] is not None and result["backbone"] == "pretrained"


@pytest.mark.timeout(600)
def test_frozen_check_catches_a_backbone_left_in_train_mode(tiny_dataset: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, tiny_dataset, **{"linear.epochs": "1"})
    ev = Evaluation(recipe, "linear", "random", tmp_path / "bug", CPU)
    ev.model.backbone.eval = lambda: ev.model.backbone  # the bug: BN statistics now move
    with pytest.raises(AssertionError, match="frozen backbone tensor .*running_"):
        ev.run()


@pytest.mark.timeout(600)
def test_fine_tuning_sees_exactly_the_subset(tiny_dataset: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, tiny_dataset)
    torch.backends.cudnn.allow_tf32 = True  # torch's default
    ev = Evaluation(recipe, "semi10", "random", tmp_path / "semi", CPU)
    assert not torch.backends.cudnn.allow_tf32  # fine-tuning trains in true fp32
    assert not torch.backends.cuda.matmul.allow_tf32
    subset = Manifest.read(tiny_dataset).read_subset(10)
    from ffcv.reader import Reader
    all_labels = Reader(str(tiny_dataset / "train.beton")).metadata["f1"]
    seen = torch.cat([labels for _, labels in ev.train_loader]).numpy()
    assert len(seen) == len(subset) == 20  # 10% of 20 images per class x 10 classes
    assert np.array_equal(np.sort(seen), np.sort(all_labels[subset]))


@pytest.mark.timeout(900)
def test_resume_after_interruption_matches_uninterrupted(tiny_dataset: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, tiny_dataset, **{"linear.epochs": "3"})
    straight = evaluate(recipe, "linear", "random", tmp_path / "straight", CPU)

    interrupted = Evaluation(recipe, "linear", "random", tmp_path / "cut", CPU)
    original, calls = interrupted.train_epoch, []

    def crash_on_second_epoch() -> float:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original()
    interrupted.train_epoch = crash_on_second_epoch
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = Evaluation(recipe, "linear", "random", tmp_path / "cut", CPU)
    assert resumed.epoch == 1 and len(resumed.history) == 1
    result = resumed.run()
    assert result["top1"] == straight["top1"] and result["top5"] == straight["top5"]
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]


def _rank_validate(rank: int, world: int, init: str, recipe_path: str, out: str, queue) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    recipe = load_recipe(recipe_path)
    ev = Evaluation(recipe, "linear", "random", Path(out) / f"r{rank}",
                    DistInfo(rank=rank, world_size=world))
    seen = sum(labels.shape[0] for _, labels in ev.val_loader)
    top1, top5 = ev.validate()
    queue.put((rank, seen, top1, top5))
    dist.destroy_process_group()


@pytest.mark.timeout(900)
def test_topk_over_two_ranks_equals_single_process(tiny_dataset: Path, tmp_path: Path) -> None:
    # 100 val images, batch 32 per rank: the last batch of each rank is partial.
    recipe_path = write_tiny_recipe(tmp_path, tiny_dataset)
    single = Evaluation(load_recipe(recipe_path), "linear", "random", tmp_path / "single", CPU)
    expected = single.validate()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_rank_validate,
                         args=(r, 2, init, str(recipe_path), str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [seen for _, seen, _, _ in results] == [50, 50]
    for _, _, top1, top5 in results:
        assert (top1, top5) == pytest.approx(expected, abs=1e-9)


def test_torchvision_state_dict_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)  # includes fc.*, which is dropped
    backbone, dim = load_backbone(str(path), "resnet18")
    assert dim == 512
    x = torch.randn(2, 3, 64, 64)
    reference.fc = torch.nn.Identity()
    reference.eval(), backbone.eval()
    assert torch.allclose(backbone(x), reference(x))


@pytest.mark.parametrize("case", ["missing", "corrupt", "wrong_arch", "not_a_state_dict"])
def test_bad_checkpoints_name_file_and_problem(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.pth"
    if case == "corrupt":
        path.write_bytes(b"definitely not a checkpoint")
    elif case == "wrong_arch":
        torch.save(torchvision.models.resnet18().state_dict(), path)
    elif case == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    with pytest.raises(BackboneLoadError) as info:
        load_backbone(str(path), "resnet50")
    message = str(info.value)
    assert str(path) in message
    expected = {"missing": "not found", "corrupt": "not a readable", "wrong_arch": "resnet50",
                "not_a_state_dict": "state dict"}[case]
    assert expected in message
    if case == "wrong_arch":
        assert "missing keys" in message and "shape mismatches" in message
