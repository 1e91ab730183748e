"""The stage clock and device-hours: what each stage of a run cost.

Device-hours = number of devices x wall-clock hours, the unit the baseline is quoted in
(16 V100 x ~7 days = ~2,688 V100-hours). The clock synchronises the device before it
reads the time, so queued GPU work is charged to the stage that queued it (as AlgoPerf's
runner does).
"""
from __future__ import annotations

import time

import torch


def sync_device(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (CUDA); nothing to wait for on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Wall-clock seconds of one stage, accumulated across resumes.

    ``prior_seconds`` carries the time already spent before a restart (save ``.seconds``
    in the checkpoint and pass it back). Use ``start()``/``stop()`` or ``with clock:``.
    """

    def __init__(self, device: torch.device, n_devices: int = 1, prior_seconds: float = 0.0):
        if n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {n_devices}")
        if prior_seconds < 0:
            raise ValueError(f"prior_seconds must be >= 0, got {prior_seconds}")
        self.device = torch.device(device)
        self.n_devices = n_devices
        self._accumulated = float(prior_seconds)
        self._started_at: float | None = None

    def start(self) -> None:
        """Synchronise the device, then start timing."""
        if self._started_at is not None:
            raise RuntimeError("StageClock.start() called while already running")
        sync_device(self.device)
        self._started_at = time.perf_counter()

    def stop(self) -> float:
        """Synchronise the device, stop timing; return the seconds of this interval."""
        if self._started_at is None:
            raise RuntimeError("StageClock.stop() called without start()")
        sync_device(self.device)
        interval = time.perf_counter() - self._started_at
        self._started_at = None
        self._accumulated += interval
        return interval

    @property
    def running(self) -> bool:
        return self._started_at is not None

    @property
    def seconds(self) -> float:
        """Total wall-clock seconds, including a running interval (read without syncing)."""
        if self._started_at is None:
            return self._accumulated
        return self._accumulated + time.perf_counter() - self._started_at

    @property
    def device_hours(self) -> float:
        """``n_devices`` x wall-clock hours."""
        return self.n_devices * self.seconds / 3600

    def __enter__(self) -> "StageClock":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
