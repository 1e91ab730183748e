"""The evaluations' one entry point: ``evaluate_protocol`` runs any protocol by name (what
run.py calls), and its command line ``python -m ffcv_bt.evaluation --config RECIPE --protocol
knn|linear|semi1|semi10 --weights PATH|random --out DIR [--record]``.

The protocol modules (ffcv) are imported where they are used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ffcv_bt.config import Recipe
from ffcv_bt.data.manifest import Manifest
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import ConfigError

PROTOCOLS = ("knn", "logreg", "linear", "semi1", "semi10")


def evaluate_protocol(recipe: Recipe, protocol: str, weights: str, out_dir: str | Path,
                      dist: DistInfo) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one protocol on ``weights``; its result."""
    if protocol == "knn":
        from ffcv_bt.evaluation.knn import evaluate_knn  # ffcv

        return evaluate_knn(recipe, weights, out_dir, dist)
    if protocol == "logreg":
        from ffcv_bt.evaluation.logreg import evaluate_logreg  # ffcv

        return evaluate_logreg(recipe, weights, out_dir, dist)
    from ffcv_bt.evaluation.trained import evaluate  # ffcv

    return evaluate(recipe, protocol, weights, out_dir, dist)


def main(argv: list[str]) -> int:
    """The command line (see the module's docstring)."""
    import argparse

    from ffcv_bt.config import load_recipe, parse_overrides
    from ffcv_bt.distributed.process_group import process_group

    parser = argparse.ArgumentParser(description="Evaluate a backbone with one protocol.")
    parser.add_argument("--config", required=True, help="recipe YAML (data and model keys)")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--weights", required=True,
                        help="backbone: our checkpoint/.pth, a torchvision state dict (e.g. the "
                        "released Barlow Twins ResNet-50), or 'random'")
    parser.add_argument("--out", required=True, help="output folder (resumes)")
    parser.add_argument("--record", action="store_true",
                        help="append the result to runs.csv as an 'external' checkpoint row "
                        "(no pretraining cost) and regenerate the tables")
    parser.add_argument("--results-dir", default=None, help="where runs.csv lives (default: "
                        "the repository's results/)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args, rest = parser.parse_known_args(argv)
    recipe = load_recipe(args.config, parse_overrides(rest))
    with process_group() as dist:
        result = evaluate_protocol(recipe, args.protocol, args.weights, args.out, dist)
    if dist.is_main:
        print(f"{args.protocol}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}% "
              f"(best top-1 {result['best_top1']:.2f}% at epoch {result['best_epoch']})")
        if args.record:
            record_external(recipe, args.protocol, args.weights, Path(args.out), result,
                            Path(args.results_dir) if args.results_dir else None)
    return 0


def record_external(recipe: Recipe, protocol: str, weights: str, out_dir: Path,
                    result: dict[str, Any], results_dir: Path | None) -> None:
    """Append an evaluated external checkpoint to runs.csv (backbone "external", no
    pretraining cost) and regenerate the tables."""
    from ffcv_bt.config import REPO_ROOT
    from ffcv_bt.reporting.runs_csv import append_run_row, evaluation_row
    from ffcv_bt.reporting.tables import generate
    from ffcv_bt.stage.provenance import code_version

    if weights == "random":
        raise ConfigError("--record is for a checkpoint file; the random control is recorded "
                          "by run.py beside its pretrained row")
    results_dir = results_dir or REPO_ROOT / "results"
    code = code_version(REPO_ROOT)
    row = evaluation_row(
        run_id=f"external-{Path(weights).stem}-{out_dir.name}", recipe=recipe.name,
        dataset=Manifest.read(recipe.data.dir).dataset_fields(),
        seed=recipe.train.seed, protocol=protocol, backbone="external", epochs=0,
        result=result, pretrain_gpu_hours=0.0, pretrain_epoch_equivalents=0.0,
        device=result["device"],
        n_devices=result["n_devices"],
        git_sha=code["git_sha"] + ("-dirty" if code.get("dirty") else ""), run_dir=out_dir,
        repo_root=REPO_ROOT)
    append_run_row(results_dir / "runs.csv", row)
    generate(results_dir)
    print(f"recorded in {results_dir / 'runs.csv'} as an external checkpoint")
