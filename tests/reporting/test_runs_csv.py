"""Tests for ffcv_bt.reporting.runs_csv: row format, validation, locked append, legacy files."""
from __future__ import annotations

import csv
import fcntl
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runs_rows import IMAGENET, make_row

from ffcv_bt.reporting.runs_csv import (
    RUNS_COLUMNS,
    append_run_row,
    check_run_row,
    read_runs,
    relative_run_dir,
)

REPO = Path(__file__).resolve().parents[2]
def test_header_written_once_and_values_round_trip(tmp_path):
    csv_path = tmp_path / "runs.csv"
    for i in range(3):
        append_run_row(csv_path, make_row(run_id=f"r{i}", seed=i, top1=10.0 + i,
                                          device="cpu (a, b)"))
    with open(csv_path, newline="") as f:
        records = list(csv.reader(f))
    assert records[0] == RUNS_COLUMNS and len(records) == 4
    runs = read_runs(csv_path)
    assert runs["run_id"].tolist() == ["r0", "r1", "r2"]
    assert runs["top1"].tolist() == [10.0, 11.0, 12.0]
    assert runs["seed"].tolist() == [0, 1, 2]
    assert runs["dataset"].tolist() == [IMAGENET] * 3
    assert runs["dataset_classes"].tolist() == [1000] * 3
    assert runs["dataset_train_images"].tolist() == [1281167] * 3
    assert runs["device"].tolist() == ["cpu (a, b)"] * 3
    assert runs["run_dir"].tolist() == ["results/runs/bt100"] * 3


@pytest.mark.parametrize("protocol, backbone", [("knn", "pretrained"), ("knn", "pixels"),
                                                ("linear", "external"), ("semi10", "random")])
def test_new_protocol_and_backbone_values_accepted(tmp_path, protocol, backbone):
    epochs = 0 if backbone in ("pixels", "random") else 100
    hours = 40.5 if backbone == "pretrained" else 0.0
    append_run_row(tmp_path / "runs.csv", make_row(protocol=protocol, backbone=backbone,
                                                   epochs=epochs, pretrain_gpu_hours=hours))
    runs = read_runs(tmp_path / "runs.csv")
    assert (runs["protocol"][0], runs["backbone"][0]) == (protocol, backbone)


def test_run_dir_relative_and_absolute_both_read(tmp_path):
    assert relative_run_dir(REPO / "results" / "runs" / "x", REPO) == "results/runs/x"
    assert relative_run_dir(tmp_path / "x", REPO) == str((tmp_path / "x").resolve())
    csv_path = tmp_path / "runs.csv"
    append_run_row(csv_path, make_row(run_id="a", run_dir="results/runs/a"))
    append_run_row(csv_path, make_row(run_id="b", run_dir="/scratch/runs/b"))
    assert read_runs(csv_path)["run_dir"].tolist() == ["results/runs/a", "/scratch/runs/b"]


def test_torn_last_line_does_not_swallow_next_row(tmp_path):
    csv_path = tmp_path / "runs.csv"
    append_run_row(csv_path, make_row(run_id="first"))
    with open(csv_path, "a") as f:
        f.write("crashed,100ep,lin")  # a writer killed mid-row, no newline
    append_run_row(csv_path, make_row(run_id="after"))
    last = next(csv.reader([csv_path.read_text().splitlines()[-1]]))
    assert last[0] == "after" and len(last) == len(RUNS_COLUMNS)
    with pytest.raises(ValueError, match=rf"runs.csv line 3: 3 fields, expected {len(RUNS_COLUMNS)}"):
        read_runs(csv_path)  # the torn row is reported, not silently dropped


@pytest.mark.parametrize("change, key", [
    ({"protocol": "semi5"}, "protocol"),
    ({"backbone": "imagenet"}, "backbone"),
    ({"top1": 101.0}, "top1"),
    ({"top5": "n/a"}, "top5"),
    ({"best_top1": -1}, "best_top1"),
    ({"eval_gpu_hours": -0.5}, "eval_gpu_hours"),
    ({"pretrain_gpu_hours": float("nan")}, "pretrain_gpu_hours"),
    ({"epochs": 2.5}, "epochs"),
    ({"n_devices": 0}, "n_devices"),
    ({"recipe": "rules/100ep.yaml"}, "recipe"),
    ({"run_id": " "}, "run_id"),
    ({"lr": 0.2}, "lr"),
    ({"dataset": ""}, "dataset"),
    ({"dataset_classes": 0}, "dataset_classes"),
    ({"dataset_train_images": ""}, "dataset_train_images"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**31}, "seed"),
    ({"seed": None}, "seed"),
    ({"backbone": "random"}, "epochs"),  # random init with 100 pretraining epochs
    ({"backbone": "pixels", "epochs": 0}, "pretrain_gpu_hours"),
    ({"backbone": "external"}, "pretrain_gpu_hours"),
])
def test_bad_rows_raise_naming_the_key(tmp_path, change, key):
    csv_path = tmp_path / "runs.csv"
    append_run_row(csv_path, make_row())
    before = csv_path.read_bytes()
    with pytest.raises(ValueError, match=key):
        append_run_row(csv_path, {**make_row(), **change})
    assert csv_path.read_bytes() == before


def test_missing_key_raises(tmp_path):
    row = make_row()
    del row["seed"]
    with pytest.raises(ValueError, match="seed"):
        append_run_row(tmp_path / "runs.csv", row)
    assert not (tmp_path / "runs.csv").exists() or (tmp_path / "runs.csv").stat().st_size == 0


def test_foreign_header_is_refused(tmp_path):
    csv_path = tmp_path / "runs.csv"
    csv_path.write_text("run_id,top1\nx,1\n")
    with pytest.raises(ValueError, match="runs.csv line 1: header"):
        append_run_row(csv_path, make_row())
    with pytest.raises(ValueError, match="runs.csv line 1: header"):
        read_runs(csv_path)
    assert csv_path.read_text() == "run_id,top1\nx,1\n"


def test_bad_value_in_csv_names_file_line_and_column(tmp_path):
    csv_path = tmp_path / "runs.csv"
    append_run_row(csv_path, make_row())
    with open(csv_path, "a") as f:
        csv.writer(f, lineterminator="\n").writerow(make_row(top1="high").values())
    with pytest.raises(ValueError, match=r"runs.csv line 3, column 'top1': 'high' is not a number"):
        read_runs(csv_path)


def test_bad_file_through_the_command_is_one_line(tmp_path):
    append_run_row(tmp_path / "runs.csv", make_row())
    text = (tmp_path / "runs.csv").read_text()
    (tmp_path / "runs.csv").write_text(text.replace("68.123,88.456", "68.123,988.456"))
    done = subprocess.run([sys.executable, "-m", "ffcv_bt.reporting.tables", "--results-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"error: {tmp_path / 'runs.csv'} line 2, column 'top5'" in done.stderr


def test_older_header_is_refused_naming_the_file(tmp_path):
    csv_path = tmp_path / "runs.csv"
    older = [c for c in RUNS_COLUMNS if c != "pretrain_epoch_equivalents"]
    csv_path.write_text(",".join(older) + "\n")
    for action in (lambda: read_runs(csv_path), lambda: append_run_row(csv_path, make_row())):
        with pytest.raises(ValueError, match=r"runs.csv line 1: header .* is not (the|a) runs.csv header"):
            action()
    assert csv_path.read_text() == ",".join(older) + "\n"


def test_rows_recorded_before_epoch_equivalents_read_as_none(tmp_path):
    csv_path = tmp_path / "runs.csv"
    append_run_row(csv_path, make_row(run_id="new"))
    row = make_row(run_id="old")
    row["pretrain_epoch_equivalents"] = ""
    with open(csv_path, "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow([row[k] for k in RUNS_COLUMNS])
    runs = read_runs(csv_path)
    assert runs["pretrain_epoch_equivalents"].tolist() == [100.0, None]
    with pytest.raises(ValueError, match="pretrain_epoch_equivalents"):
        append_run_row(csv_path, row)  # a new row must state it


def _append_many(csv_path: str, worker: int, n_rows: int, barrier) -> None:
    barrier.wait()  # all workers race for the first write (the header)
    for i in range(n_rows):
        append_run_row(csv_path, make_row(run_id=f"w{worker}-{i}", top1=i / 2,
                                          run_dir="x" * 2000))  # long rows: many-byte writes


@pytest.mark.timeout(120)
def test_concurrent_appends_lose_and_interleave_nothing(tmp_path):
    csv_path = tmp_path / "runs.csv"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_append_many, args=(str(csv_path), w, 25, barrier))
               for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=100)
        assert process.exitcode == 0
    with open(csv_path, newline="") as f:
        records = list(csv.reader(f))
    assert records[0] == RUNS_COLUMNS
    assert len(records) == 1 + 100
    parsed = [check_run_row(dict(zip(RUNS_COLUMNS, record))) for record in records[1:]]
    assert sorted(row["run_id"] for row in parsed) == \
        sorted(f"w{w}-{i}" for w in range(4) for i in range(25))
    for row in parsed:
        assert row["top1"] == int(row["run_id"].split("-")[1]) / 2


@pytest.mark.timeout(60)
def test_append_waits_for_the_lock(tmp_path):
    csv_path = tmp_path / "runs.csv"
    append_run_row(csv_path, make_row(run_id="first"))
    code = ("import json, sys; from ffcv_bt.reporting.runs_csv import append_run_row; "
            "print('ready', flush=True); append_run_row(sys.argv[1], json.loads(sys.argv[2]))")
    second = json.dumps(make_row(run_id="second"))
    with open(csv_path, "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-c", code, str(csv_path), second], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        assert child.poll() is None  # blocked on our lock
        assert "second" not in csv_path.read_text()
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    assert child.wait(timeout=30) == 0
    assert read_runs(csv_path)["run_id"].tolist() == ["first", "second"]
