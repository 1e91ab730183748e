"""Sweeps: a grid of ordinary runs over one base recipe (``run.py --sweep FILE``).

A sweep file names a base recipe, the seeds and stages of every point, a list of epoch
counts and the levers: each lever is a set of recipe overrides (and optionally a resolution
ramp given as fractions of the run), crossed with the epoch counts. Every point is an
ordinary ``run.py`` run under the name ``<sweep>.<lever>`` (the runs.csv ``recipe`` cell) in
``results/runs/<sweep>/<lever>-e<epochs>/seed-<s>``, so it gets the same run folders,
runs.csv rows, resume and seeds as run.py: a killed sweep started again skips the finished
points and resumes the unfinished one. ``ffcv_bt.reporting.frontier`` turns the rows into tables.

Example (rules/sweeps/demo-frontier.yaml)::

    recipe: ../demo.yaml          # relative to the sweep file
    seeds: "0,1,2"
    stages: pretrain,knn,linear
    epochs: [2, 4, 8, 16, 32]
    warmup_fraction: 0.1          # optim.warmup_epochs = fraction x epochs (optional)
    epoch_fractions:              # any epoch-valued key as a fraction of the run (optional)
      supervised.lr_peak_epoch: 0.125
    controls: first               # controls and pixel floor: first | each-lever | every-point
    levers:
      fixed-32px: {}
      ramp-16-32px:
        overrides: {resolution.min_res: 16, resolution.multiple: 8}
        ramp: [0.5, 0.875]        # start_ramp, end_ramp as fractions of the epochs
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ffcv_bt.config import Recipe, load_recipe, read_yaml
from ffcv_bt.errors import ConfigError

SWEEP_KEYS = {"recipe", "seeds", "stages", "epochs", "warmup_fraction", "epoch_fractions",
              "controls", "levers", "overrides"}
LEVER_KEYS = {"overrides", "ramp", "epochs"}
# where the random-init controls and the pixel floor are evaluated: the sweep's first point,
# the first point of each lever (levers that change the network need their own control), or all
CONTROLS = ("first", "each-lever", "every-point")


@dataclass(frozen=True)
class SweepPoint:
    """One configuration of a sweep: a lever at an epoch count, run once per seed."""

    lever: str
    epochs: int
    overrides: dict[str, str]
    recipe: Recipe | None = field(default=None, compare=False, repr=False)  # loaded by load_sweep

    @property
    def folder(self) -> str:
        return f"{self.lever}-e{self.epochs}"


@dataclass(frozen=True)
class Sweep:
    name: str
    recipe: Path
    seeds: list[int]
    stages: str
    points: list[SweepPoint]

    def run_name(self, point: SweepPoint) -> str:
        return f"{self.name}.{point.lever}"


def _expect(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise ConfigError(f"{path}: {message}")


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (every key and the base recipe with each point's
    overrides) before anything runs; ConfigError names the file and key."""
    path = Path(path)
    spec = read_yaml(path, "sweep")
    unknown = set(spec) - SWEEP_KEYS
    _expect(not unknown, path, f"unknown key(s) {sorted(unknown)}; allowed {sorted(SWEEP_KEYS)}")
    for key in ("recipe", "levers", "epochs"):
        _expect(key in spec, path, f"missing key {key!r}")
    recipe = (path.parent / spec["recipe"]).resolve()
    _expect(recipe.is_file(), path, f"recipe {spec['recipe']!r} not found (looked at {recipe})")
    seeds = [int(s) for s in str(spec.get("seeds", "0")).split(",") if s.strip()]
    _expect(len(seeds) > 0, path, "seeds: at least one")
    epochs = spec["epochs"]
    _expect(isinstance(epochs, list) and all(isinstance(e, int) and e > 0 for e in epochs),
            path, f"epochs: a list of positive integers, got {epochs!r}")
    levers = spec["levers"]
    _expect(isinstance(levers, dict) and levers, path, "levers: a non-empty mapping")
    common = {k: str(v) for k, v in (spec.get("overrides") or {}).items()}
    fractions = dict(spec.get("epoch_fractions") or {})
    _expect(all(isinstance(v, (int, float)) and v >= 0 for v in fractions.values()), path,
            f"epoch_fractions: non-negative numbers, got {fractions!r}")
    if spec.get("warmup_fraction") is not None:
        fractions["optim.warmup_epochs"] = spec["warmup_fraction"]
    points = []
    for lever, body in levers.items():
        body = body or {}
        _expect(isinstance(body, dict) and not set(body) - LEVER_KEYS, path,
                f"levers.{lever}: allowed keys {sorted(LEVER_KEYS)}")
        _expect(all(c.isalnum() or c in "-_" for c in lever), path,
                f"levers.{lever}: letters, digits, - and _ only (it names folders)")
        for e in body.get("epochs", epochs):
            overrides = {**common, **{k: str(v) for k, v in (body.get("overrides") or {}).items()},
                         "optim.epochs": str(e)}
            for key, fraction in fractions.items():
                overrides[key] = str(float(fraction) * e)
            if "ramp" in body:
                start, end = body["ramp"]
                _expect(0 <= start <= end <= 1, path, f"levers.{lever}.ramp: 0 <= start <= end <= 1")
                overrides["resolution.start_ramp"] = str(round(start * e))
                overrides["resolution.end_ramp"] = str(round(end * e))
            points.append(SweepPoint(lever, e, overrides))
    # epochs first: a sweep cut short still holds every lever at the smaller budgets
    order = {e: i for i, e in enumerate(sorted({p.epochs for p in points}))}
    points.sort(key=lambda p: order[p.epochs])
    controls = spec.get("controls", "first")
    _expect(controls in CONTROLS, path, f"controls: one of {CONTROLS}, got {controls!r}")
    if controls != "every-point":
        seen: set[str] = set()
        marked = []
        for i, p in enumerate(points):
            first = i == 0 if controls == "first" else p.lever not in seen
            seen.add(p.lever)
            marked.append(SweepPoint(p.lever, p.epochs, {**p.overrides, "eval.control": str(first).lower()}))
        points = marked
    stages = str(spec.get("stages", "pretrain,knn,linear"))
    # every point's recipe is loaded (so checked) once, before the first step
    points = [replace(p, recipe=_point_recipe(recipe, p.overrides, stages, seeds)) for p in points]
    return Sweep(path.stem, recipe, seeds, stages, points)


def _point_recipe(base: Path, overrides: dict[str, str], stages: str, seeds: list[int]) -> Recipe:
    """A point's recipe as run.py --stages STAGES --seeds SEEDS --k=v... would load it."""
    return load_recipe(base, {**overrides, "run.stages": stages,
                              "run.seeds": ",".join(str(s) for s in seeds)})


def stage_keys(recipe: Recipe) -> list[str]:
    """The run.json ``stages`` keys a finished run of ``recipe`` holds: pretraining and
    every evaluation (with its controls and ceilings)."""
    return (["pretrain"] if "pretrain" in recipe.stages else []) + [
        key for key, _, _ in recipe.evaluations]


def point_finished(run_dir: Path, stages: list[str] | tuple[str, ...] = ()) -> bool:
    """``run_dir``'s run.json says finished and holds every one of ``stages`` (a run made
    with fewer --stages is also marked finished)."""
    meta = run_dir / "run.json"
    if not meta.is_file():
        return False
    info = json.loads(meta.read_text())
    return bool(info.get("finished")) and all(s in info.get("stages", {}) for s in stages)


def run_sweep(path: str | Path, args: argparse.Namespace, overrides: dict[str, str],
              run: Callable[[Recipe, Path, Path], int]) -> int:
    """Run every point of the sweep through ``run(recipe, out, results_dir)``
    (runner.run_recipe), once per seed not yet finished; ``overrides`` from the command line
    apply to every point (and are part of its configuration). ``run.seeds`` (``--seeds``)
    picks a subset of the sweep's seeds: two processes given different seeds share one
    sweep's folders and runs.csv (rows are appended under a lock)."""
    sweep = load_sweep(path)
    if args.dry_run:
        print(describe(sweep))
        return 0
    seeds = sweep.seeds
    if "run.seeds" in overrides:
        seeds = [int(s) for s in overrides["run.seeds"].split(",") if s.strip()]
        if not seeds or set(seeds) - set(sweep.seeds):
            raise ConfigError(f"{path}: --seeds {overrides['run.seeds']!r} must be a subset of "
                              f"the sweep's seeds {sweep.seeds}")
    extra = {k: v for k, v in overrides.items() if k not in ("run.stages", "run.seeds")}
    for key, value in extra.items():
        load_recipe(sweep.recipe, {**sweep.points[0].overrides, key: value})
    results_dir = Path(args.results_dir)
    root = results_dir / "runs" / sweep.name
    for i, point in enumerate(sweep.points, 1):
        out = root / point.folder
        recipe = (_point_recipe(sweep.recipe, {**point.overrides, **extra}, sweep.stages, sweep.seeds)
                  if extra else point.recipe)
        keys = stage_keys(recipe)
        # one seed-<s> sub-folder per seed when the sweep has several (as run.py --out makes)
        folders = {s: out / f"seed-{s}" if len(sweep.seeds) > 1 else out for s in seeds}
        pending = [s for s in seeds if not point_finished(folders[s], keys)]
        label = f"[{i}/{len(sweep.points)}] {sweep.run_name(point)} {point.epochs} epochs"
        if not pending:
            print(f"{label}: finished, skipped", flush=True)
            continue
        for seed in pending:
            print(f"{label}: running seed {seed} into {folders[seed]}", flush=True)
            seeded = recipe.with_overrides({"run.seeds": str(seed)}).named(sweep.run_name(point))
            run(seeded, folders[seed], results_dir)
    return 0


def describe(sweep: Sweep) -> str:
    """One line per point (for --dry-run)."""
    lines = [f"sweep {sweep.name}: {len(sweep.points)} points x seeds {sweep.seeds} over {sweep.recipe}"]
    for p in sweep.points:
        shown = ", ".join(f"{k}={v}" for k, v in p.overrides.items())
        lines.append(f"  {sweep.run_name(p)} e{p.epochs}: {shown}")
    return "\n".join(lines)

