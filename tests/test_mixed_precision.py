"""precision: auto picks bf16 only where the GPU computes it natively (compute capability
>= 8.0); fp16 with a GradScaler before that; fp32 on the CPU."""
from __future__ import annotations

import pytest
import torch

from ffcv_bt.stage.mixed_precision import autocast_dtype

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("capability, want", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                              ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
                         ids=["V100", "T4", "A100", "H100"])
def test_auto_needs_ampere_for_bf16(monkeypatch, capability, want) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # torch answers True on a V100 too (bf16 emulated): it must not be what decides
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", CUDA) is want


def test_explicit_choices_and_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert autocast_dtype("bf16", CUDA) is torch.bfloat16
    assert autocast_dtype("fp16", CUDA) is torch.float16
    assert autocast_dtype("fp32", CUDA) is None
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is None
