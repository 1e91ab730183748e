"""Launcher environments -> ranks, and the SLURM task's arguments."""
from __future__ import annotations

from pathlib import Path

import pytest

from ffcv_bt.distributed.process_group import environment_ranks
from ffcv_bt.distributed.slurm import strip_slurm_flag


def test_plain_process_is_rank_zero_of_one() -> None:
    assert environment_ranks({}) == (0, 1, 0)


def test_torchrun_variables() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1"}
    assert environment_ranks(env) == (5, 16, 1)


def test_slurm_variables_and_torchrun_inside_sbatch() -> None:
    slurm = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}
    assert environment_ranks(slurm) == (9, 16, 1)
    # torchrun started inside an allocation: its variables win
    assert environment_ranks({**slurm, "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}) == (3, 8, 3)
    # a single-task allocation is a plain process
    assert environment_ranks({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (0, 1, 0)


def test_slurm_task_arguments_fix_the_run_folder() -> None:
    argv = ["--config", "rules/1000ep.yaml", "--slurm", "--out", "old", "--optim.epochs=3"]
    assert strip_slurm_flag(argv, Path("results/runs/x")) == [
        "--config", "rules/1000ep.yaml", "--optim.epochs=3", "--out", "results/runs/x"]
    assert strip_slurm_flag(["--out=old", "--slurm"], Path("d")) == ["--out", "d"]


def test_slurm_submission_writes_the_job_we_asked_for(tmp_path: Path, monkeypatch) -> None:
    """A fake sbatch/srun on PATH: the submitted script carries nodes, tasks, GPUs, the time
    limit and submitit's preemption signal, and runs run.py with a fixed --out."""
    import os
    import pickle

    from ffcv_bt.config import RULES_DIR, load_recipe
    from ffcv_bt.distributed.slurm import submit
    from ffcv_bt.runner import main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\necho "Submitted batch job 42"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    recipe = load_recipe(RULES_DIR / "1000ep.yaml", {"slurm.nodes": "2", "slurm.partition": "gpu"})
    run_dir = tmp_path / "run"
    job = submit(recipe, run_dir, ["--config", "rules/1000ep.yaml", "--slurm"], entry=main)
    assert job.job_id == "42"
    script = (tmp_path / "job.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=16",
                 "--time=4320", "--partition=gpu", "--signal=USR2@120"):
        assert line in script, line
    # srun does not inherit --cpus-per-task from sbatch since Slurm 22.05: it must be on srun too
    srun_line = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--cpus-per-task=16" in srun_line.split(), srun_line
    submitted = next(run_dir.joinpath("slurm").glob("*_submitted.pkl"))
    with open(submitted, "rb") as f:
        delayed = pickle.load(f)
    assert delayed.function.argv == ["--config", "rules/1000ep.yaml", "--out", str(run_dir)]
    assert delayed.function.entry is main


def test_slurm_refuses_fewer_cpus_than_loader_threads(tmp_path: Path) -> None:
    """12 loader threads need 13 CPUs per task: numba refuses more threads than the task's
    affinity, so every rank would die at its first epoch."""
    from ffcv_bt.config import RULES_DIR, load_recipe
    from ffcv_bt.distributed.slurm import submit
    from ffcv_bt.errors import ConfigError
    from ffcv_bt.runner import main

    recipe = load_recipe(RULES_DIR / "1000ep.yaml", {"slurm.cpus_per_task": "10"})
    with pytest.raises(ConfigError, match=r"slurm.cpus_per_task=10 .* >= 13"):
        submit(recipe, tmp_path / "run", ["--slurm"], entry=main)
