"""Every input a run reads is checked before the first step of the first stage: each bad
input through run.py fails within seconds with its one-line error, and no step ran."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from recipes import write_tiny_recipe

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
SECONDS = 60  # run.py in a new process: python + torch + ffcv imports on a loaded 2-core machine
IN_PROCESS_SECONDS = 10  # the checks alone


def manifest_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        content = json.loads((data / "manifest.json").read_text())
        edit(content)
        (data / "manifest.json").write_text(json.dumps(content))
    return damage


def truncate(name: str, keep: float) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        raw = (data / name).read_bytes()
        (data / name).write_bytes(raw[: int(len(raw) * keep)])
    return damage


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda data: (data / name).write_text(text)


CASES = {
    "manifest not JSON": (write("manifest.json", "{not json"), "manifest.json: not a valid manifest"),
    "manifest without val": (manifest_edit(lambda m: m["splits"].pop("val")),
                             "manifest.json: not a valid manifest"),
    "manifest count wrong": (manifest_edit(lambda m: m["splits"]["val"].update(num_images=7)),
                             "manifest.json says 7"),
    "train.beton truncated": (truncate("train.beton", 0.5), "train.beton"),
    "val.beton header": (write("val.beton", "garbage"), "val.beton: not a readable FFCV dataset"),
    "subset repeated": (write("train_subset_1.txt", "3\n3\n5\n7\n9\n11\n13\n15\n17\n19\n"),
                        "train_subset_1.txt: repeated indices"),
    "subset out of range": (write("train_subset_10.txt", "\n".join(str(i) for i in range(190, 210))),
                            "train_subset_10.txt: indices outside"),
    "subset missing": (lambda data: (data / "train_subset_10.txt").unlink(),
                       "train_subset_10.txt: label subset not found"),
}


def run_in_process(args: list[str], capsys) -> tuple[subprocess.CompletedProcess, float]:
    """run.py's own code path (``run_command(runner.main)``) in this process: no start-up
    cost, so the time measured is the checking, not python and torch importing."""
    from ffcv_bt.cli import run_command
    from ffcv_bt.runner import main

    capsys.readouterr()
    start = time.monotonic()
    code = run_command(main, args)
    seconds = time.monotonic() - start
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err), seconds


def run(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - start


def assert_fails_early(proc: subprocess.CompletedProcess, seconds: float, needle: str, out: Path,
                       limit: float = IN_PROCESS_SECONDS) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, last
    assert seconds < limit, f"took {seconds:.0f} s"
    assert not list(out.rglob("log.jsonl")), "a stage started"


@pytest.mark.parametrize("case", CASES)
def test_bad_data_fails_before_any_step(case: str, data_copy: Path, tmp_path: Path, capsys) -> None:
    damage, needle = CASES[case]
    damage(data_copy)
    recipe = write_tiny_recipe(tmp_path, data_copy)
    out = tmp_path / "run"
    proc, seconds = run_in_process(["--config", str(recipe), "--out", str(out),
                                    "--results-dir", str(tmp_path / "results")], capsys)
    assert_fails_early(proc, seconds, needle, out)


def test_through_run_py_in_a_new_process(data_copy: Path, tmp_path: Path) -> None:
    write("manifest.json", "{not json")(data_copy)
    recipe = write_tiny_recipe(tmp_path, data_copy)
    proc, seconds = run(["--config", str(recipe), "--out", str(tmp_path / "run")])
    assert_fails_early(proc, seconds, "manifest.json: not a valid manifest", tmp_path, SECONDS)


@pytest.mark.parametrize("flag", ["--out", "--results-dir"])
def test_unwritable_output_folder_fails_before_any_step(flag: str, tiny_dataset: Path,
                                                         tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = write_tiny_recipe(tmp_path, tiny_dataset)
    args = {"--out": str(tmp_path / "run"), "--results-dir": str(tmp_path / "results")}
    args[flag] = str(blocker / "sub")
    proc, seconds = run_in_process(["--config", str(recipe), *[x for kv in args.items() for x in kv]],
                                   capsys)
    assert_fails_early(proc, seconds, "not writable", tmp_path)


def test_unknown_protocol_file_fails_at_once(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    recipe = write_tiny_recipe(tmp_path, tiny_dataset)
    proc, seconds = run_in_process(["--config", str(recipe), "--out", str(tmp_path / "run"),
                                    "--eval.protocol=nope"], capsys)
    assert_fails_early(proc, seconds, "eval.protocol 'nope' has no file", tmp_path)


def test_deterministic_on_cuda_fails_before_any_step(tiny_dataset: Path, tmp_path: Path, capsys,
                                                     monkeypatch) -> None:
    """train.deterministic on a CUDA machine (mocked: the check reads torch.cuda.is_available,
    as the process group's device choice does) is a one-line error naming the key."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    recipe = write_tiny_recipe(tmp_path, tiny_dataset)  # deterministic: true
    out = tmp_path / "run"
    proc, seconds = run_in_process(["--config", str(recipe), "--out", str(out),
                                    "--results-dir", str(tmp_path / "results")], capsys)
    assert_fails_early(proc, seconds, "train.deterministic: true cannot run on CUDA", out)


def test_deterministic_refused_on_cuda_only(tiny_dataset: Path, tmp_path: Path) -> None:
    """The check itself, the Pretrainer given a CUDA device, and the SLURM submission (GPUs
    per node) refuse it; the CPU and deterministic off pass."""
    import torch

    from ffcv_bt.config import load_recipe
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.distributed.slurm import submit
    from ffcv_bt.errors import ConfigError
    from ffcv_bt.preflight import check_device_settings
    from ffcv_bt.runner import main
    from ffcv_bt.train.pretrain import Pretrainer

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset))
    assert recipe.train.deterministic is True
    check_device_settings(recipe, cuda=False)
    with pytest.raises(ConfigError, match="^train.deterministic: true cannot run on CUDA"):
        check_device_settings(recipe, cuda=True)
    with pytest.raises(ConfigError, match="train.deterministic"):
        Pretrainer(recipe, tmp_path / "run", DistInfo(device=torch.device("cuda", 0)))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="train.deterministic"):
        submit(recipe, tmp_path / "slurm-run", ["--slurm"], entry=main)
    check_device_settings(load_recipe(write_tiny_recipe(tmp_path, tiny_dataset),
                                      {"train.deterministic": "false"}), cuda=True)
