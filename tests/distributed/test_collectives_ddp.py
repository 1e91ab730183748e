"""2 gloo ranks: the single-tensor collectives (all-gather, reduce-scatter and its CPU
fallback) give what one process computes on the whole batch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ffcv_bt.distributed import collectives
from ffcv_bt.distributed.collectives import differentiable_gather_rows, gather_rows

WORLD = 2
ROWS, DIM = 3, 5


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's rows (WORLD, ROWS, DIM) and every rank's loss weights (WORLD, WORLD*ROWS, DIM)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(WORLD, ROWS, DIM, generator=g, dtype=torch.float64)
    w = torch.randn(WORLD, WORLD * ROWS, DIM, generator=g, dtype=torch.float64)
    return x, w


def _rank_main(rank: int, init_file: str, work: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x, w = _inputs()
        result = {}
        for mode in ("standard", "fallback"):
            if mode == "fallback":  # as where gloo lacks the single-tensor reduce-scatter
                def missing(*args, **kwargs):
                    raise RuntimeError("no reduce_scatter_tensor on this backend")
                collectives._REDUCE_SCATTER_INTO = missing
            mine = x[rank].clone().requires_grad_(True)
            gathered = differentiable_gather_rows(mine)
            (w[rank] * gathered).sum().backward()
            result[mode] = (gathered.detach(), mine.grad.detach())
        # unequal row counts outside autograd: rank r contributes r + 1 rows
        result["ragged"] = gather_rows(x[rank][: rank + 1])
        torch.save(result, Path(work) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_gather_and_reduce_scatter_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    x, w = _inputs()
    whole = x.reshape(WORLD * ROWS, DIM).clone().requires_grad_(True)
    (w * whole.unsqueeze(0)).sum().backward()  # the sum of every rank's loss, in one process
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for mode in ("standard", "fallback"):
            gathered, grad = result[mode]
            torch.testing.assert_close(gathered, whole.detach(), rtol=0, atol=0)
            torch.testing.assert_close(grad, whole.grad[rank * ROWS:(rank + 1) * ROWS],
                                       rtol=1e-12, atol=1e-12, msg=f"{mode} rank {rank}")
        torch.testing.assert_close(result["ragged"], torch.cat([x[0][:1], x[1][:2]]), rtol=0, atol=0)


def test_standard_collective_names_exist() -> None:
    """The names the CUDA path calls are the installed torch's own."""
    assert collectives._ALL_GATHER_INTO in (getattr(dist, "all_gather_single", None),
                                            dist.all_gather_into_tensor)
    assert collectives._REDUCE_SCATTER_INTO in (getattr(dist, "reduce_scatter_single", None),
                                                dist.reduce_scatter_tensor)
