"""Which sweep points count as finished: every seed, every stage and every evaluation the
point asks for. A point finished for some seeds or stages only resumes (run_sweep calls
``run`` for it), it is not skipped. In-process, with a fake ``run`` and hand-made run.json."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from recipes import write_tiny_recipe

from ffcv_bt.config import Recipe
from ffcv_bt.errors import ConfigError
from ffcv_bt.sweep import run_sweep

SWEEP = """seeds: "{seeds}"
stages: {stages}
epochs: [1, 2]
controls: first
levers:
  fixed: {{}}
"""
# the evaluations runner.run_stages records in run.json "stages" (tiny recipe: control on,
# kNN pixel floor on, no supervised ceiling); the first point (e1) has the controls
KEYS_E1 = ["pretrain", "knn", "knn-random", "knn-pixels", "linear", "linear-random"]
KEYS_E2 = ["pretrain", "knn", "linear"]


@pytest.fixture
def sweep_file(tmp_path: Path):
    def make(seeds: str = "0", stages: str = "pretrain,knn,linear") -> Path:
        # the data folder is never read: load_recipe does not open it and ``run`` is fake
        write_tiny_recipe(tmp_path, tmp_path / "no-data")
        path = tmp_path / "tiny-sweep.yaml"
        path.write_text("recipe: tiny.yaml\n" + SWEEP.format(seeds=seeds, stages=stages))
        return path
    return make


def _run_json(folder: Path, stages: list[str], finished: bool = True) -> None:
    """A run.json as runner.run_stages leaves it (only the keys the sweep may read)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"run_id": folder.name, "finished": finished,
            "stages": {s: {"device_hours": 0.001, "device_seconds": 3.6, "result": {}} for s in stages}}
    (folder / "run.json").write_text(json.dumps(meta))


def _sweep(path: Path, results: Path, overrides: dict[str, str] | None = None) -> list[str]:
    """Run the sweep with a fake run; return the folder (under the sweep's) of every call,
    after checking that the recipe it got runs that folder's seed only."""
    calls: list[str] = []
    root = results / "runs" / path.stem

    def run(recipe: Recipe, out: Path, results_dir: Path) -> int:
        if out.name.startswith("seed-"):
            assert recipe.seeds == [int(out.name.removeprefix("seed-"))]
        assert recipe.name == f"{path.stem}.fixed" and results_dir == results
        calls.append(str(out.relative_to(root)))
        return 0

    args = argparse.Namespace(dry_run=False, results_dir=str(results), debug=False)
    assert run_sweep(path, args, overrides or {}, run) == 0
    return calls


def test_nothing_done_runs_every_point(sweep_file, tmp_path):
    assert _sweep(sweep_file(), tmp_path / "results") == ["fixed-e1", "fixed-e2"]


def test_every_stage_finished_is_skipped(sweep_file, tmp_path):
    runs = tmp_path / "results" / "runs" / "tiny-sweep"
    _run_json(runs / "fixed-e1", KEYS_E1)
    _run_json(runs / "fixed-e2", KEYS_E2)
    assert _sweep(sweep_file(), tmp_path / "results") == []


def test_finished_for_fewer_stages_resumes(sweep_file, tmp_path):
    # run.json says finished, but for a run with --stages pretrain,knn: linear is still to do
    runs = tmp_path / "results" / "runs" / "tiny-sweep"
    _run_json(runs / "fixed-e1", ["pretrain", "knn", "knn-random", "knn-pixels"])
    _run_json(runs / "fixed-e2", KEYS_E2)
    assert _sweep(sweep_file(), tmp_path / "results") == ["fixed-e1"]


def test_finished_without_a_control_resumes(sweep_file, tmp_path):
    # every protocol of the backbone done, but the first point's random control of linear not
    runs = tmp_path / "results" / "runs" / "tiny-sweep"
    _run_json(runs / "fixed-e1", [k for k in KEYS_E1 if k != "linear-random"])
    _run_json(runs / "fixed-e2", KEYS_E2)
    assert _sweep(sweep_file(), tmp_path / "results") == ["fixed-e1"]


def test_unfinished_run_json_resumes(sweep_file, tmp_path):
    runs = tmp_path / "results" / "runs" / "tiny-sweep"
    _run_json(runs / "fixed-e1", KEYS_E1, finished=False)
    _run_json(runs / "fixed-e2", KEYS_E2)
    assert _sweep(sweep_file(), tmp_path / "results") == ["fixed-e1"]


def test_point_finished_for_some_seeds_resumes(sweep_file, tmp_path):
    runs = tmp_path / "results" / "runs" / "tiny-sweep"
    for seed in (0, 1, 2):
        _run_json(runs / "fixed-e1" / f"seed-{seed}", KEYS_E1)
    _run_json(runs / "fixed-e2" / "seed-0", KEYS_E2)
    _run_json(runs / "fixed-e2" / "seed-1", KEYS_E2, finished=False)  # seed 2: no folder yet
    assert _sweep(sweep_file(seeds="0,1,2"), tmp_path / "results") == ["fixed-e2/seed-1", "fixed-e2/seed-2"]
    _run_json(runs / "fixed-e2" / "seed-1", KEYS_E2)
    assert _sweep(sweep_file(seeds="0,1,2"), tmp_path / "results") == ["fixed-e2/seed-2"]
    _run_json(runs / "fixed-e2" / "seed-2", ["pretrain", "knn"])  # seed 2 lacks linear
    assert _sweep(sweep_file(seeds="0,1,2"), tmp_path / "results") == ["fixed-e2/seed-2"]
    _run_json(runs / "fixed-e2" / "seed-2", KEYS_E2)
    assert _sweep(sweep_file(seeds="0,1,2"), tmp_path / "results") == []


def test_single_seed_folder_is_not_read_as_every_seed(sweep_file, tmp_path):
    # a one-seed sweep writes into the point folder itself; with three seeds the point's
    # seed-<s> sub-folders are what count
    runs = tmp_path / "results" / "runs" / "tiny-sweep"
    _run_json(runs / "fixed-e1", KEYS_E1)
    _run_json(runs / "fixed-e2", KEYS_E2)
    assert _sweep(sweep_file(seeds="0,1,2"), tmp_path / "results") == [
        f"fixed-e{e}/seed-{s}" for e in (1, 2) for s in (0, 1, 2)]


def test_stages_of_the_sweep_decide(sweep_file, tmp_path):
    # a sweep of pretrain,knn only: a point without linear is finished
    runs = tmp_path / "results" / "runs" / "tiny-sweep"
    _run_json(runs / "fixed-e1", ["pretrain", "knn", "knn-random", "knn-pixels"])
    _run_json(runs / "fixed-e2", ["pretrain", "knn"])
    assert _sweep(sweep_file(stages="pretrain,knn"), tmp_path / "results") == []


def test_seeds_subset_runs_only_those_seeds(sweep_file, tmp_path):
    # two processes may split a sweep by seed (run.py --sweep F --seeds 1,2)
    runs = tmp_path / "results" / "runs" / "tiny-sweep"
    _run_json(runs / "fixed-e1" / "seed-1", KEYS_E1)
    path = sweep_file(seeds="0,1,2")
    assert _sweep(path, tmp_path / "results", {"run.seeds": "1,2"}) == [
        "fixed-e1/seed-2", "fixed-e2/seed-1", "fixed-e2/seed-2"]
    with pytest.raises(ConfigError, match="subset of the sweep's seeds"):
        _sweep(path, tmp_path / "results", {"run.seeds": "3"})
