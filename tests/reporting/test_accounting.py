"""Tests for ffcv_bt.stage.clock and ffcv_bt.stage.provenance: clock arithmetic, device sync order, provenance."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch

from ffcv_bt.stage import clock as clock_module
from ffcv_bt.stage.clock import StageClock, sync_device
from ffcv_bt.stage.provenance import code_version, device_description, library_versions


class FakeClock:
    """Replaces time.perf_counter; logs every read (and every device sync) in ``events``."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self.events: list[str] = []

    def perf_counter(self) -> float:
        self.events.append("time")
        return self.now

    def synchronize(self, device=None) -> None:
        self.events.append("sync")


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock_module.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(torch.cuda, "synchronize", fake.synchronize)
    return fake


def test_device_hours_is_devices_times_wall_hours(clock):
    stage = StageClock(torch.device("cpu"), n_devices=4)
    stage.start()
    clock.now += 1800.0
    assert stage.stop() == pytest.approx(1800.0)
    assert stage.seconds == pytest.approx(1800.0)
    assert stage.device_hours == pytest.approx(4 * 0.5)


def test_intervals_and_prior_seconds_accumulate(clock):
    # A resumed stage: 2 h already spent on 8 devices before the restart.
    stage = StageClock(torch.device("cpu"), n_devices=8, prior_seconds=7200.0)
    for interval in (600.0, 300.0):
        stage.start()
        clock.now += interval
        stage.stop()
        clock.now += 10_000.0  # time between intervals is not charged
    assert stage.seconds == pytest.approx(7200.0 + 900.0)
    assert stage.device_hours == pytest.approx(8 * 8100.0 / 3600)


def test_context_manager_and_running_seconds(clock):
    stage = StageClock(torch.device("cpu"), prior_seconds=5.0)
    with stage:
        clock.now += 20.0
        assert stage.running
        assert stage.seconds == pytest.approx(25.0)
    clock.now += 100.0
    assert not stage.running
    assert stage.seconds == pytest.approx(25.0)


def test_cuda_clock_synchronises_before_reading_time(clock):
    stage = StageClock(torch.device("cuda", 0), n_devices=1)
    stage.start()
    assert clock.events == ["sync", "time"]
    stage.stop()
    assert clock.events == ["sync", "time", "sync", "time"]


def test_cpu_clock_does_not_touch_cuda(clock):
    sync_device(torch.device("cpu"))
    StageClock(torch.device("cpu")).start()
    assert "sync" not in clock.events


def test_clock_misuse_raises(clock):
    stage = StageClock(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="without start"):
        stage.stop()
    stage.start()
    with pytest.raises(RuntimeError, match="already running"):
        stage.start()
    with pytest.raises(ValueError, match="n_devices"):
        StageClock(torch.device("cpu"), n_devices=0)
    with pytest.raises(ValueError, match="prior_seconds"):
        StageClock(torch.device("cpu"), prior_seconds=-1.0)


def test_device_description_cpu():
    description = device_description(torch.device("cpu"))
    assert description["device_type"] == "cpu"
    assert description["n_devices"] == 1
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        if models:
            assert description["device"] == f"cpu ({models[0]})"
    assert description["device"].startswith("cpu (")


def test_device_description_cuda_under_distributed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 8)
    description = device_description(torch.device("cuda", 0))
    assert description == {"device": "NVIDIA A100-SXM4-80GB", "n_devices": 8, "device_type": "cuda"}


def test_library_versions_match_imported_modules():
    versions = library_versions()
    assert set(versions) == {"torch", "torchvision", "ffcv", "numba", "numpy", "cuda", "python"}
    assert versions["torch"] == torch.__version__
    assert versions["cuda"] == (torch.version.cuda or "none")
    assert versions["torchvision"] == importlib.metadata.version("torchvision")
    assert versions["numpy"] == numpy.__version__
    assert versions["python"] == platform.python_version()
    requirements = Path(__file__).resolve().parents[2] / "requirements.txt"
    pins = dict(line.split("==") for line in requirements.read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("ffcv", "numba", "numpy", "torchvision"):
        assert versions[name] == pins[name], name
    assert versions["torch"].split("+")[0] == pins["torch"]


def test_library_versions_does_not_import_ffcv():
    # Importing ffcv sets torch's thread count to 1 (ffcv/pipeline/compiler.py): only read metadata.
    code = ("import sys; from ffcv_bt.stage.provenance import library_versions; library_versions; "
            "print('ffcv' in sys.modules, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == ["False", "False"]


def _run_git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_code_version_clean_then_dirty(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _run_git(repo, "init", "-q")
    _run_git(repo, "config", "user.email", "test@example.com")
    _run_git(repo, "config", "user.name", "test")
    (repo / "train.py").write_text("print('v1')\n")
    _run_git(repo, "add", "train.py")
    _run_git(repo, "commit", "-q", "-m", "v1")
    branch = _run_git(repo, "symbolic-ref", "--short", "HEAD")
    committed_sha = (repo / ".git" / "refs" / "heads" / branch).read_text().strip()

    assert code_version(repo) == {"git_sha": committed_sha, "dirty": False}

    (repo / "train.py").write_text("print('v2')\n")
    assert code_version(repo) == {"git_sha": committed_sha, "dirty": True}

    _run_git(repo, "checkout", "-q", "train.py")
    (repo / "new_module.py").write_text("x = 1\n")  # untracked code also makes it dirty
    assert code_version(repo)["dirty"] is True


def test_code_version_outside_git(tmp_path):
    assert code_version(tmp_path) == {"git_sha": "unknown", "dirty": "unknown"}
