"""results/runs.csv: the row format, its validation, the locked append and reading.

runs.csv is the source of truth of the results tables: one row per evaluation, appended
by the runner (several runs may append at once), never edited. The row dict a writer
passes to ``append_run_row`` has exactly these keys (values may be str or the type named;
numbers are stored as text and parsed back):

=====================  =====  ==============================================================
key                    type   meaning, allowed values
=====================  =====  ==============================================================
run_id                 str    non-empty; the run folder's name, unique per pretraining run
recipe                 str    the <name> of rules/<name>.yaml (no spaces, no "/", no ".yaml")
dataset                str    non-empty label, e.g. "fashion-mnist (10 classes, 10,000 train)"
dataset_classes        int    >= 1, number of classes of the evaluated data set
dataset_train_images   int    >= 1, images in its train split
seed                   int    0 .. 2**31-1, train.seed of pretraining (evaluation uses it too)
protocol               str    "linear" | "semi1" | "semi10" | "knn" (k=20, cosine, T=0.07) | "logreg"
backbone               str    "pretrained" (ours) | "random" (random-init control, standard
                              init) | "supervised" (the supervised ceiling: same backbone,
                              images, epochs and resolutions, trained with labels) |
                              "pixels" (raw pixels as features: the floor) |
                              "external" (a published checkpoint evaluated here)
epochs                 int    >= 0, (pre)training epochs; must be 0 for random and pixels
top1, top5             float  percent in [0, 100], final epoch
best_top1              float  percent in [0, 100], best epoch; may be None or ""
pretrain_gpu_hours     float  >= 0, device-hours of (pre)training; 0 unless pretrained or
                              supervised
pretrain_epoch_equivalents
                       float  >= 0, pretraining compute free of timing noise: the sum over
                              epochs of (resolution / max_res)^2, i.e. epochs at max_res;
                              x dataset_train_images = images at max_res; 0 unless pretrained
                              or supervised
eval_gpu_hours         float  >= 0, device-hours of this evaluation
device                 str    non-empty, e.g. "NVIDIA A100-SXM4-80GB" or "cpu (AMD EPYC)"
n_devices              int    >= 1
git_sha                str    commit of the code (may end in "-dirty"); may be empty
finished_at            str    ISO time the evaluation finished; may be empty
run_dir                str    run folder RELATIVE to the repository root for new rows, e.g.
                              "results/runs/demo-20261125-152856" (see ``relative_run_dir``);
                              absolute paths (older rows, folders outside the repo) are read
=====================  =====  ==============================================================

Rows are never rewritten. Rows recorded before pretrain_epoch_equivalents existed (in the
committed file) have that cell empty: it reads as None; every new row must state it.
"""
from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import re
from pathlib import Path

import pandas as pd

from ffcv_bt.errors import UserError

RUNS_COLUMNS = ["run_id", "recipe", "dataset", "dataset_classes", "dataset_train_images",
                "seed", "protocol", "backbone", "epochs", "top1", "top5", "best_top1",
                "pretrain_gpu_hours", "pretrain_epoch_equivalents", "eval_gpu_hours", "device",
                "n_devices", "git_sha", "finished_at", "run_dir"]
OPTIONAL_NUMBERS = ("pretrain_epoch_equivalents",)  # None in rows recorded before it
PROTOCOLS = ("linear", "semi1", "semi10", "knn", "logreg")
BACKBONES = ("pretrained", "supervised", "random", "pixels", "external")
TRAINED = ("pretrained", "supervised")  # rows that carry a training cost
MAX_SEED = 2**31 - 1

_RECIPE_NAME = re.compile(r"[^\s/\\]+")  # a file stem: no spaces or folders


class RunsFileError(UserError, ValueError):
    """runs.csv itself is bad (header, torn or hand-edited row); the message names the
    file, the line and, where one is at fault, the column."""


class RunRowError(ValueError):
    """A bad runs.csv value; ``column`` names the offending key."""

    def __init__(self, column: str, message: str):
        super().__init__(f"runs row key {column!r}: {message}")
        self.column = column
        self.detail = message


def _number(row: dict, key: str, low: float, high: float = math.inf) -> float:
    value = row[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RunRowError(key, f"{value!r} is not a number") from None
    if not low <= number <= high:  # also rejects NaN
        raise RunRowError(key, f"{value!r} is outside [{low}, {high}]")
    return number


def _integer(row: dict, key: str, low: int, high: float = math.inf) -> int:
    number = _number(row, key, low, high)
    if number != int(number):
        raise RunRowError(key, f"{row[key]!r} is not an integer")
    return int(number)


def _parse(row: dict, new: bool) -> dict:
    """Validate and parse one row; a row read from a file (not ``new``) may have an empty
    pretrain_epoch_equivalents (recorded before it existed)."""
    missing = [key for key in RUNS_COLUMNS if key not in row]
    unknown = [key for key in row if key not in RUNS_COLUMNS]
    if missing:
        raise RunRowError(missing[0], f"missing (row lacks key(s) {missing})")
    if unknown:
        raise RunRowError(unknown[0], f"unknown key(s) {unknown}; expected {RUNS_COLUMNS}")
    clean = {key: "" if row[key] is None else str(row[key]) for key in RUNS_COLUMNS}
    if clean["protocol"] not in PROTOCOLS:
        raise RunRowError("protocol", f"{clean['protocol']!r} is not one of {PROTOCOLS}")
    if clean["backbone"] not in BACKBONES:
        raise RunRowError("backbone", f"{clean['backbone']!r} is not one of {BACKBONES}")
    for key in ("run_id", "recipe", "device"):
        if not clean[key].strip():
            raise RunRowError(key, "is empty")
    if not _RECIPE_NAME.fullmatch(clean["recipe"]) or clean["recipe"].endswith(".yaml"):
        raise RunRowError("recipe", f"{clean['recipe']!r} is not a recipe name "
                                    f"(the <name> of rules/<name>.yaml)")
    for key in ("top1", "top5"):
        clean[key] = _number(row, key, 0.0, 100.0)
    clean["best_top1"] = None if clean["best_top1"] == "" else _number(row, "best_top1", 0, 100)
    for key in ("pretrain_gpu_hours", "eval_gpu_hours"):
        clean[key] = _number(row, key, 0.0)
    clean["epochs"] = _integer(row, "epochs", 0)
    clean["n_devices"] = _integer(row, "n_devices", 1)
    if not clean["dataset"].strip():
        raise RunRowError("dataset", "is empty")
    clean["dataset_classes"] = _integer(row, "dataset_classes", 1)
    clean["dataset_train_images"] = _integer(row, "dataset_train_images", 1)
    clean["seed"] = _integer(row, "seed", 0, MAX_SEED)
    if clean["backbone"] in ("random", "pixels") and clean["epochs"] != 0:
        raise RunRowError("epochs", f"{clean['epochs']} for backbone {clean['backbone']!r}: "
                                    f"nothing was pretrained, must be 0")
    if clean["backbone"] not in TRAINED and clean["pretrain_gpu_hours"] != 0:
        raise RunRowError("pretrain_gpu_hours", f"{clean['pretrain_gpu_hours']} for backbone "
                          f"{clean['backbone']!r}: no pretraining here, must be 0")
    if not new and clean["pretrain_epoch_equivalents"] == "":
        clean["pretrain_epoch_equivalents"] = None
    else:
        clean["pretrain_epoch_equivalents"] = _number(row, "pretrain_epoch_equivalents", 0.0)
        if clean["backbone"] not in TRAINED and clean["pretrain_epoch_equivalents"] != 0:
            raise RunRowError("pretrain_epoch_equivalents", "no pretraining here, must be 0")
    return clean


def check_run_row(row: dict) -> dict:
    """Validate a NEW row (all keys of RUNS_COLUMNS, see the module docstring); return it
    with numbers parsed. Raises RunRowError (a ValueError) naming the offending key."""
    return _parse(row, new=True)


def relative_run_dir(run_dir: str | os.PathLike, repo_root: str | os.PathLike) -> str:
    """``run_dir`` relative to ``repo_root`` (POSIX separators), for the run_dir cell; a
    folder outside the repository stays absolute."""
    run_dir, repo_root = Path(run_dir).resolve(), Path(repo_root).resolve()
    try:
        return run_dir.relative_to(repo_root).as_posix()
    except ValueError:
        return str(run_dir)


def evaluation_row(*, run_id: str, recipe: str, dataset: dict, seed: int, protocol: str,
                   backbone: str, epochs: int, result: dict, pretrain_gpu_hours: float,
                   pretrain_epoch_equivalents: float, device: str, n_devices: int, git_sha: str,
                   run_dir: str | os.PathLike,
                   repo_root: str | os.PathLike) -> dict:
    """One runs.csv row for an evaluation's ``result`` (its result.json); ``dataset`` holds
    dataset, dataset_classes and dataset_train_images (from the data folder's manifest)."""
    import time

    return {"run_id": run_id, "recipe": recipe, **dataset, "seed": seed, "protocol": protocol,
            "backbone": backbone, "epochs": epochs, "top1": result["top1"],
            "top5": result["top5"], "best_top1": result.get("best_top1"),
            "pretrain_gpu_hours": pretrain_gpu_hours,
            "pretrain_epoch_equivalents": pretrain_epoch_equivalents,
            "eval_gpu_hours": result["device_hours"],
            "device": device, "n_devices": n_devices, "git_sha": git_sha,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "run_dir": relative_run_dir(run_dir, repo_root)}


def _csv_line(values: list) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode("utf-8")


def append_run_row(csv_path: str | os.PathLike, row: dict) -> None:
    """Append one validated new row to ``csv_path``, safely under concurrent writers.

    An exclusive ``flock`` serialises writers: the header is written exactly once (when the
    file is new or empty), rows never interleave, and a row after a torn last line starts
    on its own line. A file with another header is refused.
    """
    csv_path = Path(csv_path)
    clean = check_run_row(row)
    line = _csv_line(["" if clean[key] is None else clean[key] for key in RUNS_COLUMNS])
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    f = open(csv_path, "ab+")  # append mode: every write lands at the end
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        f.seek(0)
        header = f.readline().decode("utf-8")
        columns = next(csv.reader([header])) if header else []
        if not header:
            line = _csv_line(RUNS_COLUMNS) + line
        elif columns != RUNS_COLUMNS:
            raise RunsFileError(f"{csv_path} line 1: header {columns} is not a runs.csv header "
                             f"{RUNS_COLUMNS}; refusing to append")
        else:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a writer died mid-line: keep our row whole
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def read_runs(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Validated rows of ``csv_path`` under RUNS_COLUMNS (empty frame if missing or empty),
    keeping the latest row per (run_id, protocol, backbone): a re-run evaluation
    supersedes the earlier one. A bad file raises ValueError naming file, line, column."""
    csv_path = Path(csv_path)
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return pd.DataFrame(columns=RUNS_COLUMNS)
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        columns = next(reader, [])
        if columns != RUNS_COLUMNS:
            raise RunsFileError(f"{csv_path} line 1: header {columns} is not the runs.csv "
                                f"header {RUNS_COLUMNS}")
        rows = []
        for record in reader:
            if not record:
                continue
            if len(record) != len(columns):
                raise RunsFileError(f"{csv_path} line {reader.line_num}: {len(record)} fields, "
                                 f"expected {len(columns)} (a torn or hand-edited row?)")
            values = dict(zip(columns, record))
            try:
                rows.append(_parse(values, new=False))
            except RunRowError as error:
                raise RunsFileError(f"{csv_path} line {reader.line_num}, column {error.column!r}: "
                                 f"{error.detail}") from None
    runs = pd.DataFrame(rows, columns=RUNS_COLUMNS)
    for key in OPTIONAL_NUMBERS:  # Python numbers or None, not floats with NaN
        runs[key] = pd.Series([row[key] for row in rows], dtype=object)
    latest = runs.drop_duplicates(["run_id", "protocol", "backbone"], keep="last")
    return latest.reset_index(drop=True)
