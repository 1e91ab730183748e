"""run.py end to end on real (tiny) data, in subprocesses as a user runs it: stages,
provenance, runs.csv, tables, plot, resume after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from recipes import write_tiny_recipe

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], env=ENV, cwd=REPO,
                          capture_output=True, text=True, **kw)


@pytest.mark.timeout(1500)
def test_run_end_to_end_then_resume_after_kill(tiny_dataset: Path, tmp_path: Path) -> None:
    recipe = write_tiny_recipe(tmp_path, tiny_dataset, epochs=2)
    results = tmp_path / "results"
    out = tmp_path / "run"
    # every stage kind but semi10 (semi1's code path; its subset: test_protocol_values.py)
    args = ["--config", str(recipe), "--out", str(out), "--results-dir", str(results),
            "--stages", "pretrain,knn,linear,semi1"]

    # Kill during pretraining, then re-run the same command: it resumes and finishes.
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "pretrain" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and any(json.loads(l)["epoch"] == 1 for l in log.read_text().splitlines()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "pretrain" / "result.json").exists()

    done = _run(args, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]  # no foreign noise (numba, FFCV)
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines()]
    assert steps[-1] == 2 * 12  # 200 images / batch 16 = 12 steps per epoch, 2 epochs

    meta = json.loads((out / "run.json").read_text())
    assert meta["finished"] and meta["recipe"] == "tiny"
    assert meta["code"]["git_sha"] and "torch" in meta["libraries"]
    assert set(meta["stages"]) == {"pretrain", "knn", "knn-random", "knn-pixels", "linear",
                                   "linear-random", "semi1", "semi1-random"}
    assert all(s["device_hours"] > 0 for s in meta["stages"].values())
    assert (out / "config.yaml").is_file() and (out / "pretrain" / "resnet18.pth").is_file()

    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 7
    assert set(zip(runs.protocol, runs.backbone)) == {
        (p, b) for p in ("knn", "linear", "semi1") for b in ("pretrained", "random")
    } | {("knn", "pixels")}
    assert (runs.dataset_classes == 10).all() and (runs.dataset_train_images == 200).all()
    assert (runs.seed == 0).all()
    pretrained = runs[runs.backbone == "pretrained"]
    hours = json.loads((out / "pretrain" / "result.json").read_text())["device_hours"]
    assert (pretrained.pretrain_gpu_hours == hours).all()
    assert (runs[runs.backbone == "random"].pretrain_gpu_hours == 0).all()
    for _, row in runs.iterrows():
        suffix = "" if row.backbone == "pretrained" else f"-{row.backbone}"
        result = json.loads((Path(row.run_dir) / (row.protocol + suffix) / "result.json").read_text())
        assert row.top1 == pytest.approx(result["top1"]) and 0 <= row.top1 <= 100
        assert row.top5 >= row.top1

    readme = (results / "README.md").read_text()
    assert "73.3" in readme and "91.0" in readme and "55.0" in readme and "69.7" in readme
    assert "Linear" in readme and "Semi" in readme
    with Image.open(results / "cost_accuracy.png") as png:
        assert png.format == "PNG" and png.size[0] > 200

    # Running again skips every finished stage and appends no rows; --stages is run
    # control, not configuration, so it may differ from the first call.
    again = _run(args + ["--stages", "linear"], timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(pd.read_csv(results / "runs.csv")) == 7
    assert "Traceback" not in again.stderr
