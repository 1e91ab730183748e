"""``python -m ffcv_bt.reporting.tables --compare A B``: configuration differences (result-determining
keys only) and the results of each stage side by side, from the run folders' files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ffcv_bt.reporting.compare_runs import compare_runs, config_differences

REPO = Path(__file__).resolve().parents[2]


def _run_folder(root: Path, name: str, epochs: int, stages: str, results: dict[str, float]) -> Path:
    folder = root / name
    folder.mkdir()
    config = {"optim": {"epochs": epochs, "batch_size": 256}, "run": {"stages": stages},
              "model": {"arch": "resnet18"}}
    (folder / "run.json").write_text(json.dumps({"recipe": "demo", "config": config,
                                                 "device": "cpu", "n_devices": 1,
                                                 "code": {"git_sha": "abc"}}))
    for stage, top1 in results.items():
        (folder / stage).mkdir()
        (folder / stage / "result.json").write_text(
            json.dumps({"top1": top1, "top5": 99.0, "device_hours": 0.01}))
    return folder


def test_differences_and_results_side_by_side(tmp_path: Path) -> None:
    a = _run_folder(tmp_path, "a", 4, "pretrain,linear", {"linear": 60.0, "knn": 70.5})
    b = _run_folder(tmp_path, "b", 8, "linear", {"linear": 64.25})
    assert config_differences(json.loads((a / "run.json").read_text())["config"],
                              json.loads((b / "run.json").read_text())["config"]) == [
        ("optim.epochs", 4, 8)]  # run.stages is run control: not a difference
    text = compare_runs(a, b)
    assert "optim.epochs: 4 -> 8" in text and "run.stages" not in text
    linear = next(line for line in text.splitlines() if line.startswith("linear"))
    assert linear.split()[:4] == ["linear", "60.00", "64.25", "+4.25"]
    knn = next(line for line in text.splitlines() if line.startswith("knn"))
    assert knn.split()[:4] == ["knn", "70.50", "—", "—"]


def test_cli_and_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    a = _run_folder(tmp_path, "a", 4, "linear", {"linear": 60.0})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "ffcv_bt.reporting.tables", "--compare", str(a), str(a)],
                        capture_output=True, text=True, env=env, cwd=REPO)
    assert ok.returncode == 0 and "configuration differences (A -> B):\n  none" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "ffcv_bt.reporting.tables", "--compare", str(a),
                          str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ")
    assert "run.json not found" in bad.stderr and "Traceback" not in bad.stderr
