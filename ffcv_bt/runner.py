"""``run.py``: one recipe end to end, once per seed: stages (pretrain -> knn -> linear ->
semi1 -> semi10, each evaluation also on a random-init control) into a run folder, with
the run's provenance.

The run folder holds ``run.json`` (recipe text, resolved config, code and library
versions, device, per-stage wall time and device-hours), ``config.yaml``, and one
sub-folder per stage. A stage with a ``result.json`` is done and skipped; an unfinished
stage resumes from its checkpoint. Each finished evaluation appends one row to
``results/runs.csv`` exactly once (recorded in run.json) and regenerates the tables.

The modules marked ``# ffcv`` (and matplotlib, submitit) are imported where they are used:
importing ffcv imports torch and numba (seconds on 2 cores; unpatched ffcv 1.0.2 also
compiles a numba typed dict, see install/patch_ffcv.py), which a dry run, a sweep's checks
and a one-line input error should not pay.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ffcv_bt.atomic_files import atomic_write_json, atomic_write_text
from ffcv_bt.cli import run_command
from ffcv_bt.config import REPO_ROOT, Recipe, load_recipe, parse_overrides
from ffcv_bt.data.manifest import Manifest
from ffcv_bt.distributed.collectives import barrier, broadcast_object
from ffcv_bt.distributed.process_group import DistInfo, process_group
from ffcv_bt.errors import ConfigError, RunFolderError
from ffcv_bt.method.schedules import pretrain_cost_factor
from ffcv_bt.reporting.dry_run import describe_plan, fit_to_budget
from ffcv_bt.reporting.runs_csv import append_run_row, evaluation_row
from ffcv_bt.stage.provenance import code_version, device_description, library_versions
from ffcv_bt.sweep import run_sweep

DEFAULT_RECIPE = REPO_ROOT / "rules" / "demo.yaml"


def run_id_of(run_dir: Path) -> str:
    """The runs.csv run_id of a run folder: its name, with the parent's for the seed-<s>
    sub-folders of --out (two --out folders with several seeds must not share ids:
    runs.csv keeps the latest row per run_id, protocol and backbone)."""
    if run_dir.name.startswith("seed-"):
        return f"{run_dir.parent.name}-{run_dir.name}"
    return run_dir.name


def _initial_metadata(recipe: Recipe, run_dir: Path, dist: DistInfo) -> dict[str, Any]:
    texts = {f: Path(f).read_text() for f in recipe.files + [recipe.protocol_file]}
    return {
        "run_id": run_id_of(run_dir), "recipe": recipe.name, "recipe_files": texts,
        "overrides": recipe.overrides, "config": recipe.values,
        "code": code_version(REPO_ROOT), "libraries": library_versions(),
        **device_description(dist.device), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "stages": {}, "finished": False,
    }


def _load_metadata(recipe: Recipe, run_dir: Path, dist: DistInfo) -> dict[str, Any]:
    path = run_dir / "run.json"
    if path.is_file():
        meta = json.loads(path.read_text())
        differences = recipe.differences(meta.get("config", {}))
        if differences:
            shown = "; ".join(differences[:5]) + (" ..." if len(differences) > 5 else "")
            raise RunFolderError(f"{run_dir} was made with another configuration ({shown}); "
                                 f"use another --out, or the recipe and overrides it was made with")
        meta["config"] = recipe.values  # run-control sections (stages...) may change
        return meta
    return _initial_metadata(recipe, run_dir, dist)


def run_stages(recipe: Recipe, run_dir: Path, results_dir: Path,
               dist: DistInfo) -> tuple[str, list[dict]]:
    """Run every stage of ``recipe`` into ``run_dir``; return a printable summary and the
    runs.csv rows of its evaluations."""
    from ffcv_bt.evaluation.cli import evaluate_protocol
    from ffcv_bt.reporting.tables import generate  # matplotlib
    from ffcv_bt.train.pretrain import pretrain  # ffcv

    run_dir.mkdir(parents=True, exist_ok=True)
    meta = _load_metadata(recipe, run_dir, dist)

    def save() -> None:
        if dist.is_main:
            atomic_write_json(run_dir / "run.json", meta)

    if dist.is_main:
        atomic_write_text(run_dir / "config.yaml", recipe.to_yaml())
    save()
    arch = recipe.model.arch
    backbone_path = run_dir / "pretrain" / f"{arch}.pth"
    evaluations = recipe.evaluations
    if "pretrain" in recipe.stages:
        start = time.time()
        result = pretrain(recipe, run_dir / "pretrain", dist)
        meta["stages"].setdefault("pretrain", {}).update(
            {"device_hours": result["device_hours"], "device_seconds": result["device_seconds"],
             "monitor_device_hours": result.get("monitor_device_hours", 0.0),
             "wall_seconds_this_call": time.time() - start, "result": result})
        save()
    pretrain_file = run_dir / "pretrain" / "result.json"
    pretrain_hours = 0.0
    if pretrain_file.is_file():
        pretrain_hours = json.loads(pretrain_file.read_text())["device_hours"]
    elif any(kind == "pretrained" for _, _, kind in evaluations):
        raise RunFolderError(f"{pretrain_file} not found: evaluations need a finished "
                             f"pretraining stage in this run folder (add 'pretrain' to --stages)")

    supervised_path, supervised_hours = None, 0.0
    if any(kind == "supervised" for _, _, kind in evaluations):
        from ffcv_bt.train.supervised import SupervisedTraining, train_supervised  # ffcv

        supervised_path = SupervisedTraining.backbone_path(run_dir / "supervised", recipe)
        start = time.time()
        result = train_supervised(recipe, run_dir / "supervised", dist)
        supervised_hours = result["device_hours"]
        meta["stages"].setdefault("supervised", {}).update(
            {"device_hours": result["device_hours"], "device_seconds": result["device_seconds"],
             "wall_seconds_this_call": time.time() - start, "result": result})
        save()

    dataset = Manifest.read(recipe.data.dir).dataset_fields()
    epoch_equivalents = pretrain_cost_factor(recipe)
    rows = []
    for key, protocol, kind in evaluations:
        weights = {"pretrained": str(backbone_path), "supervised": str(supervised_path)}.get(kind, kind)
        start = time.time()
        result = evaluate_protocol(recipe, protocol, weights, run_dir / key, dist)
        trained = kind in ("pretrained", "supervised")  # both cost the recipe's epochs
        stage = meta["stages"].setdefault(key, {})
        stage.update({"device_hours": result["device_hours"],
                      "device_seconds": result["device_seconds"], "result": result})
        stage.setdefault("wall_seconds_this_call", time.time() - start)
        row = evaluation_row(
            run_id=meta["run_id"], recipe=recipe.name, dataset=dataset,
            seed=recipe.train.seed, protocol=protocol, backbone=kind,
            epochs=recipe.optim.epochs if trained else 0, result=result,
            pretrain_gpu_hours={"pretrained": pretrain_hours, "supervised": supervised_hours}.get(kind, 0.0),
            pretrain_epoch_equivalents=epoch_equivalents if trained else 0.0,
            device=meta["device"], n_devices=meta["n_devices"],
            git_sha=meta["code"]["git_sha"] + ("-dirty" if meta["code"].get("dirty") else ""),
            run_dir=run_dir, repo_root=REPO_ROOT)
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
    return "\n".join(lines), rows


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(description="Run a Barlow Twins recipe end to end.",
                                     epilog="Any --section.key=value overrides the recipe.")
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), help="recipe (rules/*.yaml)")
    parser.add_argument("--out", default=None, help="run folder (default: results/runs/<recipe>-"
                        "s<seed>-<time>, or the newest unfinished one of this configuration); "
                        "with several seeds, one sub-folder seed-<s> each")
    parser.add_argument("--stages", default=None, help="subset of pretrain,knn,linear,semi1,semi10")
    parser.add_argument("--seeds", default=None, help="e.g. 0,1,2: the whole recipe once per "
                        "train.seed (sets run.seeds); tables show mean ± std over them")
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "results"),
                        help="where runs.csv and the generated tables live")
    parser.add_argument("--budget-hours", type=float, default=None,
                        help="fit optim.epochs (ramps and warmup scaled) to H estimated "
                        "pretraining device-hours on the measured device (see --dry-run)")
    parser.add_argument("--name", default=None, help="the run's name in runs.csv and its "
                        "default folder (default: the recipe file's stem); sweeps name "
                        "their points <sweep>.<lever>")
    parser.add_argument("--sweep", default=None, metavar="FILE", help="run every point of a "
                        "sweep file (rules/sweeps/*.yaml) as an ordinary run; finished points "
                        "are skipped, an unfinished one resumes")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and cost, run nothing")
    parser.add_argument("--slurm", action="store_true", help="submit to SLURM through submitit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args, rest = parser.parse_known_args(argv)
    overrides = parse_overrides(rest)
    if args.stages:
        overrides["run.stages"] = args.stages
    if args.seeds:
        overrides["run.seeds"] = args.seeds
    return args, overrides


def find_resumable(runs_dir: Path, recipe: Recipe) -> Path | None:
    """Newest run folder of this recipe, with the same configuration, not yet finished."""
    candidates = sorted(runs_dir.glob(f"{recipe.name}-*"), key=lambda p: p.name, reverse=True)
    for folder in candidates:
        meta = folder / "run.json"
        if not meta.is_file():
            continue
        info = json.loads(meta.read_text())
        if not info.get("finished") and not recipe.differences(info.get("config", {})):
            return folder
    return None


def choose_run_dir(out: Path | None, results_dir: Path, recipe: Recipe, several_seeds: bool) -> Path:
    """``out`` (its seed-<s> sub-folder with several seeds), else the newest unfinished run
    of this configuration, else a new folder under ``results_dir``/runs."""
    seed = recipe.train.seed
    if out:
        return out / f"seed-{seed}" if several_seeds else out
    runs_dir = results_dir / "runs"
    existing = find_resumable(runs_dir, recipe)
    if existing is not None:
        print(f"resuming unfinished run {existing}", file=sys.stderr)
        return existing
    return runs_dir / f"{recipe.name}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def seed_summary(summaries: list[list[dict]]) -> str:
    """Mean ± sample std over seeds of each (protocol, backbone) top-1 (printed at the end)."""
    by_key: dict[tuple[str, str], list[float]] = {}
    for rows in summaries:
        for row in rows:
            by_key.setdefault((row["protocol"], row["backbone"]), []).append(row["top1"])
    lines = [f"over {len(summaries)} seeds (mean ± sample std of top-1):"]
    for (protocol, backbone), values in by_key.items():
        spread = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "n/a"
        lines.append(f"  {protocol:7s} {backbone:10s} {statistics.mean(values):6.2f} ± {spread} "
                     f"(n={len(values)})")
    return "\n".join(lines)


def run_recipe(recipe: Recipe, out: Path | None, results_dir: Path) -> int:
    """Run ``recipe`` once per seed (run.seeds) into ``out`` (one seed-<s> sub-folder each
    with several seeds; without ``out`` a resumable or new folder under ``results_dir``/runs),
    appending its rows to ``results_dir``/runs.csv. run.py and every sweep point end here."""
    from ffcv_bt.preflight import check_run_inputs  # ffcv

    check_run_inputs(recipe, out if out else results_dir / "runs", results_dir)
    seeds = recipe.seeds
    all_rows: list[list[dict]] = []
    with process_group() as dist:
        for seed in seeds:
            seeded = recipe.with_overrides({"train.seed": str(seed)})
            chosen = str(choose_run_dir(out, results_dir, seeded, len(seeds) > 1)) if dist.is_main else None
            run_dir = Path(broadcast_object(chosen))  # type: ignore[arg-type]
            summary, rows = run_stages(seeded, run_dir, results_dir, dist)
            all_rows.append(rows)
            if dist.is_main:
                print(summary, flush=True)
    if dist.is_main and len(seeds) > 1:
        print(seed_summary(all_rows))
    return 0


def main(argv: list[str]) -> int:
    """``run.py``'s command line (see run.py): the recipe once per seed."""
    args, overrides = parse_args(argv)
    if args.sweep:
        return run_sweep(args.sweep, args, overrides, run_recipe)

    def load(values: dict[str, str]) -> Recipe:
        recipe = load_recipe(args.config, values)
        return recipe.named(args.name) if args.name else recipe

    recipe = load(overrides)
    if args.budget_hours is not None:
        if "optim.epochs" in overrides:
            raise ConfigError("--budget-hours chooses optim.epochs; drop --optim.epochs")
        overrides.update({k: str(v) for k, v in fit_to_budget(recipe, args.budget_hours).items()})
        recipe = load(overrides)
    if args.dry_run:
        print(describe_plan(recipe))
        return 0
    out = Path(args.out) if args.out else None
    if args.slurm:
        from ffcv_bt.distributed.slurm import submit  # submitit

        run_dir = out or choose_run_dir(None, Path(args.results_dir), recipe, False)
        job = submit(recipe, run_dir, argv, entry=main)
        print(f"submitted SLURM job {job.job_id}; run folder {run_dir}")
        return 0
    return run_recipe(recipe, out, Path(args.results_dir))


def console() -> None:
    """The ``ffcv-bt`` console script: ``run.py``'s command line."""
    raise SystemExit(run_command(main))
