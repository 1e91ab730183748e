"""runs.csv rows -> results/cost_accuracy.png: top-1 against device-hours per configuration."""
from __future__ import annotations

import os
import statistics
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ffcv_bt.atomic_files import atomic_write
from ffcv_bt.reporting.aggregate import BACKBONE_NAMES, PROTOCOL_NAMES, configurations, device_kind
from ffcv_bt.reporting.published import (
    BASELINE_COSTS,
    BASELINE_HARDWARE,
    BASELINE_HOURS,
    PAPER,
    RELEASED_WEIGHTS,
)
from ffcv_bt.reporting.runs_csv import PROTOCOLS

_MARKERS = {"knn": "D", "logreg": "P", "linear": "o", "semi1": "s", "semi10": "^"}
_FILL = {"pretrained": "full", "supervised": "left", "external": "top", "random": "none",
         "pixels": "bottom"}


def plot_cost_accuracy(runs: pd.DataFrame, png_path: str | os.PathLike) -> Path:
    """Mean top-1 (error bar: std over seeds) vs mean device-hours per run, one point per
    configuration and protocol (log x); marker = protocol, fill = backbone, colour = data
    set; the ImageNet-1k references at their published cost."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(10, 6.5), dpi=120)
    ax = fig.subplots()
    low, high = (cost.hours for cost in BASELINE_COSTS)
    for entry, color, size in ((PAPER, "black", 12), (RELEASED_WEIGHTS, "darkgray", 6)):
        for protocol in ("linear", "semi1", "semi10"):
            top1 = entry.accuracy(protocol)[0]
            ax.plot([BASELINE_HOURS], [top1], marker=_MARKERS[protocol], markersize=size,
                    linestyle="none", color=color, zorder=3)
            if entry is PAPER:
                ax.hlines(top1, low, high, color=color, linewidth=1)  # the two published costs
                ax.annotate(f"paper, {PROTOCOL_NAMES[protocol]}: {top1:.1f}", (low, top1),
                            textcoords="offset points", xytext=(-10, 8), ha="right", fontsize=8)

    datasets = list(dict.fromkeys(runs["dataset"]))
    colors = {name: f"C{i % 10}" for i, name in enumerate(datasets)}
    skipped = 0
    for config in configurations(runs, PROTOCOLS):
        for protocol in config.rows:
            one = replace(config, rows={protocol: config.rows[protocol]})
            hours, top1 = one.hours_per_run()[1], one.values(protocol, "top1")
            skipped += hours <= 0
            if hours <= 0:
                continue
            spread = [statistics.stdev(top1)] if len(top1) > 1 else None  # no bar for n=1
            ax.errorbar([hours], [statistics.mean(top1)], yerr=spread, capsize=3,
                        color=colors[config.dataset], marker=_MARKERS[protocol], markersize=8,
                        linestyle="none", fillstyle=_FILL[config.backbone], markeredgewidth=1.5)

    ax.set_xscale("log")
    kinds = ", ".join(dict.fromkeys(device_kind(d) for d in runs["device"])) or "no runs yet"
    ax.set_xlabel(f"device-hours per run, pretraining + that evaluation (log scale)\n"
                  f"references: {BASELINE_HARDWARE}-hours of pretraining "
                  f"({low:,.0f} to {high:,.0f}); our runs: hours on {kinds}")
    ax.set_ylabel("top-1 accuracy (%), mean ± std over seeds")
    ax.set_title("Barlow Twins: top-1 vs cost. Each run uses its own data set (colour);\n"
                 "the references are ImageNet-1k and compare only with ImageNet-1k runs",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)

    def handle(label: str, marker: str = "o", color: str = "gray", fill: str = "full") -> Line2D:
        return Line2D([], [], marker=marker, ls="none", color=color, label=label, fillstyle=fill)

    handles = [handle(PROTOCOL_NAMES[p], m) for p, m in _MARKERS.items()]
    handles += [handle(BACKBONE_NAMES[b], fill=f) for b, f in _FILL.items()]
    handles += [handle(f"{PAPER.name} (ImageNet-1k)", color="black"),
                handle(f"{RELEASED_WEIGHTS.name} (ImageNet-1k)", color="darkgray")]
    handles += [handle(f"ours: {name}", color=colors[name]) for name in datasets]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if skipped:
        fig.text(0.01, 0.01, f"{skipped} point(s) with 0 hours not shown (log axis)", fontsize=7)
    fig.tight_layout()
    return atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
