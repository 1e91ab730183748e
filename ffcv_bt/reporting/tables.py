"""CLI: runs.csv -> results/README.md (reporting/markdown.py) and results/cost_accuracy.png
(reporting/plots.py).

runs.csv (format: ffcv_bt.reporting.runs_csv) is the source of truth; the Markdown and the
plot are generated from it, so they can always be rebuilt: ``python -m ffcv_bt.reporting.tables``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ffcv_bt.atomic_files import atomic_write_text
from ffcv_bt.cli import run_command
from ffcv_bt.reporting.markdown import render_readme
from ffcv_bt.reporting.plots import plot_cost_accuracy
from ffcv_bt.reporting.runs_csv import read_runs


def generate(results_dir: str | os.PathLike) -> None:
    """Regenerate results_dir/README.md and results_dir/cost_accuracy.png from runs.csv."""
    results_dir = Path(results_dir)
    runs = read_runs(results_dir / "runs.csv")
    atomic_write_text(results_dir / "README.md", render_readme(runs))
    plot_cost_accuracy(runs, results_dir / "cost_accuracy.png")


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m ffcv_bt.reporting.tables [--results-dir results] [--compare RUN_A RUN_B]``."""
    parser = argparse.ArgumentParser(
        description="Regenerate results/README.md and results/cost_accuracy.png from runs.csv.")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="folder holding runs.csv; README.md and cost_accuracy.png go there")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="print two run folders' configuration differences and results "
                        "side by side instead")
    args = parser.parse_args(argv)
    if args.compare:
        from ffcv_bt.reporting.compare_runs import compare_runs

        print(compare_runs(*args.compare))
        return
    generate(args.results_dir)
    print(f"wrote {args.results_dir / 'README.md'} and {args.results_dir / 'cost_accuracy.png'} "
          f"from {args.results_dir / 'runs.csv'}")


if __name__ == "__main__":
    sys.exit(run_command(main))  # a bad runs.csv: one line naming file, line and column
