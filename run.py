"""Run a recipe end to end: pretrain, linear probe, semi-supervised 1% and 10%.

    python run.py                                   # the CPU demo (rules/demo.yaml)
    python run.py --config rules/1000ep.yaml        # one process (1 GPU or CPU)
    torchrun --nproc_per_node 8 run.py --config rules/fast-300ep.yaml
    python run.py --config rules/1000ep.yaml --slurm --slurm.nodes=2   # submitit
    python run.py --config rules/1000ep.yaml --dry-run                  # plan and cost

Each stage writes into the run folder and is skipped when its result exists; running the
same command again after a crash resumes the stage that was running (without --out, the
newest unfinished run of the same recipe and configuration is resumed). Every finished
evaluation appends one row to results/runs.csv and regenerates results/README.md and
results/cost_accuracy.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from ffcv_bt.config import ConfigError, Recipe, load_or_exit, parse_overrides  # noqa: E402

DEFAULT_RECIPE = REPO / "rules" / "demo.yaml"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(description="Run a Barlow Twins recipe end to end.",
                                     epilog="Any --section.key=value overrides the recipe.")
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), help="recipe (rules/*.yaml)")
    parser.add_argument("--out", default=None, help="run folder (default: results/runs/<recipe>-<time>,"
                        " or the newest unfinished one of this recipe)")
    parser.add_argument("--stages", default=None, help="subset of pretrain,linear,semi1,semi10")
    parser.add_argument("--results-dir", default=str(REPO / "results"),
                        help="where runs.csv and the generated tables live")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and cost, run nothing")
    parser.add_argument("--slurm", action="store_true", help="submit to SLURM through submitit")
    args, rest = parser.parse_known_args(argv)
    overrides = parse_overrides(rest)
    if args.stages:
        overrides["run.stages"] = args.stages
    return args, overrides


def find_resumable(runs_dir: Path, recipe: Recipe) -> Path | None:
    """Newest run folder of this recipe, with the same configuration, not yet finished."""
    candidates = sorted(runs_dir.glob(f"{recipe.name}-*"), key=lambda p: p.name, reverse=True)
    for folder in candidates:
        meta = folder / "run.json"
        if not meta.is_file():
            continue
        info = json.loads(meta.read_text())
        if not info.get("finished") and info.get("config") == recipe.values:
            return folder
    return None


def choose_run_dir(args: argparse.Namespace, recipe: Recipe) -> Path:
    if args.out:
        return Path(args.out)
    runs_dir = Path(args.results_dir) / "runs"
    existing = find_resumable(runs_dir, recipe)
    if existing is not None:
        print(f"resuming unfinished run {existing}", file=sys.stderr)
        return existing
    return runs_dir / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    recipe = load_or_exit(args.config, overrides)
    if args.dry_run:
        from ffcv_bt.plan import describe_plan

        print(describe_plan(recipe))
        return 0
    if args.slurm:
        from ffcv_bt.slurm import submit

        run_dir = choose_run_dir(args, recipe)
        try:
            job = submit(recipe, run_dir, argv if argv is not None else sys.argv[1:])
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"submitted SLURM job {job.job_id}; run folder {run_dir}")
        return 0

    from ffcv_bt.distributed import broadcast_object, setup, teardown
    from ffcv_bt.pretrain import NonFiniteLoss, Preempted
    from ffcv_bt.runner import run_stages

    dist = setup()
    try:
        run_dir = Path(broadcast_object(str(choose_run_dir(args, recipe)) if dist.is_main else None))
        summary = run_stages(recipe, run_dir, Path(args.results_dir), dist)
    except Preempted as exc:
        print(str(exc), file=sys.stderr)
        return 143
    except (NonFiniteLoss, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        teardown()
    if dist.is_main:
        print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
