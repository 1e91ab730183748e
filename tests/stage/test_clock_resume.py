"""Device-hours across a stop and resume of pretraining: the hours the stage reports equal
the hours before the stop plus the hours after. The clock's time source is replaced by a
fake that advances exactly 10 s per training step, so every number is known in advance."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from recipes import write_tiny_recipe

import ffcv_bt.stage.clock as clock_module
from ffcv_bt.config import load_recipe
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import Preempted
from ffcv_bt.train import pretrain as pretrain_module

EPOCHS, STEPS, SECONDS_PER_STEP = 2, 3, 10.0
ORIGINAL_STEP = pretrain_module.Pretrainer.train_step


@pytest.fixture
def fake_time(monkeypatch):
    """The clock's perf_counter, advanced only by the patched training step."""
    now = SimpleNamespace(t=1000.0)
    monkeypatch.setattr(clock_module, "time", SimpleNamespace(perf_counter=lambda: now.t))
    return now


def run_steps(monkeypatch, now, stop_at_step: int | None = None) -> list[int]:
    taken: list[int] = []

    def train_step(self, view1, view2):
        assert self.clock.running  # the step is inside the timed interval
        taken.append(self.step)
        now.t += SECONDS_PER_STEP
        if stop_at_step is not None and self.step == stop_at_step:
            self.stop.received = 15  # as if SIGTERM arrived during this step
        return ORIGINAL_STEP(self, view1, view2)

    monkeypatch.setattr(pretrain_module.Pretrainer, "train_step", train_step)
    return taken


@pytest.mark.slow  # ~80 s on a loaded 2-core machine: two Pretrainers (loader set-up dominates)
@pytest.mark.timeout(600)
def test_pretraining_hours_across_a_mid_epoch_stop(tiny_dataset, tmp_path, monkeypatch, fake_time):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset, epochs=EPOCHS), {
        "train.max_steps_per_epoch": str(STEPS), "monitor.every_epochs": "0"})
    total = EPOCHS * STEPS * SECONDS_PER_STEP  # 6 steps x 10 s, as an uninterrupted run

    stop_at = STEPS + 1  # epoch 1, second batch: steps 0..4 done, 50 s
    before = run_steps(monkeypatch, fake_time, stop_at_step=stop_at)
    with pytest.raises(Preempted):
        pretrain_module.Pretrainer(recipe, tmp_path / "stopped", DistInfo()).run()
    assert before == list(range(stop_at + 1))
    seconds_before = len(before) * SECONDS_PER_STEP
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert state["device_seconds"] == seconds_before

    fake_time.t += 3600.0  # the time the job waited in the queue is not the stage's
    after = run_steps(monkeypatch, fake_time)
    resumed = pretrain_module.Pretrainer(recipe, tmp_path / "stopped", DistInfo())
    assert resumed.clock.seconds == seconds_before
    result = resumed.run()
    assert after == list(range(stop_at + 1, EPOCHS * STEPS))
    assert result["device_seconds"] == seconds_before + len(after) * SECONDS_PER_STEP == total
    assert result["device_hours"] == pytest.approx(total / 3600)
