"""2 gloo ranks with batch B each must give the loss and the gradients of 1 rank with batch 2B.

This pins the gradient scale under DDP (which averages gradients over ranks) and the
synchronised BatchNorm layers of backbone and projector, for both loss formulations.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from ffcv_bt.distributed.sync_bn import GlobalBatchNorm
from ffcv_bt.method.model import BarlowTwins, convert_sync_batchnorm
from ffcv_bt.method.objective import barlow_twins_loss

WORLD = 2
BATCH_PER_RANK = 4
FORMULATIONS = ("cross", "gram")


def small_model() -> BarlowTwins:
    """BN in every stage and in the projector; zero_init_residual off so every weight gets a
    gradient. Float64 so that agreement is limited by rounding only."""
    torch.manual_seed(0)
    return BarlowTwins("resnet18", "32-32-32", width=4, small_stem=True,
                       zero_init_residual=False).double()


def step(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, formulation: str) -> dict:
    """One forward/backward; the loss, every gradient and every BN buffer afterwards."""
    z1, z2 = model(x1, x2)
    loss = barlow_twins_loss(z1, z2, formulation=formulation)
    loss.backward()
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return {
        "loss": loss.detach(),
        "grads": {n: p.grad.detach().clone() for n, p in inner.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in inner.named_buffers()},
    }


def _rank_main(rank: int, init_file: str, work: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x1, x2 = torch.load(Path(work) / "views.pt")
        rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        for formulation in FORMULATIONS:
            model = small_model()
            model.load_state_dict(torch.load(Path(work) / "model.pt"))
            model = convert_sync_batchnorm(model)
            assert any(isinstance(m, GlobalBatchNorm) for m in model.modules())
            result = step(DistributedDataParallel(model), x1[rows], x2[rows], formulation)
            torch.save(result, Path(work) / f"{formulation}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_ranks_equal_one_rank_with_the_whole_batch(tmp_path):
    model = small_model()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    g = torch.Generator().manual_seed(1)
    views = torch.randn(2, WORLD * BATCH_PER_RANK, 3, 8, 8, generator=g, dtype=torch.float64)
    torch.save((views[0], views[1]), tmp_path / "views.pt")

    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)

    for formulation in FORMULATIONS:
        single_model = small_model()
        single_model.load_state_dict(torch.load(tmp_path / "model.pt"))
        single = step(single_model, views[0], views[1], formulation)
        for rank in range(WORLD):
            ranked = torch.load(tmp_path / f"{formulation}_rank{rank}.pt")
            # Float64 throughout: 1e-10 relative for the loss; each gradient within 1e-9 of its
            # norm (the DDP path sums in another order and through SyncBN-style statistics).
            torch.testing.assert_close(ranked["loss"], single["loss"], rtol=1e-10, atol=0)
            assert ranked["grads"].keys() == single["grads"].keys()
            for name, want in single["grads"].items():
                got = ranked["grads"][name]
                assert want.norm() > 0, name
                assert (got - want).norm() <= 1e-9 * want.norm(), (formulation, rank, name)
            # running statistics follow the global batch as well
            for name, want in single["buffers"].items():
                torch.testing.assert_close(ranked["buffers"][name], want, rtol=1e-10, atol=1e-12,
                                           msg=f"{formulation} rank {rank} buffer {name}")
