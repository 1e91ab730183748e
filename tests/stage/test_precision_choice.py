"""Mixed precision as the steps construct and use it: the autocast dtype and whether a
GradScaler exists for every device and precision setting (bf16: no scaler; fp16: a scaler;
fp32 and CPU: neither), and the pretraining step running its forward under that dtype and
its backward through the scaler."""
from __future__ import annotations

import warnings

import pytest
import torch

from ffcv_bt.stage.mixed_precision import precision_setup
from ffcv_bt.train.step import barlow_step

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
LOSS = {"lambd": 0.0051, "scale_loss": 1.0, "formulation": "cross"}

# (device, compute capability, precision) -> (autocast dtype, GradScaler?)
EXPECTED = [
    (CPU, None, "auto", None, False), (CPU, None, "bf16", None, False),
    (CPU, None, "fp16", None, False), (CPU, None, "fp32", None, False),
    (CUDA, (7, 0), "auto", torch.float16, True), (CUDA, (8, 0), "auto", torch.bfloat16, False),
    (CUDA, (9, 0), "auto", torch.bfloat16, False), (CUDA, (7, 0), "bf16", torch.bfloat16, False),
    (CUDA, (9, 0), "bf16", torch.bfloat16, False), (CUDA, (9, 0), "fp16", torch.float16, True),
    (CUDA, (7, 0), "fp16", torch.float16, True), (CUDA, (9, 0), "fp32", None, False),
]


@pytest.mark.parametrize("device,capability,precision,dtype,scaled", EXPECTED,
                         ids=[f"{d.type}-{c}-{p}" for d, c, p, *_ in EXPECTED])
def test_pretrainer_precision(monkeypatch, device, capability, precision, dtype, scaled):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a cuda GradScaler on a host without CUDA says so
        amp_dtype, scaler = precision_setup(precision, device)
    assert amp_dtype is dtype
    assert isinstance(scaler, torch.amp.GradScaler) if scaled else scaler is None


class _Twins(torch.nn.Module):
    """Two views through one linear layer; remembers the dtype its layer computed in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(12, 8)
        self.seen: list[torch.dtype] = []

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = self.layer(a), self.layer(b)
        self.seen += [z1.dtype, z2.dtype]
        return z1, z2


class _SpyScaler:
    """Records the GradScaler calls the step makes (scale -> backward, step, update)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        self.calls.append("scale")
        return loss * 1024.0

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append("step")
        for group in optimizer.param_groups:  # unscale, as GradScaler.step does
            for p in group["params"]:
                p.grad /= 1024.0
        optimizer.step()

    def update(self) -> None:
        self.calls.append("update")


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)


@pytest.mark.parametrize("amp_dtype,computed", [(None, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_step_forward_runs_in_the_autocast_dtype(amp_dtype, computed):
    model = _Twins()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = barlow_step(model, optimizer, None, amp_dtype, LOSS, *_views())
    assert model.seen == [computed, computed]
    assert loss.dtype == torch.float32  # the objective always in float32


def test_step_backward_goes_through_the_scaler_when_there_is_one():
    plain, scaled = _Twins(), _Twins()
    spy = _SpyScaler()
    views = _views()
    barlow_step(plain, torch.optim.SGD(plain.parameters(), lr=0.1), None, None, LOSS, *views)
    barlow_step(scaled, torch.optim.SGD(scaled.parameters(), lr=0.1), spy, None, LOSS, *views)  # type: ignore[arg-type]
    assert spy.calls == ["scale", "step", "update"]
    # scaled then unscaled: the same update as without the scaler
    torch.testing.assert_close(scaled.layer.weight, plain.layer.weight)


@pytest.mark.parametrize("protocol,precision,computed", [
    ("linear", "bf16", torch.bfloat16),
    ("semi1", "bf16", torch.float32)])  # fine-tuning is always fp32 (no scaler there)
def test_evaluation_backbone_runs_in_the_protocol_precision(protocol, precision, computed,
                                                            tiny_dataset, tmp_path, monkeypatch):
    """The linear probe's frozen backbone under the protocol's precision, fine-tuning in fp32,
    read off the backbone's output during validation. The CPU has no mixed precision, so
    autocast_dtype answers as a bf16 GPU would; CPU autocast then really runs bf16."""
    from recipes import write_tiny_recipe

    import ffcv_bt.evaluation.trained as trained
    import ffcv_bt.stage.mixed_precision as mixed_precision
    from ffcv_bt.config import load_recipe
    from ffcv_bt.distributed.process_group import DistInfo

    asked = []

    def as_a_gpu(requested: str, device: torch.device) -> torch.dtype | None:
        asked.append(requested)
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(requested)

    monkeypatch.setattr(mixed_precision, "autocast_dtype", as_a_gpu)
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), {"eval.protocol": "smoke"})
    recipe = recipe.with_overrides({"linear.precision": precision})
    evaluation = trained.Evaluation(recipe, protocol, "random", tmp_path / "eval", DistInfo())
    assert asked == ([precision] if protocol == "linear" else ["fp32"])  # fine-tuning: fp32
    seen: list[torch.dtype] = []
    evaluation.model.backbone.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    evaluation.validate()
    assert seen and set(seen) == {computed}
