"""The device file's step rate is the recipe's setting (not the fastest measured one), with
torchrun's SyncBatchNorm + DDP cost applied when it crossed ranks."""
from __future__ import annotations

import argparse

import pytest
import torch

from bench import gpu_report
from bench.gpu_plan import make_plan


def _row(precision: str, channels_last: bool, rate: float, res: int = 224, compile: bool = False,
         **extra) -> dict:
    return {"res": res, "precision": precision, "channels_last": channels_last, "compile": compile,
            "images_per_s": rate, "peak_memory_gib": 1.0, "finite": True, **extra}


def _plan():
    args = argparse.Namespace(device="cuda", quick=False, batch=256, images=100, ddp_nproc=2,
                              no_compile=False, batch_override=0)
    plan = make_plan(args)
    plan.resolutions = [224]
    return plan


@pytest.fixture
def ampere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    return torch.device("cuda", 0)


def test_recipe_setting_is_base_yaml_s(ampere) -> None:
    assert gpu_report.recipe_setting(ampere) == {"precision": "bf16", "channels_last": True,
                                                 "compile": False}
    assert gpu_report.recipe_setting(torch.device("cpu")) == {"precision": "fp32",
                                                              "channels_last": False,
                                                              "compile": False}


def test_the_recipe_row_not_the_fastest_and_the_ddp_cost(ampere, monkeypatch) -> None:
    monkeypatch.setattr(gpu_report, "device_info", lambda device: {"device": "X"})
    steps = [_row("bf16", True, 1000.0), _row("fp16", False, 1300.0),
             _row("bf16", True, 1500.0, compile=True)]
    checks = {"torchrun": {"res": 224, "precision": "bf16", "channels_last": True,
                           "images_per_s": 900.0, "cross_rank_paths_exercised": True}}
    profile = gpu_report.build_profile(_plan(), ampere, [], steps, None, None, checks, 1.0)
    entry = profile["pretrain"]["224"]
    assert entry["setting"] == "recipe"
    assert (entry["precision"], entry["channels_last"], entry["compile"]) == ("bf16", True, False)
    assert entry["single_process_images_per_s"] == 1000.0
    assert entry["ddp_factor"] == pytest.approx(0.9)
    assert entry["images_per_s"] == pytest.approx(900.0)
    assert entry["compiled_images_per_s"] == 1500.0

    one_rank = {"torchrun": {**checks["torchrun"], "cross_rank_paths_exercised": False}}
    entry = gpu_report.build_profile(_plan(), ampere, [], steps, None, None, one_rank,
                                     1.0)["pretrain"]["224"]
    assert entry["ddp_factor"] is None and entry["images_per_s"] == 1000.0

    failed = [_row("bf16", True, 1000.0, error="out of memory"), *steps[1:]]
    entry = gpu_report.build_profile(_plan(), ampere, [], failed, None, None, one_rank,
                                     1.0)["pretrain"]["224"]
    assert entry["setting"].startswith("fastest eager") and entry["precision"] == "fp16"
