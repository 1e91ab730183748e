"""Each query's k nearest rows of a feature bank by cosine similarity, from a bank held
whole or in shards (one per rank).

Tie rule: rows rank by similarity, highest first, and equal similarities by bank position,
lowest first (the bank is every rank's rows in rank order, as ``gather_rows`` concatenates
them). The k nearest of the bank are therefore the same rows whether it is held whole or in
shards, and merging each shard's k nearest gives the whole bank's exactly: a rank keeps only
its own rows (bank / world_size of memory), scores every query against them and exchanges
k candidates per query.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ffcv_bt.distributed.collectives import all_gather_into, world_size
from ffcv_bt.stage.mixed_precision import true_fp32

_LAST = torch.iinfo(torch.int64).max  # the position of a padding candidate: after every row
# Rows of the bank per similarity product. A matrix product's last bit can depend on its
# shape (BLAS kernels differ at tile edges), so every rank computes the same products as one
# process: the bank's tiles at fixed positions, whatever part of them it holds.
TILE_ROWS = 16384


def shard_rows(count: int, device: torch.device | str) -> tuple[int, int]:
    """This rank's first bank position and the bank's size, from every rank's row
    ``count`` (one all-gather; ``(0, count)`` alone)."""
    if world_size() == 1:
        return 0, count
    counts = torch.full((1,), count, dtype=torch.int64, device=device)
    every = counts.new_empty(world_size())
    all_gather_into(every, counts)
    every = every.tolist()
    return sum(every[:dist.get_rank()]), sum(every)


def in_rule_order(similarity: Tensor, position: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """The candidates of each row (dim 1) sorted by the tie rule: similarity descending,
    then position ascending; ``others`` follow the same permutation."""
    order = position.argsort(dim=1, stable=True)
    by_position = similarity.gather(1, order)
    order = order.gather(1, by_position.argsort(dim=1, descending=True, stable=True))
    return tuple(t.gather(1, order) for t in (similarity, position, *others))


def chunk_nearest(similarity: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` (<= columns) largest of each row of ``similarity`` and their columns, by the
    tie rule. ``topk`` keeps any of equal values at the k-th place; rows where that choice
    matters (more equal values than places) take the lowest columns instead."""
    values, index = similarity.topk(k, dim=1)
    threshold = values[:, -1:]
    ambiguous = (similarity == threshold).sum(1) > (values == threshold).sum(1)
    for row in ambiguous.nonzero().flatten().tolist():
        above = (similarity[row] > threshold[row]).nonzero().flatten()
        tied = (similarity[row] == threshold[row]).nonzero().flatten()[:k - above.numel()]
        index[row] = torch.cat([above, tied])
        values[row] = similarity[row, index[row]]
    return values, index


def shard_nearest(bank: Tensor, labels: Tensor, queries: Tensor, k: int, offset: int = 0,
                  total: int | None = None, chunk_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity, bank position (``offset`` + row) and label, each (Q, k), of each query's
    ``k`` nearest rows of ``bank`` (rows L2-normalised, on the queries' device and dtype;
    positions ``offset`` to ``offset + len(bank)`` of a bank of ``total`` rows), in
    tie-rule order. Fewer than ``k`` rows are padded with similarity -inf, position after
    every row and label 0.

    Similarities are computed in the bank's tiles (see :data:`TILE_ROWS`), a shard's partial
    tiles zero-filled to their whole shape, so that each similarity comes out of the same
    product, bit for bit, whichever rank holds the row.
    """
    count = bank.shape[0]
    total = offset + count if total is None else total
    shape = (queries.shape[0], k)
    best = (queries.new_full(shape, float("-inf")),
            torch.full(shape, _LAST, dtype=torch.int64, device=queries.device),
            torch.zeros(shape, dtype=torch.int64, device=queries.device))
    first_tile = offset - offset % TILE_ROWS
    for tile in range(first_tile, offset + count, TILE_ROWS):
        width = min(TILE_ROWS, total - tile)
        low, high = max(tile, offset), min(tile + width, offset + count)  # this rank's rows
        block = bank[low - offset:high - offset]
        if high - low < width:
            block = bank.new_zeros((width, bank.shape[1]))
            block[low - tile:high - tile] = bank[low - offset:high - offset]
        take = min(k, high - low)
        for start in range(0, queries.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            with true_fp32():
                similarity = (queries[rows] @ block.T)[:, low - tile:high - tile]
            values, index = chunk_nearest(similarity, take)
            candidates = (values, index + low, labels[index + (low - offset)])
            merged = merge_nearest(*(torch.cat([b[rows], c], dim=1)
                                     for b, c in zip(best, candidates)), k)
            for b, m in zip(best, merged):
                b[rows] = m
    return best


def merge_nearest(similarity: Tensor, position: Tensor, label: Tensor,
                  k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` first by the tie rule of each row's candidates (several shards' nearest
    side by side along dim 1)."""
    similarity, position, label = in_rule_order(similarity, position, label)
    return similarity[:, :k], position[:, :k], label[:, :k]


def gather_candidates(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Every rank's (Q, k) candidates side by side: (Q, world_size * k) each (identity alone)."""
    if world_size() == 1:
        return tensors
    out = []
    for t in tensors:
        every = t.new_empty((world_size(),) + tuple(t.shape))
        all_gather_into(every.view(-1, t.shape[1]), t.contiguous())
        out.append(every.permute(1, 0, 2).reshape(t.shape[0], -1))
    return tuple(out)
