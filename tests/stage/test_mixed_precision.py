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


@pytest.fixture()
def tf32_flags():
    """Start from torch's GPU defaults turned fully on; put the flags back afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("precision, want", [("fp32", (False, False)), ("auto", (True, False)),
                                             ("bf16", (True, False)), ("fp16", (True, False))])
def test_set_tf32_follows_the_precision(tf32_flags, precision, want) -> None:
    from ffcv_bt.stage.mixed_precision import set_tf32

    assert set_tf32(precision) is want[0]
    assert flags() == want


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_pretraining_setup_sets_tf32(tf32_flags, monkeypatch, precision) -> None:
    """The stages' precision setup (run on a mocked Ampere GPU) sets both flags."""
    from ffcv_bt.stage.mixed_precision import precision_setup

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    dtype, scaler = precision_setup(precision, CUDA)
    assert (dtype, scaler) == ((None if precision == "fp32" else torch.bfloat16), None)
    assert flags() == (precision != "fp32", False)


def test_knn_extraction_runs_without_tf32_and_restores_it(tf32_flags) -> None:
    from ffcv_bt.evaluation.knn import extract_features

    seen = []

    class Recording(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(flags())
            return x.flatten(1)

    batches = [(torch.ones(2, 3, 4, 4), torch.tensor([0, 1]))] * 2
    features, labels = extract_features(Recording(), batches, "cpu")
    assert features.shape == (4, 48) and labels.tolist() == [0, 1, 0, 1]
    assert seen == [(False, False)] * 2
    assert flags() == (True, True)  # the enclosing stage's settings are back
