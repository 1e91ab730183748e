"""What the pretraining loop actually applied, against an independent computation of the
schedules: the learning rate of each parameter group the optimizer held at every step, and
the resolution of every batch, over a multi-epoch run, with and without a mid-epoch resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from recipes import write_tiny_recipe

from ffcv_bt.config import load_recipe
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import Preempted
from ffcv_bt.train import pretrain as pretrain_module

EPOCHS, STEPS_PER_EPOCH, BATCH = 4, 5, 16
RESOLUTION = {"min_res": 8, "max_res": 16, "start_ramp": 1, "end_ramp": 3, "multiple": 4}
LR_WEIGHTS, LR_BIASES, WARMUP_EPOCHS, FINAL = 0.3, 0.05, 1.4, 0.01
ORIGINAL_STEP = pretrain_module.Pretrainer.train_step


def expected_lr(step: int, group_lr: float) -> float:
    """Linear warmup over WARMUP_EPOCHS x steps, then cosine to FINAL x base (per step)."""
    base = BATCH / 256
    total, warmup = EPOCHS * STEPS_PER_EPOCH, round(WARMUP_EPOCHS * STEPS_PER_EPOCH)
    if step < warmup:
        return group_lr * base * step / warmup
    q = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return group_lr * (base * FINAL + (base - base * FINAL) * q)


def expected_resolution(epoch: int) -> int:
    r = RESOLUTION
    value = np.interp(epoch, [r["start_ramp"], r["end_ramp"]], [r["min_res"], r["max_res"]])
    return int(np.round(value / r["multiple"])) * r["multiple"]


@pytest.fixture()
def recipe(tiny_dataset, tmp_path):
    path = write_tiny_recipe(tmp_path, tiny_dataset, epochs=EPOCHS)
    r = RESOLUTION
    return load_recipe(path, {
        "optim.batch_size": str(BATCH), "optim.lr_weights": str(LR_WEIGHTS),
        "optim.lr_biases": str(LR_BIASES), "optim.warmup_epochs": str(WARMUP_EPOCHS),
        "optim.final_lr_ratio": str(FINAL), "train.max_steps_per_epoch": str(STEPS_PER_EPOCH),
        "monitor.every_epochs": "0", **{f"resolution.{k}": str(v) for k, v in r.items()}})


def record_steps(monkeypatch, stop_at_step: int | None = None) -> list[dict]:
    """Patch the trainer's step to record what the optimizer holds when it steps."""
    seen: list[dict] = []

    def train_step(self, view1, view2):
        groups = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        seen.append({"step": self.step, "epoch": self.epoch, "weights": groups["weights"],
                     "biases": groups["biases"], "res": (view1.shape[-2], view1.shape[-1])})
        if stop_at_step is not None and self.step == stop_at_step:
            self.stop.received = 15  # as if SIGTERM arrived during this step
        return ORIGINAL_STEP(self, view1, view2)

    monkeypatch.setattr(pretrain_module.Pretrainer, "train_step", train_step)
    return seen


def check_against_schedule(seen: list[dict]) -> None:
    assert [s["step"] for s in seen] == list(range(EPOCHS * STEPS_PER_EPOCH))
    for s in seen:
        assert s["weights"] == pytest.approx(expected_lr(s["step"], LR_WEIGHTS), rel=1e-12, abs=1e-15)
        assert s["biases"] == pytest.approx(expected_lr(s["step"], LR_BIASES), rel=1e-12, abs=1e-15)
        epoch = s["step"] // STEPS_PER_EPOCH
        assert s["res"] == (expected_resolution(epoch),) * 2, f"step {s['step']}"
    assert {expected_resolution(e) for e in range(EPOCHS)} == {8, 12, 16}  # the ramp is exercised


@pytest.mark.timeout(900)
def test_loop_applies_the_schedules_straight_and_across_a_mid_epoch_resume(
        recipe, tmp_path, monkeypatch) -> None:
    """The same schedule at every step in an uninterrupted run and in one stopped mid-epoch
    (epoch 2, batch 2) and resumed in a new Pretrainer, which ends at the same weights."""
    straight = record_steps(monkeypatch)
    pretrain_module.Pretrainer(recipe, tmp_path / "straight", DistInfo()).run()
    check_against_schedule(straight)

    stop_at = 2 * STEPS_PER_EPOCH + 2
    before = record_steps(monkeypatch, stop_at_step=stop_at)
    with pytest.raises(Preempted):
        pretrain_module.Pretrainer(recipe, tmp_path / "stopped", DistInfo()).run()
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"]) == (2, 3)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    after = record_steps(monkeypatch)
    pretrain_module.Pretrainer(recipe, tmp_path / "stopped", DistInfo()).run()
    assert before[-1]["step"] == stop_at and after[0]["step"] == stop_at + 1
    check_against_schedule(before + after)
    a = torch.load(tmp_path / "straight" / "resnet18.pth", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "resnet18.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(600)
def test_optimizer_and_objective_hold_the_recipe_values(recipe, tmp_path, monkeypatch) -> None:
    """LARS's weight decay, momentum and eta per group, and the loss's lambd, scale and
    formulation, as the loop uses them (distinct values, so that a swap shows)."""
    from ffcv_bt.train import step as step_module

    recipe = recipe.with_overrides({
        "optim.weight_decay": 3e-5, "optim.momentum": 0.85, "optim.eta": 0.004, "optim.epochs": 1,
        "loss.lambd": 0.0123, "loss.scale_loss": 0.37, "loss.formulation": "cross"})
    trainer = pretrain_module.Pretrainer(recipe, tmp_path / "run", DistInfo())
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"weights", "biases"}
    assert {id(p) for p in groups["weights"]["params"]} == \
        {id(p) for p in trainer.model.parameters() if p.ndim != 1}
    for group in groups.values():
        assert (group["weight_decay"], group["momentum"], group["eta"]) == (3e-5, 0.85, 0.004)
    seen = []
    loss_fn = step_module.barlow_twins_loss

    def recording(z1, z2, **kwargs):
        seen.append(kwargs)
        return loss_fn(z1, z2, **kwargs)

    monkeypatch.setattr(step_module, "barlow_twins_loss", recording)
    trainer.run()
    assert seen and all(k == {"lambd": 0.0123, "scale_loss": 0.37, "formulation": "cross"} for k in seen)
