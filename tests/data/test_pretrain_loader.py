"""The two-view pretraining loader end to end on a small .beton whose images carry their label.

Image ``i`` (label ``i``) has constant red ``10 + 6 i`` and green ``244 - 6 i`` and a blue
ramp from left to right. Crops, resizes, flips and blurs keep red and green constant, so each
view tells which image it came from, while the ramp makes two crops of one image differ.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from coded_images import (
    NUM_IMAGES,
    assert_views_match_labels,
    spy_epoch_iterators,
    to_pixels,
    write_coded_beton,
)
from ffcv.pipeline.compiler import Compiler

from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader
from ffcv_bt.errors import ConfigError, DataError

REFERENCE_AUG = AugmentationParams.from_config(load_recipe(RULES_DIR / "base.yaml").aug)
SHAPE_ONLY = dataclasses.replace(REFERENCE_AUG, jitter_p=(0.0, 0.0), grayscale_p=(0.0, 0.0),
                                 solarize_p=(0.0, 0.0))


@pytest.fixture(scope="module")
def coded_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coded_beton(tmp_path_factory.mktemp("coded") / "coded.beton")


def run_epoch(loader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


@pytest.mark.timeout(300)
def test_two_view_loader_end_to_end(coded_beton):
    """One loader: shapes, alignment, coverage, distinct views, set_epoch, set_resolution,
    the caller's torch thread count left alone, and JIT off giving the same batches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = make_pretrain_loader(coded_beton, batch_size_per_rank=8, num_workers=2, aug=SHAPE_ONLY,
                                      res=32, seed=3, device="cpu", with_labels=True)
        assert len(loader) == NUM_IMAGES // 8
        epoch0 = run_epoch(loader)
        assert torch.get_num_threads() == 1  # FFCV would have set it to num_workers
    finally:
        torch.set_num_threads(threads)
    assert len(epoch0) == len(loader)
    view1, view2, labels = epoch0[0]
    assert view1.shape == view2.shape == (8, 3, 32, 32)
    assert view1.dtype == torch.float32 and labels.dtype == torch.int64
    assert view1.is_contiguous()
    all_labels = torch.cat([b[2] for b in epoch0])
    assert sorted(all_labels.tolist()) == list(range(NUM_IMAGES))  # every image exactly once
    for first, second, batch_labels in epoch0:
        assert_views_match_labels(first, batch_labels)
        assert_views_match_labels(second, batch_labels)
    blue1 = np.concatenate([to_pixels(b[0])[..., 2] for b in epoch0])
    blue2 = np.concatenate([to_pixels(b[1])[..., 2] for b in epoch0])
    differ = np.abs(blue1 - blue2).max(axis=(1, 2)) > 3
    assert differ.mean() > 0.9  # two independent crops/flips of one image

    Compiler.set_enabled(False)  # JIT off: the ops' loops run as Python (kernels stay compiled)
    try:
        python_loader = make_pretrain_loader(coded_beton, batch_size_per_rank=8, num_workers=2,
                                             aug=SHAPE_ONLY, res=32, seed=3, device="cpu",
                                             with_labels=True)
    finally:
        Compiler.set_enabled(True)
    for expected, got in zip(epoch0, run_epoch(python_loader)):
        assert all(torch.equal(x, y) for x, y in zip(expected, got))

    epoch1 = run_epoch(loader)  # the epoch advances by itself
    assert not torch.equal(torch.cat([b[2] for b in epoch1]), all_labels)
    loader.set_epoch(0)
    again = run_epoch(loader)
    for before, after in zip(epoch0, again):
        assert all(torch.equal(x, y) for x, y in zip(before, after))

    loader.set_resolution(40)
    bigger = run_epoch(loader)
    assert bigger[0][0].shape == (8, 3, 40, 40) and len(bigger) == len(loader)
    for first, _second, batch_labels in bigger:
        assert_views_match_labels(first, batch_labels)


def test_bad_arguments_name_the_problem(coded_beton, tmp_path):
    with pytest.raises(DataError, match="missing.beton"):
        make_pretrain_loader(tmp_path / "missing.beton", 8, 1, REFERENCE_AUG, 32, 0, "cpu")
    with pytest.raises(ConfigError, match="order"):
        make_pretrain_loader(coded_beton, 8, 1, REFERENCE_AUG, 32, 0, "cpu", order="shuffled")
    with pytest.raises(DataError, match=r"indices must lie in \[0, 40\)"):
        make_pretrain_loader(coded_beton, 8, 1, REFERENCE_AUG, 32, 0, "cpu", indices=[0, 40])
    with pytest.raises(ValueError, match="blur_p"):
        dataclasses.replace(REFERENCE_AUG, blur_p=(1.0, 1.5))
    with pytest.raises(ValueError, match="flip_p must be a pair"):
        dataclasses.replace(REFERENCE_AUG, flip_p=0.5)
    assert dataclasses.replace(REFERENCE_AUG, flip_p=[0.5, 0.25]).flip_p == (0.5, 0.25)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_same_seed_same_batches_for_any_worker_count_layout_and_restart(coded_beton):
    """Full augmentation. A fresh loader with 1 worker at set_epoch(1) reproduces epoch 1 of a
    running 2-worker loader, and so does the decode-twice layout."""
    common = dict(batch_size_per_rank=8, aug=REFERENCE_AUG, res=32, seed=7, device="cpu",
                  with_labels=True)
    running = make_pretrain_loader(coded_beton, num_workers=2, **common)
    epoch0 = run_epoch(running)
    epoch1 = run_epoch(running)
    restarted = make_pretrain_loader(coded_beton, num_workers=1, **common)
    restarted.set_epoch(1)
    twice = make_pretrain_loader(coded_beton, num_workers=2, decode_once=False, **common)
    twice.set_epoch(1)
    for other in (run_epoch(restarted), run_epoch(twice)):
        assert len(other) == len(epoch1)
        for expected, got in zip(epoch1, other):
            assert all(torch.equal(x, y) for x, y in zip(expected, got))
    differs = [not torch.equal(a[0], b[0]) for a, b in zip(epoch0, epoch1)]
    assert all(differs)


def _rank_labels(rank: int, world_size: int, init_file: str, beton: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}",
                                         rank=rank, world_size=world_size)
    try:
        loader = make_pretrain_loader(beton, batch_size_per_rank=5, num_workers=1, aug=SHAPE_ONLY, res=24,
                                      seed=5, device="cpu", distributed=True, with_labels=True)
        for epoch in range(2):
            labels = []
            for first, _second, batch_labels in loader:
                assert_views_match_labels(first, batch_labels)
                labels.append(batch_labels)
            np.save(os.path.join(out_dir, f"rank{rank}_epoch{epoch}.npy"), torch.cat(labels).numpy())
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_distributed_ranks_read_disjoint_shards_covering_the_data(coded_beton, tmp_path):
    world_size = 2
    mp.spawn(_rank_labels, args=(world_size, str(tmp_path / "init"), str(coded_beton), str(tmp_path)),
             nprocs=world_size, join=True)
    for epoch in range(2):
        shards = [np.load(tmp_path / f"rank{r}_epoch{epoch}.npy") for r in range(world_size)]
        assert all(len(s) == NUM_IMAGES // world_size for s in shards)  # 20 = 4 batches of 5
        assert all(len(set(s.tolist())) == len(s) for s in shards)
        assert sorted(np.concatenate(shards).tolist()) == list(range(NUM_IMAGES))
    first = np.load(tmp_path / "rank0_epoch0.npy")
    assert not np.array_equal(first, np.load(tmp_path / "rank0_epoch1.npy"))


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_images_matches_torchvision(channels_last):
    import torchvision.transforms.v2.functional as TF

    from ffcv_bt.data.normalize import normalize_images

    images = torch.randint(0, 256, (3, 5, 7, 3), dtype=torch.uint8)
    ours = normalize_images(images, "cpu", channels_last=channels_last)
    theirs = TF.normalize(images.permute(0, 3, 1, 2).float() / 255, list(IMAGENET_MEAN),
                          list(IMAGENET_STD))
    assert ours.shape == (3, 3, 5, 7) and ours.dtype == torch.float32
    assert torch.allclose(ours, theirs, atol=1e-5)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert ours.is_contiguous(memory_format=memory_format)
    assert ours.data_ptr() != images.data_ptr()
    if torch.cuda.is_available():  # the device path gives the same numbers
        on_device = normalize_images(images, "cuda", channels_last=channels_last)
        assert torch.allclose(on_device.cpu(), ours, atol=1e-6)


@pytest.mark.timeout(300)
def test_an_epoch_ended_early_closes_ffcv_epoch(coded_beton, monkeypatch):
    """A break or an exception mid-epoch closes FFCV's epoch: its batch thread has ended
    (FFCV alone would leave it decoding, then waiting forever on its full queue)."""
    made = spy_epoch_iterators(monkeypatch)
    loader = make_pretrain_loader(coded_beton, batch_size_per_rank=4, num_workers=1, aug=SHAPE_ONLY,
                                  res=16, seed=3, device="cpu", with_labels=True)
    assert len(loader) == 10
    for _batch in loader:
        break
    with pytest.raises(RuntimeError, match="mid-epoch"):
        for _batch in loader:
            raise RuntimeError("mid-epoch")
    loader.set_epoch(0)
    full = run_epoch(loader)
    assert len(made) == 3 and len(full) == 10
    for epoch in made:
        assert epoch.close_calls >= 1
        assert not epoch.is_alive()
    loader.set_epoch(0)
    first = next(iter(loader))  # the next pass is unaffected
    assert all(torch.equal(x, y) for x, y in zip(first, full[0]))
