"""The stage skeleton builds DDP with gradients as views of its buckets (no per-step copy in
and out of them); no process group is needed to see the arguments DDP gets."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.stage import trainer as trainer_module
from ffcv_bt.stage.trainer import StageTrainer


def test_ddp_gets_gradient_as_bucket_view(monkeypatch) -> None:
    built = []

    def spy(module, **kwargs):
        built.append(kwargs)
        return module

    monkeypatch.setattr(trainer_module, "DistributedDataParallel", spy)
    stage = SimpleNamespace(device=torch.device("cpu"), channels_last=False,
                            dist=DistInfo(rank=0, world_size=2))
    model = nn.Linear(3, 2)
    StageTrainer.wrap(stage, model, sync_bn=False)
    assert built == [{"device_ids": None, "gradient_as_bucket_view": True}]
    assert "static_graph" not in built[0]  # off: docs/gpu.md says why
    StageTrainer.wrap(SimpleNamespace(**{**vars(stage), "dist": DistInfo()}), model, sync_bn=False)
    assert len(built) == 1  # alone: no DDP
