"""One meter for every trained stage: the losses of its steps, its throughput and its log.

The losses stay on the device (the host never waits for the device inside a step): their sum
over the epoch and since the last read (the log window), and the first step whose loss was
not finite, found without asking the device each step. They are read at the stage's log
intervals and at the end of each epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ffcv_bt.distributed.collectives import sum_over_ranks_
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.stage.skeleton import append_log


class Meter:
    """Loss sums, the first non-finite step and images/s of one epoch; ``log.jsonl`` records."""

    def __init__(self, out_dir: str | Path, dist: DistInfo) -> None:
        self.out_dir, self.dist = Path(out_dir), dist
        self.start_epoch(first_step=0, seconds=0.0)

    def start_epoch(self, first_step: int, seconds: float) -> None:
        """Empty sums; ``first_step`` is the step number of the epoch's batch 0."""
        device = self.dist.device
        self.first_step = first_step
        self.epoch_total = torch.zeros((), dtype=torch.float64, device=device)
        self.window_total = torch.zeros((), dtype=torch.float64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.epoch_weight = self.window_count = self.window_images = 0
        self.window_start = seconds

    def add(self, loss: torch.Tensor, step: int, images: int, weight: int = 1) -> None:
        """One step's loss (counted ``weight`` times in the epoch's mean) and its images
        (all ranks')."""
        value = loss.detach().double()
        bad = ~torch.isfinite(value) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)
        finite = torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
        self.epoch_total += finite * weight
        self.window_total += finite
        self.epoch_weight += weight
        self.window_count += 1
        self.window_images += images

    def first_bad_step(self, over_ranks: bool = False) -> int | None:
        """The first step of the epoch whose loss was NaN or inf, None if none (waits for the
        device). ``over_ranks``: whether any rank had one (a collective; the step is then
        this rank's, or -1)."""
        if over_ranks:
            flag = sum_over_ranks_((self.first_bad >= 0).double())
            return int(self.first_bad) if float(flag) > 0 else None
        bad = int(self.first_bad)
        return bad if bad >= 0 else None

    def read_window(self, seconds: float) -> tuple[float, float]:
        """(mean loss, images/s) since the last read, at clock time ``seconds``; restarts the
        window."""
        mean = float(self.window_total) / max(self.window_count, 1)
        rate = self.window_images / max(seconds - self.window_start, 1e-9)
        self.window_total.zero_()
        self.window_count = self.window_images = 0
        self.window_start = seconds
        return mean, rate

    def epoch_mean(self) -> float:
        return float(self.epoch_total) / max(self.epoch_weight, 1)

    def log(self, record: dict[str, Any]) -> None:
        """One ``log.jsonl`` record (rank 0 writes)."""
        append_log(self.out_dir, record, self.dist)
