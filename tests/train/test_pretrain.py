"""Pretraining end to end on real (tiny) data: loss goes down under 2 gloo ranks, and a
run killed mid-epoch resumes to exactly the weights of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from recipes import write_tiny_recipe

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    """A TCP port free right now, so concurrent test runs on one machine do not collide."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pretrain_cmd(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ffcv_bt.train.pretrain", "--config", str(recipe), "--out", str(out)]


def _log(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _kill_during_epoch(cmd: list[str], out: Path, epoch: int, sig: int) -> int:
    """Start ``cmd``, send ``sig`` once the log shows a step of ``epoch``; return exit code."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(r["epoch"] == epoch for r in _log(out)):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    assert any(r["epoch"] == epoch for r in _log(out)), err[-2000:]
    return proc.returncode


def _pretrain_to_the_end(recipe: Path, out: Path) -> None:
    subprocess.run(_pretrain_cmd(recipe, out), env=ENV, cwd=REPO, check=True, capture_output=True)


def _assert_same_backbone(first: Path, second: Path) -> dict[str, torch.Tensor]:
    """The two runs' final backbones are bit-for-bit equal; returns the first."""
    a = torch.load(first / "resnet18.pth", weights_only=True)
    b = torch.load(second / "resnet18.pth", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    return a


@pytest.mark.slow  # the default suite: tests/train/test_schedule_in_loop.py (resume in process)
@pytest.mark.timeout(900)
def test_preempted_mid_epoch_resumes_to_the_uninterrupted_weights(tiny_dataset: Path,
                                                                 tmp_path: Path) -> None:
    """SIGTERM mid-epoch: a checkpoint with the batches done (CPU tensors); the same command
    replays the rest of the epoch exactly and ends at the uninterrupted run's weights."""
    recipe = write_tiny_recipe(tmp_path, tiny_dataset, epochs=2)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _pretrain_to_the_end(recipe, straight)
    code = _kill_during_epoch(_pretrain_cmd(recipe, stopped), stopped, epoch=1, sig=signal.SIGTERM)
    assert code == 143
    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["batch_in_epoch"] < 12
    assert all(t.device.type == "cpu" for t in state["model"].values())
    _pretrain_to_the_end(recipe, stopped)
    a = _assert_same_backbone(straight, stopped)
    # torchvision key names (width 4 differs from torchvision's 64, so compare names only)
    import torchvision
    tv_keys = set(torchvision.models.resnet18().state_dict())
    assert set(a) == tv_keys - {"fc.weight", "fc.bias"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_then_resume_equals_uninterrupted(tiny_dataset: Path, tmp_path: Path) -> None:
    recipe = write_tiny_recipe(tmp_path, tiny_dataset, epochs=2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _pretrain_to_the_end(recipe, straight)
    code = _kill_during_epoch(_pretrain_cmd(recipe, killed), killed, epoch=1, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (killed / "result.json").exists()
    state = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 0
    _pretrain_to_the_end(recipe, killed)
    _assert_same_backbone(straight, killed)


@pytest.mark.timeout(900)
def test_two_gloo_ranks_agree_on_a_stop_and_train_with_decreasing_loss(tiny_dataset: Path,
                                                                      tmp_path: Path) -> None:
    """Only rank 1 gets SIGUSR1 during epoch 1: the ranks agree on the stop batch (no hang in
    mismatched collectives) and both exit after one checkpoint; the same command then
    finishes, with progressive resolution and a falling loss."""
    import psutil

    recipe = write_tiny_recipe(tmp_path, tiny_dataset, epochs=4)
    out = tmp_path / "ddp"
    # progressive resolution: 16 px until epoch 1, ramp to 32 px at epoch 3 (multiples of 8)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "ffcv_bt.train.pretrain", "--config", str(recipe),
           "--out", str(out), "--optim.lr_weights=0.5", "--resolution.max_res=32",
           "--resolution.start_ramp=1", "--resolution.end_ramp=3", "--resolution.multiple=8",
           "--train.stop_vote_every=2"]  # a vote every other step: still the same stop batch
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline, signalled = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None and not signalled:
        if any(r["epoch"] == 1 for r in _log(out)):
            for child in psutil.Process(proc.pid).children(recursive=True):
                if child.environ().get("RANK") == "1":
                    child.send_signal(signal.SIGUSR1)
                    signalled = True
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)  # a disagreement would hang here
    assert signalled and proc.returncode != 0, err[-2000:]
    assert err.count("checkpoint saved at epoch 1") == 2, err[-3000:]  # both ranks, same batch
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["batch_in_epoch"] < 12

    done = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = _log(out)
    per_epoch = {}
    for r in log:
        per_epoch.setdefault(r["epoch"], []).append(r["loss"])
    means = [sum(v) / len(v) for _, v in sorted(per_epoch.items())]
    resolution = {r["epoch"]: r["resolution"] for r in log}
    assert resolution == {0: 16, 1: 16, 2: 24, 3: 32}  # nearest multiple of 8 on the ramp
    assert len(means) == 4
    assert means[-1] < means[0], means
    result = json.loads((out / "result.json").read_text())
    assert result["n_devices"] == 2 and result["steps"] == log[-1]["step"]
    # 200 images, global batch 16, drop_last: 12 steps per epoch across both ranks
    assert log[-1]["step"] == 4 * 12


@pytest.mark.timeout(600)
@pytest.mark.parametrize("log_every", [1, 100], ids=["checked-every-step", "checked-at-epoch-end"])
def test_non_finite_loss_stops_naming_the_step(tiny_dataset: Path, tmp_path: Path, log_every: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss is read only at log intervals (no per-step sync), yet the NaN step is named
    and no checkpoint after it is written, however late it is noticed."""
    import ffcv_bt.train.pretrain as pretrain_module
    import ffcv_bt.train.step as step_module
    from ffcv_bt.config import load_recipe
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.errors import NonFiniteLoss

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset, epochs=3),
                         {"train.log_every": str(log_every)})
    real_loss, calls = step_module.barlow_twins_loss, []

    def loss_that_explodes(*args, **kwargs):
        calls.append(1)
        value = real_loss(*args, **kwargs)
        return value * float("nan") if len(calls) == 15 else value  # epoch 1, batch 2
    monkeypatch.setattr(step_module, "barlow_twins_loss", loss_that_explodes)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss, match=r"at step 14 \(epoch 1, batch 2\)"):
        pretrain_module.Pretrainer(recipe, out, DistInfo()).run()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values()
                                       if v.is_floating_point())


@pytest.mark.timeout(600)
def test_aug_device_gpu_reaches_the_loader_and_warns_on_a_cpu(tiny_dataset: Path,
                                                                tmp_path: Path) -> None:
    """``aug.device`` from the recipe picks the loader mode: the device path gives the
    numba path's first batch (to within one level), and a CPU training device warns."""
    from ffcv_bt.config import load_recipe
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.train.pretrain import Pretrainer

    path = write_tiny_recipe(tmp_path, tiny_dataset)
    first = {}
    for mode in ("cpu", "gpu"):
        recipe = load_recipe(path, {"aug.device": mode})
        if mode == "gpu":
            with pytest.warns(UserWarning, match="aug.device=gpu with a CPU training device"):
                trainer = Pretrainer(recipe, tmp_path / mode, DistInfo())
        else:
            trainer = Pretrainer(recipe, tmp_path / mode, DistInfo())
        assert ("params" in trainer.train_loader.ffcv_loader.pipeline_specs) == (mode == "gpu")
        first[mode] = [view.clone() for view in next(iter(trainer.train_loader))]
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for a, b in zip(first["cpu"], first["gpu"], strict=True):
        assert float(((a - b).abs() * std * 255).max()) <= 1.0
