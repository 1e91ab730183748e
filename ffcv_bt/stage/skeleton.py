"""The skeleton every stage runs in (pretraining, linear / semi-supervised, kNN), and the
duties they share, each written once.

``run_stage``: a stage whose ``result.json`` exists is finished and skipped; otherwise its
own work runs (every rank), rank 0 writes the result atomically and every rank returns
rank 0's copy. The helpers: the per-rank share of a global batch, the torch threads of a
CPU stage, and one ``log.jsonl`` record.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ffcv_bt.atomic_files import atomic_write_json
from ffcv_bt.distributed.collectives import barrier, broadcast_object
from ffcv_bt.distributed.process_group import DistInfo, set_cpu_compute_threads
from ffcv_bt.errors import ConfigError

RESULT_FILE = "result.json"
LOG_FILE = "log.jsonl"


def finished_result(out_dir: str | Path) -> dict[str, Any] | None:
    """The stage's result when it has finished, else None."""
    done = Path(out_dir) / RESULT_FILE
    return json.loads(done.read_text()) if done.is_file() else None


def run_stage(out_dir: str | Path, work: Callable[[], dict[str, Any]],
              dist: DistInfo) -> dict[str, Any]:
    """Skip if finished, else ``work()`` on every rank; write and broadcast its result."""
    done = finished_result(out_dir)
    if done is not None:
        return done
    result = work()
    if dist.is_main:
        atomic_write_json(Path(out_dir) / RESULT_FILE, result)
    barrier()
    return broadcast_object(result)  # type: ignore[return-value]


def per_rank_batch(global_batch: int, dist: DistInfo, what: str) -> int:
    """This rank's share of ``global_batch``; ConfigError naming ``what`` if it does not divide."""
    if global_batch % dist.world_size:
        raise ConfigError(f"{what}={global_batch} (the global batch) is not divisible by the "
                          f"{dist.world_size} ranks")
    return global_batch // dist.world_size


def set_stage_threads(dist: DistInfo, cpu_threads: int) -> None:
    """On a CPU, torch's thread count (FFCV's loader resets it to its worker count)."""
    if dist.device.type == "cpu":
        set_cpu_compute_threads(cpu_threads)


def append_log(out_dir: str | Path, record: dict[str, Any], dist: DistInfo) -> None:
    """One JSON line in the stage's log.jsonl (rank 0 only)."""
    if dist.is_main:
        with open(Path(out_dir) / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
