"""SLURM submission through submitit, with requeue on preemption or time-out.

Each SLURM task calls run.py's entry function (``ffcv_bt.runner.main``, handed in by the
caller, so this module does not import the runner) through the same entry layer
(``ffcv_bt.cli.run_command``) with the same arguments and a fixed run folder;
ffcv_bt.distributed.process_group reads SLURM's variables to form the process group. When
SLURM signals preemption (submitit asks for SIGUSR2) or the time limit, the training loop saves a
checkpoint and submitit requeues the job, which resumes from that checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import submitit

from ffcv_bt.cli import run_command
from ffcv_bt.config import Recipe
from ffcv_bt.errors import ConfigError
from ffcv_bt.preflight import check_device_settings


class RunJob(submitit.helpers.Checkpointable):
    """The callable a SLURM task runs: ``entry(argv)`` through the entry layer."""

    def __init__(self, entry: Callable[[list[str]], int], argv: list[str]) -> None:
        self.entry = entry
        self.argv = argv

    def __call__(self) -> int:
        # On SIGUSR2 the training or evaluation loop checkpoints, then calls submitit's own
        # handler (ffcv_bt.distributed.preemption.StopSignals.hand_over), which requeues this callable.
        return run_command(self.entry, self.argv)


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


def submit(recipe: Recipe, run_dir: Path, argv: list[str],
           entry: Callable[[list[str]], int]) -> Any:
    """Submit the run as one SLURM job of nodes x gpus_per_node tasks; return the job.

    Each task gets ``slurm.cpus_per_task`` CPUs, which must cover the loader's
    ``data.num_workers`` threads plus one for the training process itself.
    """
    s = recipe.slurm
    check_device_settings(recipe, cuda=s.gpus_per_node > 0)  # the login node may have no GPU
    needed = recipe.data.num_workers + 1
    if s["cpus_per_task"] < needed:
        raise ConfigError(f"slurm.cpus_per_task={s['cpus_per_task']} cannot run data.num_workers="
                          f"{recipe.data.num_workers} loader threads plus the training "
                          f"process: set slurm.cpus_per_task >= {needed} or lower data.num_workers")
    # SlurmExecutor directly: AutoExecutor's plugin discovery needs pkg_resources, which
    # the pinned setuptools no longer ships.
    try:
        executor = submitit.SlurmExecutor(folder=str(run_dir / s["folder"]))
    except RuntimeError as exc:
        raise ConfigError(f"--slurm: {exc} Use torchrun or a plain run instead.") from None
    params: dict[str, Any] = dict(
        nodes=s["nodes"], ntasks_per_node=s["gpus_per_node"], gpus_per_node=s["gpus_per_node"],
        cpus_per_task=s["cpus_per_task"], time=s["timeout_min"], job_name=f"ffcv-bt-{recipe.name}",
        signal_delay_s=120,
        # Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch, so each task
        # would get 1 CPU and numba would clamp the loader to 1 thread.
        srun_args=[f"--cpus-per-task={s['cpus_per_task']}"])
    if s["partition"]:
        params["partition"] = s["partition"]
    if s["account"]:
        params["account"] = s["account"]
    executor.update_parameters(**params)
    return executor.submit(RunJob(entry, strip_slurm_flag(argv, run_dir)))
