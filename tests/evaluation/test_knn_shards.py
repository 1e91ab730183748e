"""The kNN of a bank held in shards (one per gloo rank) equals one process's on the whole
bank, ties included: equal similarities rank by bank position, lowest first."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ffcv_bt.evaluation import neighbours
from ffcv_bt.evaluation.knn import knn_accuracy, knn_predict
from ffcv_bt.evaluation.neighbours import merge_nearest, shard_nearest

WORLD = 2
CLASSES = 4


def _bank(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bank (31, 6) with repeated rows of different labels (ties at the k-th place), and
    queries (9, 6) with labels."""
    g = torch.Generator().manual_seed(5)
    bank = torch.randn(31, 6, generator=g, dtype=dtype)
    bank[[3, 17, 20, 28]] = bank[8].clone()  # 5 equal rows on both sides of the rank boundary
    labels = torch.randint(0, CLASSES, (31,), generator=g)
    labels[[3, 8, 17, 20, 28]] = torch.tensor([0, 1, 2, 3, 0])
    queries = torch.randn(9, 6, generator=g, dtype=dtype)
    queries[0] = bank[8] * 2.0  # its nearest rows are the 5 equal ones
    return bank, labels, queries, torch.randint(0, CLASSES, (9,), generator=g)


SPLITS = {"uneven": [13, 18], "short": [2, 29], "empty": [0, 31]}  # rows per rank
TILES = (neighbours.TILE_ROWS, 5)  # one tile; tiles that the rank boundary cuts
CASES = [(split, k, tile) for split in SPLITS for k in (1, 3, 7, 40) for tile in TILES]


def _rank_main(rank: int, init_file: str, work: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        result = {}
        for dtype in (torch.float64, torch.float32):
            bank, labels, queries, query_labels = _bank(dtype)
            for split, k, tile in CASES:
                neighbours.TILE_ROWS = tile
                start = sum(SPLITS[split][:rank])
                rows = slice(start, start + SPLITS[split][rank])
                result[(dtype, split, k, tile)] = (
                    knn_predict(bank[rows], labels[rows], queries, CLASSES, k=k, temperature=0.1,
                                chunk_size=4, sharded=True),
                    knn_accuracy(bank[rows], labels[rows], queries, query_labels, CLASSES, k=k,
                                 temperature=0.1, sharded=True))
        torch.save(result, Path(work) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_sharded_knn_equals_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for dtype in (torch.float64, torch.float32):
            bank, labels, queries, query_labels = _bank(dtype)
            for split, k, tile in CASES:
                monkeypatch.setattr(neighbours, "TILE_ROWS", tile)
                scores, accuracy = result[(dtype, split, k, tile)]
                whole = knn_predict(bank, labels, queries, CLASSES, k=k, temperature=0.1,
                                    chunk_size=4)
                assert torch.equal(scores, whole), (rank, dtype, split, k, tile)
                assert accuracy == knn_accuracy(bank, labels, queries, query_labels, CLASSES,
                                                k=k, temperature=0.1)


def test_ties_at_the_kth_place_go_to_the_lowest_bank_positions() -> None:
    bank, labels, queries, _ = _bank(torch.float64)
    bank = torch.nn.functional.normalize(bank, dim=1)
    query = torch.nn.functional.normalize(queries[:1], dim=1)
    for k in (1, 2, 4):
        similarity, position, label = shard_nearest(bank, labels, query, k)
        assert position[0].tolist() == [3, 8, 17, 20][:k]
        assert label[0].tolist() == [0, 1, 2, 3][:k]
        assert torch.all(similarity == similarity[0, 0])
    scores = knn_predict(bank, labels, query, CLASSES, k=2, temperature=0.1)
    assert scores[0, 0] == scores[0, 1] > 0 and scores[0, 2] == scores[0, 3] == 0


@pytest.mark.parametrize("cut", [0, 1, 8, 9, 20, 31])
def test_merging_shard_candidates_gives_the_whole_banks(cut: int) -> None:
    bank, labels, queries, _ = _bank(torch.float32)
    bank = torch.nn.functional.normalize(bank, dim=1)
    queries = torch.nn.functional.normalize(queries, dim=1)
    for k in (1, 5, 31):
        whole = shard_nearest(bank, labels, queries, k)
        parts = [shard_nearest(bank[:cut], labels[:cut], queries, k, total=31),
                 shard_nearest(bank[cut:], labels[cut:], queries, k, offset=cut, total=31)]
        merged = merge_nearest(*(torch.cat(pair, dim=1) for pair in zip(*parts)), k)
        for got, want in zip(merged, whole):
            assert torch.equal(got, want)
