"""A stop signal during an evaluation (the hours-long linear probe): the epoch's start is
on disk, the handler that was there before ours (submitit's requeue) is called, our handlers
are restored, and the same evaluation resumed gives the uninterrupted result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from recipes import write_tiny_recipe

import ffcv_bt.stage.clock as clock_module
from ffcv_bt.config import load_recipe
from ffcv_bt.distributed.preemption import StopSignals
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import Preempted
from ffcv_bt.evaluation.trained import Evaluation

SECONDS_PER_BATCH = 10.0


class _SignalAt:
    """Wraps a loader; sends ``sig`` to this process when epoch ``epoch``'s batch ``batch``
    is handed out (as SLURM's warning would arrive mid-epoch). Each batch advances the fake
    clock ``now`` by SECONDS_PER_BATCH."""

    def __init__(self, loader, sig: int, epoch: int, batch: int, now: SimpleNamespace) -> None:
        self.loader, self.sig, self.epoch, self.batch, self.now = loader, sig, epoch, batch, now

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        epoch = self.loader.epoch
        for i, item in enumerate(self.loader):
            self.now.t += SECONDS_PER_BATCH
            if (epoch, i) == (self.epoch, self.batch):
                os.kill(os.getpid(), self.sig)
            yield item


@pytest.mark.timeout(600)
def test_signal_during_the_linear_probe_then_resume(tiny_dataset: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Also the hours: the clock's time source is a fake advanced 10 s per training batch, so
    the stopped run's cut-short epoch (its work replayed) still counts after the resume."""
    now = SimpleNamespace(t=0.0)
    monkeypatch.setattr(clock_module, "time", SimpleNamespace(perf_counter=lambda: now.t))
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), {"linear.epochs": "3"})
    straight_run = Evaluation(recipe, "linear", "random", tmp_path / "straight", DistInfo())
    straight_run.train_loader = _SignalAt(straight_run.train_loader, signal.SIGUSR2, -1, -1, now)
    straight = straight_run.run()
    batches = len(straight_run.train_loader)
    assert straight["device_seconds"] == 3 * batches * SECONDS_PER_BATCH

    requeued: list[int] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: requeued.append(signum))
    try:
        stopped = Evaluation(recipe, "linear", "random", tmp_path / "stopped", DistInfo())
        stopped.train_loader = _SignalAt(stopped.train_loader, signal.SIGUSR2, epoch=1, batch=2,
                                         now=now)
        with pytest.raises(Preempted, match="linear epoch 1"):
            stopped.run()
        assert requeued == [signal.SIGUSR2]  # handed over after the checkpoint
        assert signal.getsignal(signal.SIGUSR2) is not None
        assert not isinstance(getattr(signal.getsignal(signal.SIGUSR2), "__self__", None),
                              StopSignals)  # ours is gone: the previous handler is back
    finally:
        signal.signal(signal.SIGUSR2, before)

    resumed = Evaluation(recipe, "linear", "random", tmp_path / "stopped", DistInfo())
    assert resumed.epoch == 1  # epoch 0's checkpoint; epoch 1 is replayed
    resumed.train_loader = _SignalAt(resumed.train_loader, signal.SIGUSR2, -1, -1, now)
    result = resumed.run()
    # before the stop: epoch 0 and three batches of epoch 1; after: epochs 1 and 2 again
    assert result["device_seconds"] == (batches + 3 + 2 * batches) * SECONDS_PER_BATCH
    straight_log = [json.loads(line) for line in
                    (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["top1"] for r in resumed.history] == [r["top1"] for r in straight_log]
    assert (result["top1"], result["top5"]) == (straight["top1"], straight["top5"])


def test_signal_after_the_last_vote_reaches_the_previous_handler() -> None:
    """A signal recorded after the stage's last agreement is delivered to the handler that was
    there before ours once it is restored (submitit's requeue), not dropped."""
    delivered: list[int] = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: delivered.append(signum))
    try:
        with StopSignals() as stop:
            assert stop.agreed() is None  # the stage's last step: nothing yet
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives after the last vote
            assert stop.received == signal.SIGUSR1 and delivered == []  # ours only recorded it
        assert delivered == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_handed_over_signal_is_not_delivered_twice() -> None:
    delivered: list[int] = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: delivered.append(signum))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.agreed() == signal.SIGUSR1
            stop.hand_over()
        assert delivered == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_sigterm_after_the_last_vote_ends_the_process_as_before() -> None:
    """With the default SIGTERM action before ours, a late SIGTERM still ends the process."""
    code = ("import os, signal\n"
            "from ffcv_bt.distributed.preemption import StopSignals\n"
            "with StopSignals() as stop:\n"
            "    stop.agreed()\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "print('survived', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stderr)
    assert "survived" not in done.stdout
