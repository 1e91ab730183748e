"""runs.csv rows -> the Markdown of results/README.md (written by reporting/tables.py).

Tables aggregate over seeds: one row per configuration (reporting/aggregate.py) with
mean ± sample std and n. Accuracy deltas and cost ratios against the Barlow Twins baseline
are shown only for ImageNet-1k rows: a run on another data set is not comparable to an
ImageNet number. Published results (ffcv_bt.reporting.published) sit in their own
"published, not run here" sections.
"""
from __future__ import annotations

import math
import statistics

import pandas as pd

from ffcv_bt.reporting.aggregate import (
    BACKBONE_NAMES,
    KNN,
    PROTOCOL_NAMES,
    Configuration,
    Stat,
    configurations,
    device_kind,
)
from ffcv_bt.reporting.published import (
    BASELINE_COSTS,
    BASELINE_HARDWARE,
    BASELINE_HOURS,
    FFCV_IMAGENET_SOURCE,
    FFCV_IMAGENET_URL,
    PAPER,
    SUPERVISED_CEILINGS,
    Published,
    published_for,
)
from ffcv_bt.reporting.runs_csv import PROTOCOLS

_MISSING = "—"
NOT_COMPARABLE = "not ImageNet-1k: not comparable to the ImageNet reference"


def format_accuracy(value: float | None) -> str:
    """Percent with 2 decimals; a dash when absent."""
    return _MISSING if value is None or pd.isna(value) else f"{value:.2f}"


def format_delta(value: float) -> str:
    """Signed percentage points with 2 decimals."""
    return f"{value:+.2f}"


def format_stat(stat: Stat, missing: str = _MISSING) -> str:
    """"mean ± sample std (n=k)" with 2 decimals; the std is ``missing`` when n=1."""
    spread = f"{stat.std:.2f}" if stat.std is not None else missing
    return f"{stat.mean:.2f} ± {spread} (n={stat.n})"


def format_mean_std(values: list[float]) -> str:
    """format_stat of ``values``; a dash when there are none."""
    return format_stat(Stat.of(values)) if values else _MISSING


def format_significant(value: float) -> str:
    """3 significant figures, plain decimals, thousands separators; integer digits are
    never rounded away (2688 -> "2,688", 12.345 -> "12.3", 0.001234 -> "0.00123")."""
    if value == 0:
        return "0"
    if abs(value) >= 99.95:
        return f"{value:,.0f}"
    rounded = float(f"{value:.3g}")
    decimals = max(0, 2 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}"


def cost_ratio_cell(total_hours: float, devices: list[str]) -> str:
    """Hours as a fraction of the baseline's V100-hours, naming our device type when it
    is not a V100 (then the two numbers are hours on different hardware)."""
    if total_hours <= 0:
        return _MISSING
    ratio = total_hours / BASELINE_HOURS
    ratio_text = f"{ratio:.2e}" if ratio < 1e-3 else format_significant(ratio)
    cell = f"{ratio_text}x of {format_significant(BASELINE_HOURS)} {BASELINE_HARDWARE}-h"
    others = sorted({device_kind(d) for d in devices if "v100" not in d.lower()})
    if others:
        cell += f" (hours on {', '.join(others)}, not {BASELINE_HARDWARE}-hours)"
    return cell


def _text(value: object) -> str:
    """Make user text safe inside a Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _our_cells(config: Configuration) -> list[str]:
    devices = " / ".join(dict.fromkeys(_text(r["device"]) for r in config.all_rows()))
    revision = f" @ {config.revision}" if config.show_revision and config.revision else ""
    return [f"[{config.recipe}](../rules/{config.recipe}.yaml){revision}", _text(config.dataset),
            BACKBONE_NAMES[config.backbone], str(config.epochs),
            f"{config.n_devices}x {devices}", config.seeds()]


def _cost_cells(config: Configuration) -> list[str]:
    pretrain, total = config.hours_per_run()
    cost = (cost_ratio_cell(total, [r["device"] for r in config.all_rows()])
            if config.imagenet_1k else _MISSING)
    return [format_significant(pretrain), format_significant(total), cost]


def _accuracy_cells(config: Configuration, protocol: str, reference: float | None,
                    best: bool) -> list[str]:
    top1 = config.values(protocol, "top1")
    cells = [format_mean_std(top1), format_mean_std(config.values(protocol, "top5"))]
    if best:
        best_values = config.values(protocol, "best_top1")
        cells.append(format_accuracy(statistics.mean(best_values)) if best_values else _MISSING)
    if reference is not None:
        cells.append(format_delta(statistics.mean(top1) - reference)
                     if top1 and config.imagenet_1k else _MISSING)
    return cells


_OURS = ["recipe", "data set", "backbone", "epochs", "device", "seeds"]
_COST = ["pretrain device-h per run (mean)", "total device-h per run (mean)", "cost vs baseline"]


def single_protocol_table(runs: pd.DataFrame, protocol: str) -> str:
    """Markdown table of our configurations for ``protocol`` ("linear" or "knn")."""
    reference = PAPER.accuracy(protocol)
    headers = _OURS + ["top-1", "top-5", "best top-1 (mean)"]
    headers += ["Δ top-1 vs paper (pp)"] if reference else []
    rows = [_our_cells(c) + _accuracy_cells(c, protocol, reference and reference[0], True)
            + _cost_cells(c) for c in configurations(runs, (protocol,))]
    return _markdown_table(headers + _COST, rows) if rows else "No runs recorded yet."


def semi_table(runs: pd.DataFrame) -> str:
    """Markdown table of semi-supervised fine-tuning: 1% and 10% side by side."""
    headers = _OURS + ["1% top-1", "1% top-5", "Δ 1% top-1 (pp)", "10% top-1", "10% top-5",
                       "Δ 10% top-1 (pp)"] + _COST
    headers[-2] = "total device-h per run (mean, pretrain + semi evals)"
    rows = [_our_cells(c) + _accuracy_cells(c, "semi1", PAPER.semi1[0], False)
            + _accuracy_cells(c, "semi10", PAPER.semi10[0], False) + _cost_cells(c)
            for c in configurations(runs, ("semi1", "semi10"))]
    return _markdown_table(headers, rows) if rows else "No runs recorded yet."


def _published_accuracy(entry: Published, protocol: str) -> list[str]:
    accuracy = entry.accuracy(protocol)
    if accuracy is None:
        return [_MISSING] * 3
    reference = PAPER.accuracy(protocol)
    comparable = entry.dataset_classes == 1000 and reference is not None and entry is not PAPER
    delta = format_delta(accuracy[0] - reference[0]) if comparable else _MISSING
    return [format_accuracy(accuracy[0]), format_accuracy(accuracy[1]), delta]


def published_table(protocols: tuple[str, ...]) -> str:
    """Published results with a number for any of ``protocols``, with their sources."""
    entries = list(dict.fromkeys(e for p in protocols for e in published_for(p)))
    headers = ["published, not run here", "source", "data set", "schedule"]
    for protocol in protocols:
        name = "" if len(protocols) == 1 else PROTOCOL_NAMES[protocol] + " "
        headers += [f"{name}top-1", f"{name}top-5", f"Δ {name}top-1 vs paper (pp)"]
    headers += ["hardware", "pretrain device-h"]
    rows = []
    for entry in entries:
        note = f" ({entry.hours_note})" if entry.hours_note else ""
        hours = "not published" if entry.pretrain_hours is None else \
            format_significant(entry.pretrain_hours) + note
        rows.append([f"{entry.name} (published, not run here)",
                     f"[{_text(entry.source)}]({entry.url})",
                     f"{entry.dataset}, {entry.architecture}", entry.schedule,
                     *[cell for p in protocols for cell in _published_accuracy(entry, p)],
                     entry.hardware or "not published", hours])
    return _markdown_table(headers, rows)


def _provenance(runs: pd.DataFrame) -> str:
    lines = ["Runs pooled in each configuration (all protocols):", ""]
    for config in configurations(runs, PROTOCOLS):
        ids = ", ".join(f"`{_text(i)}`" for i in config.run_ids())
        lines.append(f"- {_text(config.label())}: {ids}")
    lines += ["", "Runs:", ""]
    for run_id, rows in runs.groupby("run_id", sort=False):
        last = rows.iloc[-1]
        lines.append(f"- `{_text(run_id)}`: seed {last['seed']}, data set {_text(last['dataset'])}, "
                     f"commit `{_text(last['git_sha']) or 'unknown'}`, "
                     f"finished {_text(last['finished_at']) or 'unknown'}, "
                     f"run dir `{_text(last['run_dir']) or 'unknown'}`")
    return "\n".join(lines)


def _notes() -> list[str]:
    costs = " and ".join(cost.describe() for cost in BASELINE_COSTS)
    return [
        f"- Baseline cost: two published figures, {costs}. Cost ratios use the lower, "
        f"{format_significant(BASELINE_HOURS)} {BASELINE_HARDWARE}-hours; the baseline's "
        "evaluation hours are unknown, which flatters the baseline.",
        f"- Δ and cost vs baseline are shown only for ImageNet-1k rows (1000 classes, more "
        f"than 1.2M train images); other rows show {_MISSING}: {NOT_COMPARABLE}. The "
        "ImageNet-100 published rows compare only with runs on 100 classes.",
        "- Accuracy cells are mean ± sample standard deviation (ddof=1) over the runs (seeds) "
        f"of a configuration, with n; for n=1 the deviation is {_MISSING}. top-1/top-5 are "
        "from the final epoch; best top-1 (mean of the best epochs) is for reference only.",
        "- Device-h are devices x wall-clock hours of the timed stages, on the device named "
        "in the row, per run (mean over the configuration's runs); hours on other hardware "
        "are **not V100-hours**. Total = pretraining + the evaluations of that table.",
        "- Backbones: pretrained (ours), supervised (the ceiling: the same backbone trained "
        "with labels on the same images, epochs and resolutions; its cost in the pretraining "
        "column), external (a published checkpoint evaluated here: no pretraining cost here), "
        "random init (control: torchvision's standard initialisation, no zero-init residual) "
        "and raw pixels as features (floor).",
        f"- kNN: top-1/top-5 of a k={KNN['k']} nearest-neighbour vote on frozen features, cosine "
        f"similarity, weights exp(similarity / {KNN['temperature']:g}) (Wu et al. 2018).",
        "- Rows of one recipe made by different code revisions are separate configurations "
        "(\"recipe @ commit\" where a recipe has several): a recipe or a baseline changed "
        "between them (e.g. the random-init control before and after 2026-12-03).",
        "- When an evaluation was recorded more than once, the last row of runs.csv counts.",
    ]


def supervised_ceiling_table() -> str:
    """The published supervised ImageNet-1k runs (ffcv-imagenet), for reading a Barlow Twins
    row's cost and accuracy against what labels buy."""
    headers = ["published supervised run, not run here", "architecture", "epochs", "top-1",
               "hardware", "wall-clock", "device-h", "top-1 vs Barlow Twins paper (linear)"]
    rows = [[f"[{FFCV_IMAGENET_SOURCE}]({FFCV_IMAGENET_URL})", c.architecture, str(c.epochs),
             format_accuracy(c.top1), f"{c.n_devices}x {c.hardware}", f"{c.minutes:g} min",
             format_significant(c.device_hours), format_delta(c.top1 - PAPER.linear[0])]
            for c in SUPERVISED_CEILINGS]
    return _markdown_table(headers, rows)


def render_readme(runs: pd.DataFrame) -> str:
    """The whole results/README.md text for ``runs`` (as returned by read_runs)."""
    sections = [(f"kNN (frozen backbone, k={KNN['k']}, cosine, T={KNN['temperature']:g})", ("knn",)),
                ("Logistic regression on frozen features (L-BFGS, standardised features, no "
                 "augmentation; SimCLR's transfer evaluation)", ("logreg",)),
                ("Linear probe (frozen backbone, 100% labels)", ("linear",)),
                ("Semi-supervised fine-tuning (1% and 10% labels)", ("semi1", "semi10"))]
    parts = ["# Results", "",
             "_Generated by `python -m ffcv_bt.reporting.tables` from `runs.csv`: do not edit by hand._",
             "",
             f"Baseline: Barlow Twins ResNet-50 ([{PAPER.source}]({PAPER.url})), {PAPER.epochs} "
             f"epochs of ImageNet-1k pretraining. Each run is evaluated on its own data set "
             f"(column \"data set\"); only ImageNet-1k rows are compared with the baseline.",
             "", "![top-1 accuracy vs device-hours](cost_accuracy.png)"]
    for heading, protocols in sections:
        table = semi_table(runs) if len(protocols) == 2 else single_protocol_table(runs, *protocols)
        parts += ["", f"## {heading}", "", table, "", "### Published, not run here", "",
                  published_table(protocols)]
    parts += ["", "## Supervised ceiling on ImageNet-1k (published, not run here)", "",
              "What labels buy at a known cost: a run's own supervised ceiling is the "
              "`supervised` backbone (`eval.supervised: true`), the same backbone trained with "
              "labels on the same images, epochs and resolutions.", "",
              supervised_ceiling_table()]
    parts += ["", "## Notes", "", *_notes()]
    if runs.empty:
        parts += ["", "No runs recorded yet in runs.csv."]
    else:
        parts += ["", "## Provenance", "", _provenance(runs)]
    return "\n".join(parts) + "\n"
