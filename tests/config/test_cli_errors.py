"""Every bad input a user can give, through the real commands: one line ``error: ...`` that
names the file, key or value and what to do, the documented exit code, no traceback (unless
--debug). Also: checkpoints survive a corrupt newest file and a failed write."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipes import write_tiny_recipe

from ffcv_bt import runner
from ffcv_bt.cli import run_command
from ffcv_bt.config import load_recipe
from ffcv_bt.errors import CheckpointError
from ffcv_bt.stage.checkpoints import load_checkpoint, previous_path, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def command(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The process failed with ``code`` and its stderr ends in one ``error:`` line holding
    every needle, with no traceback anywhere."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def test_truncated_beton_is_named_with_the_fix(data_copy: Path, tmp_path: Path) -> None:
    beton = data_copy / "train.beton"
    beton.write_bytes(beton.read_bytes()[: beton.stat().st_size * 2 // 3])
    recipe = write_tiny_recipe(tmp_path, data_copy)
    proc = command("-m", "ffcv_bt.train.pretrain", "--config", str(recipe), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, 2, str(beton), "rewrite it with write_dataset.py")


def test_beton_cut_inside_its_allocation_table_is_named(data_copy: Path, tmp_path: Path) -> None:
    beton = data_copy / "train.beton"
    beton.write_bytes(beton.read_bytes()[:-5])  # the last entry of the table loses 5 bytes
    recipe = write_tiny_recipe(tmp_path, data_copy)
    proc = command("-m", "ffcv_bt.train.pretrain", "--config", str(recipe), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, 2, str(beton), "truncated", "write_dataset.py")


def test_data_dir_without_manifest(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    recipe = write_tiny_recipe(tmp_path, empty)
    proc = command("-m", "ffcv_bt.evaluation", "--config", str(recipe), "--protocol", "linear",
                   "--weights", "random", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, 2, str(empty / "manifest.json"), "write_dataset.py")


def test_weights_of_another_architecture(tiny_dataset: Path, tmp_path: Path) -> None:
    from ffcv_bt.method.model import build_backbone

    other, _ = build_backbone("resnet18", width=8)  # the recipe's backbone has width 4
    weights = tmp_path / "other.pth"
    torch.save(other.state_dict(), weights)
    recipe = write_tiny_recipe(tmp_path, tiny_dataset)
    proc = command("-m", "ffcv_bt.evaluation", "--config", str(recipe), "--protocol", "linear",
                   "--weights", str(weights), "--out", str(tmp_path / "o"))
    last = assert_one_line_error(proc, 2, str(weights), "does not match resnet18", "model.width")
    # --debug shows the traceback as well
    debug = command("-m", "ffcv_bt.evaluation", "--config", str(recipe), "--protocol", "linear",
                    "--weights", str(weights), "--out", str(tmp_path / "o"), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and last in debug.stderr


def test_run_folder_made_with_another_configuration(tiny_dataset: Path, tmp_path: Path) -> None:
    recipe_path = write_tiny_recipe(tmp_path, tiny_dataset)
    made_with = load_recipe(recipe_path, {"optim.epochs": "5"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"config": made_with.values, "stages": {}}))
    proc = command("run.py", "--config", str(recipe_path), "--out", str(run_dir),
                   "--results-dir", str(tmp_path / "results"))
    assert_one_line_error(proc, 2, str(run_dir), "another configuration", "optim.epochs: 5 -> 2")


def in_process(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """run.py's entry (ffcv_bt.cli.run_command over runner.main) in this process."""
    capsys.readouterr()
    code = run_command(runner.main, list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["run.py", *args], code, out, err)


def test_bad_override_and_missing_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    proc = command("run.py", "--config", "rules/demo.yaml", "--optim.epochs=many", "--dry-run")
    assert_one_line_error(proc, 2, "optim.epochs", "'many'")  # the real process, once
    proc = in_process(capsys, "--config", str(tmp_path / "nope.yaml"), "--dry-run")
    assert_one_line_error(proc, 2, "nope.yaml", "not found")


def test_write_dataset_missing_folder(tmp_path: Path) -> None:
    proc = command("write_dataset.py", "--data-dir", str(tmp_path / "imagenet"),
                   "--out-dir", str(tmp_path / "out"), "--num-workers", "1")
    assert_one_line_error(proc, 2, str(tmp_path / "imagenet"), "not found")


def test_corrupt_checkpoint_without_a_previous_one(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x80\x02 not a checkpoint")
    recipe = write_tiny_recipe(tmp_path, tiny_dataset)
    proc = command("-m", "ffcv_bt.train.pretrain", "--config", str(recipe), "--out", str(out))
    assert_one_line_error(proc, 2, str(out / "checkpoint.pt"), "cannot resume", "Delete")


def test_corrupt_newest_checkpoint_resumes_from_the_previous(tmp_path: Path, capsys) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    save_checkpoint(path, {"epoch": 2, "w": torch.full((3,), 2.0)})
    assert torch.load(previous_path(path), weights_only=True)["epoch"] == 1
    assert load_checkpoint(path)["epoch"] == 2
    path.write_bytes(path.read_bytes()[:100])  # the newest is cut short
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert "resuming from the previous checkpoint" in capsys.readouterr().err
    previous_path(path).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot resume"):
        load_checkpoint(path)


def test_failed_checkpoint_write_keeps_the_checkpoints(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    save_checkpoint(path, {"epoch": 2, "w": torch.full((3,), 2.0)})
    before = {p: p.read_bytes() for p in (path, previous_path(path))}
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # some bytes reach the disk, then it fails
        with open(f, "ab") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"No space left.*kept: .*checkpoint.pt"):
        save_checkpoint(path, {"epoch": 3, "w": torch.full((3,), 3.0)})
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (path, previous_path(path))} == before
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_budget_below_one_epoch_is_refused_and_a_budget_is_met(capsys: pytest.CaptureFixture) -> None:
    proc = in_process(capsys, "--config", str(REPO / "rules" / "fast-300ep.yaml"), "--dry-run", "--budget-hours", "0.1")
    assert_one_line_error(proc, 2, "--budget-hours 0.1", "one pretraining epoch")
    ok = in_process(capsys, "--config", str(REPO / "rules" / "fast-300ep.yaml"), "--dry-run", "--budget-hours", "500")
    assert ok.returncode == 0, ok.stderr
    line = next(l for l in ok.stdout.splitlines() if l.strip().startswith("pretrain "))
    assert float(line.split(":")[1].split("device-hours")[0]) <= 500
