"""Stages of one run (pretrain -> linear -> semi1 -> semi10) and the run's provenance.

The run folder holds ``run.json`` (recipe text, resolved config, code and library
versions, device, per-stage wall time and device-hours), ``config.yaml``, and one
sub-folder per stage. A stage with a ``result.json`` is done and skipped; an unfinished
stage resumes from its checkpoint. Each finished evaluation appends one row to
``results/runs.csv`` exactly once (recorded in run.json) and regenerates the tables.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ffcv_bt.accounting import code_version, device_description, library_versions
from ffcv_bt.config import REPO_ROOT, Recipe
from ffcv_bt.distributed import DistInfo, barrier
from ffcv_bt.evaluate import evaluate
from ffcv_bt.io import atomic_write_json, atomic_write_text
from ffcv_bt.pretrain import pretrain
from ffcv_bt.results import append_run_row, generate


def _initial_metadata(recipe: Recipe, run_dir: Path, dist: DistInfo) -> dict[str, Any]:
    texts = {f: Path(f).read_text() for f in recipe.files + [recipe.protocol_file]}
    return {
        "run_id": run_dir.name, "recipe": recipe.name, "recipe_files": texts,
        "overrides": recipe.overrides, "config": recipe.values,
        "code": code_version(REPO_ROOT), "libraries": library_versions(),
        **device_description(dist.device), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "stages": {}, "finished": False,
    }


def _load_metadata(recipe: Recipe, run_dir: Path, dist: DistInfo) -> dict[str, Any]:
    path = run_dir / "run.json"
    if path.is_file():
        meta = json.loads(path.read_text())
        if meta.get("config") != recipe.values:
            raise ValueError(f"{path}: this run folder was made with another configuration; "
                             f"use a new --out (or the same recipe and overrides)")
        return meta
    return _initial_metadata(recipe, run_dir, dist)


def _evaluations(recipe: Recipe) -> list[tuple[str, str, str]]:
    """(stage key, protocol, backbone kind) in order; the random control follows each."""
    out = []
    for stage in recipe.stages:
        if stage == "pretrain":
            continue
        out.append((stage, stage, "pretrained"))
        if recipe["eval"]["control"]:
            out.append((f"{stage}-random", stage, "random"))
    return out


def run_stages(recipe: Recipe, run_dir: Path, results_dir: Path, dist: DistInfo) -> str:
    """Run every stage of ``recipe`` into ``run_dir``; return a printable summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = _load_metadata(recipe, run_dir, dist)

    def save() -> None:
        if dist.is_main:
            atomic_write_json(run_dir / "run.json", meta)

    if dist.is_main:
        atomic_write_text(run_dir / "config.yaml", recipe.to_yaml())
    save()
    arch = recipe["model"]["arch"]
    backbone_path = run_dir / "pretrain" / f"{arch}.pth"
    evaluations = _evaluations(recipe)
    if "pretrain" in recipe.stages:
        start = time.time()
        result = pretrain(recipe, run_dir / "pretrain", dist)
        meta["stages"].setdefault("pretrain", {}).update(
            {"device_hours": result["device_hours"], "device_seconds": result["device_seconds"],
             "wall_seconds_this_call": time.time() - start, "result": result})
        save()
    pretrain_file = run_dir / "pretrain" / "result.json"
    pretrain_hours = 0.0
    if pretrain_file.is_file():
        pretrain_hours = json.loads(pretrain_file.read_text())["device_hours"]
    elif any(kind == "pretrained" for _, _, kind in evaluations):
        raise FileNotFoundError(f"{pretrain_file}: evaluations need a finished pretraining "
                                f"stage in this run folder (add 'pretrain' to --stages)")

    rows = []
    for key, protocol, kind in evaluations:
        weights = "random" if kind == "random" else str(backbone_path)
        start = time.time()
        result = evaluate(recipe, protocol, weights, run_dir / key, dist)
        stage = meta["stages"].setdefault(key, {})
        stage.update({"device_hours": result["device_hours"],
                      "device_seconds": result["device_seconds"], "result": result})
        stage.setdefault("wall_seconds_this_call", time.time() - start)
        row = {
            "run_id": meta["run_id"], "recipe": recipe.name, "protocol": protocol,
            "backbone": kind, "epochs": recipe["optim"]["epochs"] if kind == "pretrained" else 0,
            "top1": result["top1"], "top5": result["top5"], "best_top1": result["best_top1"],
            "pretrain_gpu_hours": pretrain_hours if kind == "pretrained" else 0.0,
            "eval_gpu_hours": result["device_hours"], "device": meta["device"],
            "n_devices": meta["n_devices"],
            "git_sha": meta["code"]["git_sha"] + ("-dirty" if meta["code"].get("dirty") else ""),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": str(run_dir),
        }
        if dist.is_main and not stage.get("appended_to_runs_csv"):
            append_run_row(results_dir / "runs.csv", row)
            stage["appended_to_runs_csv"] = True
            generate(results_dir)
        save()
        rows.append(row)
        barrier()

    meta["finished"] = True
    meta["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save()
    lines = [f"run folder: {run_dir}", f"pretraining: {pretrain_hours:.4f} device-hours on "
             f"{meta['n_devices']}x {meta['device']}"]
    for row in rows:
        lines.append(f"{row['protocol']:7s} {row['backbone']:10s} top-1 {row['top1']:6.2f}%  "
                     f"top-5 {row['top5']:6.2f}%  eval {row['eval_gpu_hours']:.4f} device-hours")
    lines.append(f"tables: {results_dir / 'README.md'}, plot: {results_dir / 'cost_accuracy.png'}")
    return "\n".join(lines)
