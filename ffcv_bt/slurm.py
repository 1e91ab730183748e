"""SLURM submission through submitit, with requeue on preemption or time-out.

Each SLURM task runs ``run.py`` in-process with the same arguments and a fixed run
folder; ffcv_bt.distributed reads SLURM's variables to form the process group. When
SLURM signals preemption (submitit asks for SIGUSR2) or the time limit, the training loop saves a
checkpoint and submitit requeues the job, which resumes from that checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from ffcv_bt.config import Recipe


class RunJob(submitit.helpers.Checkpointable):
    """The callable a SLURM task runs: ``run.py`` with the given arguments."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __call__(self) -> int:
        import run  # the top-level run.py (submitit starts tasks in the submit directory)

        # On SIGUSR2 the training loop checkpoints, then calls submitit's own handler
        # (chained in ffcv_bt.pretrain), which requeues this callable.
        return run.main(self.argv)


def strip_slurm_flag(argv: list[str], run_dir: Path) -> list[str]:
    """The task's arguments: no --slurm, and the run folder fixed with --out."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--slurm":
            continue
        if arg == "--out":
            skip = True
            continue
        if arg.startswith("--out="):
            continue
        out.append(arg)
    return out + ["--out", str(run_dir)]


def submit(recipe: Recipe, run_dir: Path, argv: list[str]) -> Any:
    """Submit the run as one SLURM job of nodes x gpus_per_node tasks; return the job."""
    s = recipe["slurm"]
    # SlurmExecutor directly: AutoExecutor's plugin discovery needs pkg_resources, which
    # the pinned setuptools no longer ships.
    try:
        executor = submitit.SlurmExecutor(folder=str(run_dir / s["folder"]))
    except RuntimeError as exc:
        raise RuntimeError(f"--slurm: {exc} Use torchrun or a plain run instead.") from None
    params: dict[str, Any] = dict(
        nodes=s["nodes"], ntasks_per_node=s["gpus_per_node"], gpus_per_node=s["gpus_per_node"],
        cpus_per_task=s["cpus_per_task"], time=s["timeout_min"], job_name=f"ffcv-bt-{recipe.name}",
        signal_delay_s=120)
    if s["partition"]:
        params["partition"] = s["partition"]
    if s["account"]:
        params["account"] = s["account"]
    executor.update_parameters(**params)
    return executor.submit(RunJob(strip_slurm_flag(argv, run_dir)))
