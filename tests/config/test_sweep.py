"""Sweeps (run.py --sweep) and their frontier (ffcv_bt.reporting.frontier): points are ordinary runs, a
killed sweep resumes to the same runs.csv rows, and the frontier comes from runs.csv alone."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from recipes import write_tiny_recipe

from ffcv_bt.errors import ConfigError
from ffcv_bt.reporting.frontier import configurations, generate, pareto_front
from ffcv_bt.reporting.runs_csv import RUNS_COLUMNS, append_run_row, read_runs
from ffcv_bt.sweep import load_sweep

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def write_sweep(folder: Path, data_dir: Path, body: str) -> Path:
    write_tiny_recipe(folder, data_dir, extra="eval: {protocol: smoke, control: true}\n")
    path = folder / "tiny-sweep.yaml"
    path.write_text("recipe: tiny.yaml\n" + body)
    return path


TWO_POINTS = """seeds: "0"
stages: pretrain,knn
epochs: [1, 2]
controls: first
levers:
  ramp:
    overrides: {resolution.min_res: 8, resolution.max_res: 16, resolution.multiple: 8}
    ramp: [0.0, 1.0]
"""


def test_sweep_points_are_checked_and_ordered(tiny_dataset: Path, tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, tiny_dataset, TWO_POINTS))
    assert [(p.lever, p.epochs) for p in sweep.points] == [("ramp", 1), ("ramp", 2)]
    assert sweep.points[1].overrides["resolution.end_ramp"] == "2"
    assert [p.overrides["eval.control"] for p in sweep.points] == ["true", "false"]
    two_levers = TWO_POINTS.replace("controls: first", "controls: each-lever") + "  fixed: {}\n"
    sweep = load_sweep(write_sweep(tmp_path, tiny_dataset, two_levers))
    assert [(p.lever, p.epochs, p.overrides["eval.control"]) for p in sweep.points] == [
        ("ramp", 1, "true"), ("fixed", 1, "true"), ("ramp", 2, "false"), ("fixed", 2, "false")]
    sweep = load_sweep(write_sweep(tmp_path, tiny_dataset, two_levers.replace("each-lever", "every-point")))
    assert all("eval.control" not in p.overrides for p in sweep.points)  # the recipe's own (true)
    with pytest.raises(ConfigError, match="controls: one of"):
        load_sweep(write_sweep(tmp_path, tiny_dataset, TWO_POINTS.replace("first", "each")))
    bad = write_sweep(tmp_path, tiny_dataset, TWO_POINTS.replace("epochs: [1, 2]", "epoch: [1]"))
    with pytest.raises(ConfigError, match="tiny-sweep.yaml.*unknown key"):
        load_sweep(bad)
    bad.write_text("recipe: tiny.yaml\nepochs: [1]\nlevers: {a: {overrides: {optim.epoch: 3}}}\n")
    with pytest.raises(ConfigError, match="optim.epoch"):  # a point's recipe, before any run
        load_sweep(bad)


def _sweep(path: Path, results: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), "--sweep", str(path),
                             "--results-dir", str(results)], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(results: Path) -> pd.DataFrame:
    runs = pd.read_csv(results / "runs.csv")
    return runs.drop(columns=["pretrain_gpu_hours", "eval_gpu_hours", "finished_at", "git_sha",
                              "run_dir"]).sort_values(["run_id", "protocol", "backbone"])


# ~210 s. In the default suite: the sweep's skip / resume in process (test_sweep_finished.py)
# and a killed run's resume (test_run.py).
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_sweep_resumes_to_the_same_rows(tiny_dataset: Path, tmp_path: Path) -> None:
    path = write_sweep(tmp_path, tiny_dataset, TWO_POINTS)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = _sweep(path, whole)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    proc = _sweep(path, cut)  # kill -9 during the second point's pretraining
    log = cut / "runs" / "tiny-sweep" / "ramp-e2" / "pretrain" / "log.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().strip():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (cut / "runs" / "tiny-sweep" / "ramp-e1" / "run.json").is_file()
    again = _sweep(path, cut)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert "[1/2] tiny-sweep.ramp 1 epochs: finished, skipped" in out

    rows = _rows(cut)
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), _rows(whole).reset_index(drop=True))
    assert set(rows.recipe) == {"tiny-sweep.ramp"}
    assert sorted(zip(rows.run_id, rows.protocol, rows.backbone)) == [
        ("ramp-e1", "knn", "pixels"), ("ramp-e1", "knn", "pretrained"), ("ramp-e1", "knn", "random"),
        ("ramp-e2", "knn", "pretrained")]
    # epoch-equivalents at max res: 1 epoch at 8 px of 16 -> 0.25; 2 epochs: 8 px then 16 px
    pretrained = rows[rows.backbone == "pretrained"].set_index("run_id")
    assert pretrained.loc["ramp-e1", "pretrain_epoch_equivalents"] == 0.25
    assert pretrained.loc["ramp-e2", "pretrain_epoch_equivalents"] == 0.25 + 1.0
    resolutions = [json.loads(line)["resolution"] for line in log.read_text().splitlines()
                   if "resolution" in line]
    assert set(resolutions) == {8, 16}


# ------------------------------------------------------------------ the Pareto frontier
def test_pareto_front_on_hand_made_points() -> None:
    assert pareto_front([1.0], [50.0]) == [True]  # a single point
    # (cost, accuracy): b dominates c (cheaper, better); d is dearer and better than b
    costs, accs = [1.0, 2.0, 3.0, 4.0], [60.0, 70.0, 65.0, 80.0]
    assert pareto_front(costs, accs) == [True, True, False, True]
    # ties: equal points are both on it; an equal-cost worse point is dominated
    assert pareto_front([1.0, 1.0, 1.0], [70.0, 70.0, 69.0]) == [True, True, False]
    # equal accuracy at a higher cost is dominated
    assert pareto_front([1.0, 2.0], [70.0, 70.0]) == [True, False]


def _row(run_id: str, lever: str, epochs: int, seed: int, protocol: str, backbone: str,
         top1: float, eq: float, hours: float) -> dict:
    return {"run_id": run_id, "recipe": f"sw.{lever}", "dataset": "toy", "dataset_classes": 10,
            "dataset_train_images": 1000, "seed": seed, "protocol": protocol,
            "backbone": backbone, "epochs": epochs if backbone == "pretrained" else 0,
            "top1": top1, "top5": 100.0, "best_top1": top1,
            "pretrain_gpu_hours": hours if backbone == "pretrained" else 0.0,
            "pretrain_epoch_equivalents": eq if backbone == "pretrained" else 0.0,
            "eval_gpu_hours": 0.001, "device": "cpu (test)", "n_devices": 1, "git_sha": "",
            "finished_at": "", "run_dir": f"/nonexistent/{run_id}"}


def test_frontier_from_runs_csv_alone(tmp_path: Path) -> None:
    csv = tmp_path / "runs.csv"
    knn = {("a", 2): [60.0, 62.0, 61.0], ("a", 4): [70.0, 71.0, 72.0], ("b", 4): [65.0, 66.0, 64.0]}
    eq = {("a", 2): 2.0, ("a", 4): 4.0, ("b", 4): 2.5}
    for (lever, epochs), values in knn.items():
        for seed, value in enumerate(values):
            run = f"{lever}-e{epochs}-s{seed}"
            append_run_row(csv, _row(run, lever, epochs, seed, "knn", "pretrained", value,
                                     eq[lever, epochs], 0.01 * epochs + seed * 1e-3))
            append_run_row(csv, _row(run, lever, epochs, seed, "linear", "pretrained",
                                     value - 5, eq[lever, epochs], 0.01 * epochs + seed * 1e-3))
    append_run_row(csv, _row("a-e2-s0", "a", 2, 0, "knn", "pixels", 80.0, 0, 0))
    append_run_row(csv, _row("other", "x", 2, 0, "knn", "pretrained", 99.0, 1.0, 0.1) | {"recipe": "demo"})
    assert list(pd.read_csv(csv).columns) == RUNS_COLUMNS

    out = tmp_path / "frontier.md"
    table = generate(csv, "sw", out).set_index(["lever", "epochs"])
    for key, values in knn.items():
        stat = table.loc[key, "knn"]
        assert (stat.mean, stat.std, stat.n) == (statistics.mean(values), statistics.stdev(values), 3)
        assert table.loc[key, "compute_images"] == eq[key] * 1000
        assert table.loc[key, "pretrain_hours"] == pytest.approx(0.01 * key[1] + 1e-3)
    # compute 2000 -> 61, 2500 -> 65, 4000 -> 71: all on the kNN frontier; none dominated
    assert table["front_knn"].tolist() == [True, True, True]
    text = out.read_text()
    assert "| a | 2 | 2.00 | 0.002 |" in text and "61.00 ± 1.00 (n=3) | 56.00 ± 1.00 (n=3) | C H |" in text
    assert "knn, raw pixels (the floor): 80.00" in text and "99.0" not in text
    assert out.with_suffix(".png").is_file()

    # a configuration dominated on compute and accuracy is marked off the frontier
    append_run_row(csv, _row("b-e8-s0", "b", 8, 0, "knn", "pretrained", 60.0, 8.0, 0.08))
    table = configurations(read_runs(csv), "sw")
    flags = dict(zip(zip(table.lever, table.epochs), table.front_knn))
    assert flags == {("a", 2): True, ("a", 4): True, ("b", 4): True, ("b", 8): False}
