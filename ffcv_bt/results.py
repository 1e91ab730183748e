"""runs.csv -> results/README.md (tables) and results/cost_accuracy.png (plot).

runs.csv is the source of truth and is only ever appended to, one row per evaluation
(several runs may append at once); the Markdown and the plot are generated from it, so
they can always be rebuilt: ``python -m ffcv_bt.results [--results-dir results]``.

Every table states the reference baseline (Barlow Twins, 1000 epochs on 16 V100) beside
our runs, with accuracy deltas in percentage points and cost in device-hours. Hours on
other hardware are never passed off as V100-hours: each cell that compares them names
both device types.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ffcv_bt.atomic_files import atomic_write, atomic_write_text

RUNS_COLUMNS = ["run_id", "recipe", "protocol", "backbone", "epochs", "top1", "top5",
                "best_top1", "pretrain_gpu_hours", "eval_gpu_hours", "device", "n_devices",
                "git_sha", "finished_at", "run_dir"]
PROTOCOLS = ("linear", "semi1", "semi10")
BACKBONES = ("pretrained", "random")
PROTOCOL_NAMES = {"linear": "linear probe", "semi1": "1% labels", "semi10": "10% labels"}

_ACCURACY_COLUMNS = ("top1", "top5")
_HOURS_COLUMNS = ("pretrain_gpu_hours", "eval_gpu_hours")
_REQUIRED_TEXT_COLUMNS = ("run_id", "recipe", "device")
_RECIPE_NAME = re.compile(r"[^\s/\\]+")  # a file stem: no spaces or folders
_MISSING = "—"


@dataclass(frozen=True)
class Reference:
    """A published result to compare against: accuracy per protocol and its cost."""

    name: str
    accuracy: dict  # protocol -> (top1, top5), percent
    pretrain_hours: float = 2688.0  # 16 V100 x ~7 days
    hardware: str = "V100"
    n_devices: int = 16
    epochs: int = 1000


PAPER = Reference("Barlow Twins paper", {"linear": (73.3, 91.0), "semi1": (55.0, 79.2),
                                          "semi10": (69.7, 89.3)})
RERUN = Reference("independent re-run", {"linear": (73.27, 91.09), "semi1": (55.09, 79.89),
                                          "semi10": (68.89, 88.97)})
REFERENCES = (PAPER, RERUN)
BASELINE = PAPER  # deltas and cost ratios are against this one


# ----------------------------------------------------------------------------- runs.csv

def _number(row: dict, key: str, low: float, high: float = math.inf) -> float:
    value = row[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"runs row key {key!r}: {value!r} is not a number") from None
    if not low <= number <= high:  # also rejects NaN
        raise ValueError(f"runs row key {key!r}: {value!r} is outside [{low}, {high}]")
    return number


def _integer(row: dict, key: str, low: int) -> int:
    number = _number(row, key, low)
    if number != int(number):
        raise ValueError(f"runs row key {key!r}: {row[key]!r} is not an integer")
    return int(number)


def check_run_row(row: dict) -> dict:
    """Validate one runs.csv row; return it with numbers parsed (text columns as str).

    Raises ValueError naming the offending key: missing or unknown columns, a protocol
    not in PROTOCOLS, a backbone not in BACKBONES, accuracies outside [0, 100], negative
    hours, a recipe that is not a rules/<recipe>.yaml name. ``best_top1`` may be empty.
    """
    missing = [key for key in RUNS_COLUMNS if key not in row]
    unknown = [key for key in row if key not in RUNS_COLUMNS]
    if missing:
        raise ValueError(f"runs row is missing key(s) {missing}")
    if unknown:
        raise ValueError(f"runs row has unknown key(s) {unknown}; expected {RUNS_COLUMNS}")
    clean = {key: "" if row[key] is None else str(row[key]) for key in RUNS_COLUMNS}
    if clean["protocol"] not in PROTOCOLS:
        raise ValueError(f"runs row key 'protocol': {row['protocol']!r} is not one of {PROTOCOLS}")
    if clean["backbone"] not in BACKBONES:
        raise ValueError(f"runs row key 'backbone': {row['backbone']!r} is not one of {BACKBONES}")
    for key in _REQUIRED_TEXT_COLUMNS:
        if not clean[key].strip():
            raise ValueError(f"runs row key {key!r} is empty")
    if not _RECIPE_NAME.fullmatch(clean["recipe"]) or clean["recipe"].endswith(".yaml"):
        raise ValueError(f"runs row key 'recipe': {row['recipe']!r} is not a recipe name "
                         f"(the <name> of rules/<name>.yaml)")
    for key in _ACCURACY_COLUMNS:
        clean[key] = _number(row, key, 0.0, 100.0)
    clean["best_top1"] = None if clean["best_top1"] == "" else _number(row, "best_top1", 0.0, 100.0)
    for key in _HOURS_COLUMNS:
        clean[key] = _number(row, key, 0.0)
    clean["epochs"] = _integer(row, "epochs", 0)
    clean["n_devices"] = _integer(row, "n_devices", 1)
    return clean


def _csv_line(values: list) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode("utf-8")


def append_run_row(csv_path: str | os.PathLike, row: dict) -> None:
    """Append one validated row to ``csv_path``, safely under concurrent writers.

    The file is never rewritten. An exclusive ``flock`` on the csv itself serialises
    writers, so the header is written exactly once (when the file is new or empty) and
    rows never interleave. A file whose header differs from RUNS_COLUMNS is refused.
    """
    csv_path = Path(csv_path)
    clean = check_run_row(row)
    line = _csv_line(["" if clean[key] is None else clean[key] for key in RUNS_COLUMNS])
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "ab+") as f:  # append mode: every write lands at the end
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.seek(0)
            header = f.readline().decode("utf-8")
            if not header:
                line = _csv_line(RUNS_COLUMNS) + line
            else:
                columns = next(csv.reader([header]))
                if columns != RUNS_COLUMNS:
                    raise ValueError(f"{csv_path}: header {columns} differs from RUNS_COLUMNS "
                                     f"{RUNS_COLUMNS}; refusing to append")
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a writer died mid-line: keep our row whole
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_runs(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Validated rows of ``csv_path`` (empty frame if missing/empty), latest row per
    (run_id, protocol, backbone): a re-run evaluation supersedes the earlier one."""
    csv_path = Path(csv_path)
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return pd.DataFrame(columns=RUNS_COLUMNS)
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    if list(raw.columns) != RUNS_COLUMNS:
        raise ValueError(f"{csv_path}: columns {list(raw.columns)} differ from {RUNS_COLUMNS}")
    rows = []
    for index, record in enumerate(raw.to_dict("records")):
        try:
            rows.append(check_run_row(record))
        except ValueError as error:
            raise ValueError(f"{csv_path} line {index + 2}: {error}") from None
    runs = pd.DataFrame(rows, columns=RUNS_COLUMNS)
    latest = runs.drop_duplicates(["run_id", "protocol", "backbone"], keep="last")
    return latest.reset_index(drop=True)


# ----------------------------------------------------------------------------- formatting

def format_accuracy(value: float | None) -> str:
    """Percent with 2 decimals; a dash when absent."""
    return _MISSING if value is None or pd.isna(value) else f"{value:.2f}"


def format_delta(value: float) -> str:
    """Signed percentage points with 2 decimals."""
    return f"{value:+.2f}"


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


def device_kind(device: str) -> str:
    """The device type without details: "cpu (Intel Xeon ...)" -> "cpu"."""
    return device.split(" (")[0].strip()


def is_v100(device: str) -> bool:
    return "v100" in device.lower()


def cost_ratio_cell(total_hours: float, devices: list[str]) -> str:
    """Our hours as a fraction of the baseline's V100-hours, naming our device type
    when it is not a V100 (then the two numbers are hours on different hardware)."""
    if total_hours <= 0:
        return _MISSING
    ratio = total_hours / BASELINE.pretrain_hours
    ratio_text = f"{ratio:.2e}" if ratio < 1e-3 else format_significant(ratio)
    cell = f"{ratio_text}x of {format_significant(BASELINE.pretrain_hours)} {BASELINE.hardware}-h"
    others = sorted({device_kind(d) for d in devices if not is_v100(d)})
    if others:
        cell += f" (hours on {', '.join(others)}, not {BASELINE.hardware}-hours)"
    return cell


def _text(value: str) -> str:
    """Make user text safe inside a Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _device_cell(rows: list[dict]) -> str:
    return " / ".join(dict.fromkeys(f"{r['n_devices']}x {_text(r['device'])}" for r in rows))


def _recipe_cell(recipe: str) -> str:
    return f"[{recipe}](../rules/{recipe}.yaml)"  # README.md lives in results/


def _backbone_cell(backbone: str) -> str:
    return "random (control)" if backbone == "random" else backbone


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tables

def _reference_cells(reference: Reference) -> tuple[str, str, str, str, str]:
    hours = format_significant(reference.pretrain_hours)
    is_baseline = reference is BASELINE
    return (f"**{reference.name}** (reference)" if is_baseline else f"{reference.name} (reference)",
            f"official, {reference.epochs} ep",
            f"{reference.n_devices}x {reference.hardware}",
            hours,
            f"{hours} + eval (not published)")


def _grouped(runs: pd.DataFrame, protocols: tuple[str, ...]) -> list[list[dict]]:
    """Rows of ``protocols`` grouped per (run_id, backbone), in order of first appearance."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in runs[runs["protocol"].isin(protocols)].to_dict("records"):
        groups.setdefault((row["run_id"], row["backbone"]), []).append(row)
    return list(groups.values())


LINEAR_HEADERS = ["run", "recipe", "backbone", "epochs", "device", "top-1", "top-5",
                  "best top-1", "Δ top-1 vs paper (pp)", "pretrain GPU-h",
                  "total GPU-h (pretrain + eval)", "cost vs baseline"]


def linear_table(runs: pd.DataFrame) -> str:
    """Markdown table of the linear probe: the references, then one row per run/backbone."""
    baseline_top1 = BASELINE.accuracy["linear"][0]
    rows = []
    for reference in REFERENCES:
        name, recipe, device, pretrain, total = _reference_cells(reference)
        top1, top5 = reference.accuracy["linear"]
        delta = _MISSING if reference is BASELINE else format_delta(top1 - baseline_top1)
        cost = "baseline" if reference is BASELINE else "same as baseline"
        rows.append([name, recipe, "pretrained", str(reference.epochs), device,
                     format_accuracy(top1), format_accuracy(top5), _MISSING, delta,
                     pretrain, total, cost])
    for (row,) in _grouped(runs, ("linear",)):
        total = row["pretrain_gpu_hours"] + row["eval_gpu_hours"]
        rows.append([f"`{_text(row['run_id'])}`", _recipe_cell(row["recipe"]),
                     _backbone_cell(row["backbone"]), str(row["epochs"]), _device_cell([row]),
                     format_accuracy(row["top1"]), format_accuracy(row["top5"]),
                     format_accuracy(row["best_top1"]), format_delta(row["top1"] - baseline_top1),
                     format_significant(row["pretrain_gpu_hours"]), format_significant(total),
                     cost_ratio_cell(total, [row["device"]])])
    return _markdown_table(LINEAR_HEADERS, rows)


SEMI_HEADERS = ["run", "recipe", "backbone", "epochs", "device", "1% top-1", "1% top-5",
                "Δ 1% top-1 (pp)", "10% top-1", "10% top-5", "Δ 10% top-1 (pp)",
                "pretrain GPU-h", "total GPU-h (pretrain + semi evals)", "cost vs baseline"]


def _semi_cells(top1: float | None, top5: float | None, baseline_top1: float,
                show_delta: bool = True) -> list[str]:
    delta = format_delta(top1 - baseline_top1) if top1 is not None and show_delta else _MISSING
    return [format_accuracy(top1), format_accuracy(top5), delta]


def semi_table(runs: pd.DataFrame) -> str:
    """Markdown table of semi-supervised fine-tuning: 1% and 10% side by side per run."""
    base1, base10 = BASELINE.accuracy["semi1"][0], BASELINE.accuracy["semi10"][0]
    rows = []
    for reference in REFERENCES:
        name, recipe, device, pretrain, total = _reference_cells(reference)
        show_delta = reference is not BASELINE
        cost = "same as baseline" if show_delta else "baseline"
        rows.append([name, recipe, "pretrained", str(reference.epochs), device,
                     *_semi_cells(*reference.accuracy["semi1"], base1, show_delta),
                     *_semi_cells(*reference.accuracy["semi10"], base10, show_delta),
                     pretrain, total, cost])
    for group in _grouped(runs, ("semi1", "semi10")):
        by_protocol = {row["protocol"]: row for row in group}
        first = group[0]
        semi1, semi10 = by_protocol.get("semi1", {}), by_protocol.get("semi10", {})
        total = first["pretrain_gpu_hours"] + sum(row["eval_gpu_hours"] for row in group)
        rows.append([f"`{_text(first['run_id'])}`", _recipe_cell(first["recipe"]),
                     _backbone_cell(first["backbone"]), str(first["epochs"]), _device_cell(group),
                     *_semi_cells(semi1.get("top1"), semi1.get("top5"), base1),
                     *_semi_cells(semi10.get("top1"), semi10.get("top5"), base10),
                     format_significant(first["pretrain_gpu_hours"]), format_significant(total),
                     cost_ratio_cell(total, [row["device"] for row in group])])
    return _markdown_table(SEMI_HEADERS, rows)


def _provenance(runs: pd.DataFrame) -> str:
    lines = []
    for run_id, rows in runs.groupby("run_id", sort=False):
        last = rows.iloc[-1]
        lines.append(f"- `{_text(run_id)}`: commit `{_text(last['git_sha']) or 'unknown'}`, "
                     f"finished {_text(last['finished_at']) or 'unknown'}, "
                     f"run dir `{_text(last['run_dir']) or 'unknown'}`")
    return "\n".join(lines)


def render_readme(runs: pd.DataFrame) -> str:
    """The whole results/README.md text for ``runs`` (as returned by read_runs)."""
    baseline_hours = format_significant(BASELINE.pretrain_hours)
    parts = [
        "# Results",
        "",
        "_Generated by `python -m ffcv_bt.results` from `runs.csv`: do not edit by hand._",
        "",
        f"Baseline: Barlow Twins ResNet-50 (arXiv 2103.03230), {BASELINE.epochs} epochs of "
        f"pretraining on {BASELINE.n_devices} {BASELINE.hardware} for ~7 days = "
        f"~{baseline_hours} {BASELINE.hardware}-hours; its evaluation cost is not published. "
        f"Δ columns are percentage points against the paper row. Each run is evaluated on "
        f"its recipe's data set (the `demo` recipe: Fashion-MNIST on a CPU, a check of the "
        f"pipeline, not an ImageNet result).",
        "",
        "![top-1 accuracy vs device-hours](cost_accuracy.png)",
        "",
        "## Linear probe (frozen backbone, 100% labels)",
        "",
        linear_table(runs),
        "",
        "## Semi-supervised fine-tuning (1% and 10% labels)",
        "",
        semi_table(runs),
        "",
        "## Notes",
        "",
        "- GPU-h are device-hours: devices x wall-clock hours of the timed stages, on the "
        "device named in the row. Hours on other hardware are **not V100-hours**: a cost "
        f"cell such as \"0.01x of {baseline_hours} V100-h (hours on cpu, not V100-hours)\" "
        "compares hours on the two device types it names.",
        "- Cost vs baseline = our total hours / the baseline's pretraining hours (the "
        "baseline's evaluation hours are unknown, which flatters the baseline).",
        "- top-1/top-5 are from the final epoch; best top-1 (best epoch) is shown for "
        "reference only. A random (control) row evaluates a randomly initialised backbone.",
        "- When an evaluation was recorded more than once, the last row appended to "
        "runs.csv is shown.",
    ]
    if runs.empty:
        parts += ["", "No runs recorded yet in runs.csv."]
    else:
        parts += ["", "## Provenance", "", _provenance(runs)]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- plot

_MARKERS = {"linear": "o", "semi1": "s", "semi10": "^"}


def plot_cost_accuracy(runs: pd.DataFrame, png_path: str | os.PathLike) -> Path:
    """Top-1 vs device-hours (log x): marker shape per protocol, filled = pretrained,
    hollow = random control, colour per device type, reference points labelled."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(9, 6), dpi=120)
    ax = fig.subplots()
    # The re-run has the paper's cost: draw it smaller, on top, so both stay visible.
    reference_colors = {PAPER.name: "black", RERUN.name: "darkgray"}
    reference_sizes = {PAPER.name: 12, RERUN.name: 6}
    for reference in REFERENCES:
        for protocol, (top1, _) in reference.accuracy.items():
            ax.plot([reference.pretrain_hours], [top1], marker=_MARKERS[protocol],
                    markersize=reference_sizes[reference.name], linestyle="none",
                    color=reference_colors[reference.name], zorder=3)
        if reference is BASELINE:
            for protocol, (top1, _) in reference.accuracy.items():
                ax.annotate(f"{reference.name}, {PROTOCOL_NAMES[protocol]}: {top1:.1f}",
                            (reference.pretrain_hours, top1), textcoords="offset points",
                            xytext=(-10, 8), ha="right", fontsize=8)

    kinds = list(dict.fromkeys(device_kind(d) for d in runs["device"]))
    palette = [f"C{i}" for i in range(10)]
    colors = {kind: palette[i % len(palette)] for i, kind in enumerate(kinds)}
    skipped = 0
    for row in runs.to_dict("records"):
        hours = row["pretrain_gpu_hours"] + row["eval_gpu_hours"]
        if hours <= 0:
            skipped += 1
            continue
        color = colors[device_kind(row["device"])]
        ax.plot([hours], [row["top1"]], marker=_MARKERS[row["protocol"]], markersize=8,
                linestyle="none", color=color, markeredgecolor=color, markeredgewidth=1.5,
                markerfacecolor=color if row["backbone"] == "pretrained" else "none")

    ax.set_xscale("log")
    ours = ", ".join(kinds) if kinds else "no runs yet"
    ax.set_xlabel(f"device-hours, pretraining + that evaluation (log scale)\n"
                  f"reference: {BASELINE.hardware}-hours of pretraining; our runs: hours on {ours}")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Barlow Twins: top-1 vs cost (reference: ImageNet; each run: its recipe's data)")
    ax.grid(True, which="both", alpha=0.3)

    def handle(label: str, marker: str = "o", color: str = "tab:gray",
               filled: bool = True) -> Line2D:
        return Line2D([], [], marker=marker, linestyle="none", color=color, label=label,
                      markerfacecolor=color if filled else "none")

    handles = [handle(PROTOCOL_NAMES[p], m) for p, m in _MARKERS.items()]
    handles += [handle("pretrained backbone"), handle("random-init control", filled=False)]
    handles += [handle(f"{r.name} ({r.n_devices}x {r.hardware})", color=reference_colors[r.name])
                for r in REFERENCES]
    handles += [handle(f"ours on {kind}", color=colors[kind]) for kind in kinds]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    if skipped:
        fig.text(0.01, 0.01, f"{skipped} row(s) with 0 hours not shown (log axis)", fontsize=7)
    fig.tight_layout()
    return atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))


# ----------------------------------------------------------------------------- entry point

def generate(results_dir: str | os.PathLike) -> None:
    """Regenerate results_dir/README.md and results_dir/cost_accuracy.png from runs.csv."""
    results_dir = Path(results_dir)
    runs = read_runs(results_dir / "runs.csv")
    atomic_write_text(results_dir / "README.md", render_readme(runs))
    plot_cost_accuracy(runs, results_dir / "cost_accuracy.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Regenerate results/README.md and results/cost_accuracy.png from runs.csv.")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="folder holding runs.csv; README.md and cost_accuracy.png go there")
    args = parser.parse_args(argv)
    generate(args.results_dir)
    print(f"wrote {args.results_dir / 'README.md'} and {args.results_dir / 'cost_accuracy.png'} "
          f"from {args.results_dir / 'runs.csv'}")


if __name__ == "__main__":
    main()
