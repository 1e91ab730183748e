"""Provenance: the device, library and code versions that made a result."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

from ffcv_bt.distributed.collectives import world_size

_VERSIONED_LIBRARIES = ("torch", "torchvision", "ffcv", "numba", "numpy")


def _cpu_model_name() -> str:
    """The processor model from /proc/cpuinfo, else whatever ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_description(device: torch.device) -> dict:
    """What the run ran on: {"device": name, "n_devices": world size, "device_type": ...}.

    CPU names read "cpu (<model name>)", CUDA names are ``torch.cuda.get_device_name``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"cpu ({_cpu_model_name()})"
    else:
        raise ValueError(f"unsupported device type {device.type!r} (expected 'cpu' or 'cuda')")
    return {"device": name, "n_devices": world_size(), "device_type": device.type}


def library_versions() -> dict:
    """Versions of the libraries a result depends on, plus Python's and torch's CUDA.

    Read from package metadata, so nothing is imported (importing ffcv would set torch's
    thread count); torch's own ``__version__`` is used because it carries the build tag
    (e.g. ``+cu130``) that the metadata drops.
    """
    versions = {}
    for name in _VERSIONED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["torch"] = torch.__version__
    versions["cuda"] = torch.version.cuda or "none"
    versions["python"] = platform.python_version()
    return versions


def _git(repo_dir: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True,
                            text=True, check=True, timeout=60)
    return result.stdout


# The project's own outputs: a run rewrites results/runs.csv, README.md and the plots, and
# that must not mark the next seed's code "-dirty".
_OUTPUT_PATHSPEC = ":(exclude)results"


def code_version(repo_dir: str | Path) -> dict:
    """{"git_sha": HEAD commit, "dirty": uncommitted or untracked changes?} of ``repo_dir``.

    Changes under ``results/`` (the project's own outputs) do not count as dirty. Both
    values are "unknown" when ``repo_dir`` is not a git checkout (or git is missing);
    "unknown" is truthy, so a caller testing ``dirty`` treats it as dirty. A repository
    without commits has sha "unknown" and a real ``dirty``.
    """
    repo_dir = Path(repo_dir)
    try:
        status = _git(repo_dir, "status", "--porcelain", "--", ".", _OUTPUT_PATHSPEC)
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "dirty": "unknown"}
    try:
        sha = _git(repo_dir, "rev-parse", "--verify", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return {"git_sha": sha, "dirty": bool(status.strip())}
