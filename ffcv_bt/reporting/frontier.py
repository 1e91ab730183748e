"""The cost-accuracy frontier of a sweep, from results/runs.csv only.

``python -m ffcv_bt.reporting.frontier --sweep demo-frontier`` writes ``results/<sweep>.md`` (default
``results/frontier.md`` for the demo sweep) and a plot beside it: one row per configuration
(lever x epochs) with mean ± sample std and n over seeds per protocol, the measured
pretraining device-hours, the noise-free compute (epochs-equivalent at the maximum
resolution x train images, from the ``pretrain_epoch_equivalents`` column) and whether the
configuration is on the Pareto frontier of accuracy vs compute; then what pretraining beats
at each point (the random-init control, the raw-pixel floor, the supervised ceiling: each
difference with its margin in standard deviations) and where it first crosses each.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from ffcv_bt.config import read_yaml
from ffcv_bt.paths import RULES_DIR
from ffcv_bt.reporting.aggregate import Stat, code_revision
from ffcv_bt.reporting.markdown import format_stat
from ffcv_bt.reporting.runs_csv import read_runs

PROTOCOLS = ("knn", "linear", "logreg")
PROTOCOL_NAMES = {"knn": "kNN", "linear": "linear", "logreg": "logreg"}
CLEAR_MARGIN = 3.0  # "beats" = mean difference above 3 standard deviations (see margin)


def pareto_front(costs: list[float], values: list[float]) -> list[bool]:
    """True where no other point costs no more and scores no less, and is strictly better
    in one of the two (equal points are both on the frontier)."""
    out = []
    for c, v in zip(costs, values):
        dominated = any(c2 <= c and v2 >= v and (c2 < c or v2 > v)
                        for c2, v2 in zip(costs, values))
        out.append(not dominated)
    return out


def margin(ours: Stat, other: Stat) -> float | None:
    """How far ``ours`` is above ``other`` in standard deviations: the mean difference over
    the larger of the two sample stds (the conservative choice; a raw-pixel floor has none,
    so ours counts alone). None without any std (n = 1 on both sides)."""
    spreads = [s.std for s in (ours, other) if s.std is not None]
    spread = max(spreads) if spreads else None
    if spread is None:
        return None
    if spread == 0:
        return math.copysign(math.inf, ours.mean - other.mean) if ours.mean != other.mean else 0.0
    return (ours.mean - other.mean) / spread


def _labelled(runs: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The sweep's rows with a ``label``: the lever, or "lever @ <commit>" where a lever has
    rows from several code revisions (a lever re-run after a change is another configuration,
    as in the results tables)."""
    rows = runs[runs["recipe"].str.startswith(f"{sweep}.")].copy()
    revision = rows["git_sha"].map(code_revision)
    lever = rows["recipe"].str.split(".", n=1).str[1]
    several = revision.groupby(lever).transform("nunique") > 1
    rows["label"] = lever.where(~several, lever + " @ " + revision)
    return rows


def configurations(runs: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """One row per (lever, epochs) of ``sweep``'s pretrained rows: per protocol a Stat,
    the mean pretraining device-hours, the compute and the frontier flags."""
    in_sweep = _labelled(runs, sweep)
    ours = in_sweep[in_sweep["backbone"] == "pretrained"]
    ceiling = in_sweep[in_sweep["backbone"] == "supervised"]
    rows = []
    for (recipe, epochs), group in ours.groupby(["label", "epochs"], sort=False):
        pretrain = group.drop_duplicates("run_id")
        equivalents = {float(x) for x in pretrain["pretrain_epoch_equivalents"] if x is not None}
        row = {"lever": recipe, "epochs": int(epochs),
               "epoch_equivalents": max(equivalents) if equivalents else float("nan"),
               "train_images": int(pretrain["dataset_train_images"].iloc[0] or 0),
               "pretrain_hours": float(pretrain["pretrain_gpu_hours"].mean()),
               "device": ", ".join(sorted(set(pretrain["device"])))}
        row["compute_images"] = row["epoch_equivalents"] * row["train_images"]
        for protocol in PROTOCOLS:
            values = [float(v) for v in group[group["protocol"] == protocol]["top1"]]
            row[protocol] = Stat.of(values) if values else None
            same = ceiling[(ceiling["label"] == recipe) & (ceiling["epochs"] == epochs)
                           & (ceiling["protocol"] == protocol)]
            row[f"supervised_{protocol}"] = Stat.of([float(v) for v in same["top1"]]) if len(same) else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values(["lever", "epochs"], kind="stable").reset_index(drop=True)
    for protocol in PROTOCOLS:
        have = table[protocol].notna()
        means = [s.mean for s in table.loc[have, protocol]]
        table[f"front_{protocol}"] = False
        table[f"front_{protocol}_hours"] = False
        if not have.any():  # no row of this protocol in the sweep (e.g. kNN only)
            continue
        table.loc[have, f"front_{protocol}"] = pareto_front(list(table.loc[have, "compute_images"]), means)
        table.loc[have, f"front_{protocol}_hours"] = pareto_front(list(table.loc[have, "pretrain_hours"]),
                                                                  means)
    return table


def controls(runs: pd.DataFrame, sweep: str) -> dict[tuple[str, str, str], Stat]:
    """(lever, protocol, backbone) -> Stat for the sweep's random-init and raw-pixel rows,
    per lever: levers that change the network or resolution have their own control."""
    in_sweep = _labelled(runs, sweep)
    rows = in_sweep[in_sweep["backbone"].isin(["random", "pixels"])]
    return {(label, p, b): Stat.of([float(v) for v in g["top1"]])
            for (label, p, b), g in rows.groupby(["label", "protocol", "backbone"], sort=False)}


def _present(table: pd.DataFrame) -> list[str]:
    """The protocols with at least one value in ``table`` (its columns follow them)."""
    return [p for p in PROTOCOLS if p in table and table[p].notna().any()]


def _stat_cell(stat: Stat | None) -> str:
    return format_stat(stat, missing="n/a") if stat else "—"


def _configuration_table(table: pd.DataFrame, protocols: list[str]) -> list[str]:
    names = [PROTOCOL_NAMES[p] for p in protocols]
    header = (["lever", "epochs", "epoch-eq. at max res", "compute (M images)", "pretrain device-h"]
              + [f"{n} top-1" for n in names] + [f"frontier {n}" for n in names]
              + [f"supervised ceiling {n}" for n in names])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        flags = [" ".join(m for m, key in (("C", f"front_{p}"), ("H", f"front_{p}_hours")) if r.get(key))
                 for p in protocols]
        cells = ([r["lever"], str(r["epochs"]), f"{r['epoch_equivalents']:.2f}",
                  f"{r['compute_images'] / 1e6:.3f}", f"{r['pretrain_hours']:.4f}"]
                 + [_stat_cell(r[p]) for p in protocols] + flags
                 + [_stat_cell(r.get(f"supervised_{p}")) for p in protocols])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _difference_cell(ours: Stat, other: Stat | None) -> str:
    """``+3.53 (1.8 sd)``: the mean difference and its margin in standard deviations."""
    if other is None:
        return "—"
    sds = margin(ours, other)
    shown = "n/a" if sds is None else ("inf" if math.isinf(sds) else f"{sds:.1f}")
    return f"{ours.mean - other.mean:+.2f} ({shown} sd)"


def comparisons(table: pd.DataFrame, floor: dict[tuple[str, str, str], Stat]) -> list[dict]:
    """Per configuration and protocol: pretrained vs the lever's random-init control, its
    raw-pixel floor and the point's supervised ceiling (None where one was not measured).
    A lever without controls of its own (``controls: first``: they ran once, with another
    lever on the same network) is compared with the sweep's, when only one lever has them."""
    owners = {lever for lever, _, _ in floor}
    shared = {(p, b): stat for (_, p, b), stat in floor.items()} if len(owners) == 1 else {}
    out = []
    protocols = _present(table)
    for _, r in table.iterrows():
        for p in protocols:
            ours = r[p]
            if ours is None:
                continue
            ceiling = r.get(f"supervised_{p}")
            out.append({"lever": r["lever"], "epochs": int(r["epochs"]), "protocol": p, "ours": ours,
                        "control": floor.get((r["lever"], p, "random"), shared.get((p, "random"))),
                        "pixels": floor.get((r["lever"], p, "pixels"), shared.get((p, "pixels"))),
                        "ceiling": ceiling})
    return out


def crossings(compared: list[dict]) -> list[str]:
    """Per lever and protocol, the fewest epochs at which pretraining is clearly (> 3 sd)
    above the control and the pixel floor, and at which it reaches the supervised ceiling."""
    lines = []
    keys = dict.fromkeys((c["lever"], c["protocol"]) for c in compared)
    for lever, protocol in keys:
        points = sorted((c for c in compared if (c["lever"], c["protocol"]) == (lever, protocol)),
                        key=lambda c: c["epochs"])
        last = points[-1]["epochs"]
        parts = []
        for what, key in (("the random-init control", "control"), ("the raw-pixel floor", "pixels")):
            if all(c[key] is None for c in points):
                continue
            clear = [c["epochs"] for c in points if c[key] is not None
                     and (margin(c["ours"], c[key]) or 0) > CLEAR_MARGIN]
            parts.append(f"above {what} by > {CLEAR_MARGIN:g} sd "
                         + (f"from {clear[0]} epochs" if clear else f"at no point up to {last} epochs"))
        if any(c["ceiling"] is not None for c in points):
            level = [c["epochs"] for c in points if c["ceiling"] is not None
                     and c["ours"].mean >= c["ceiling"].mean]
            parts.append("at or above the supervised ceiling "
                         + (f"from {level[0]} epochs" if level else f"at no point up to {last} epochs"))
        if parts:
            lines.append(f"- {lever}, {PROTOCOL_NAMES[protocol]}: " + "; ".join(parts) + ".")
    return lines


def markdown(table: pd.DataFrame, floor: dict[tuple[str, str, str], Stat], sweep: str,
             earlier: pd.DataFrame | None = None) -> str:
    """The sweep's tables: the configurations (``earlier``: those of levers no longer in the
    sweep file, apart), what pretraining beats at each point, and the controls."""
    lines = [f"# Frontier of sweep `{sweep}` (generated from runs.csv by ffcv_bt/reporting/frontier.py)", "",
             "Top-1 mean ± sample std over seeds (n). Compute: epochs-equivalent at the "
             "maximum resolution (sum over epochs of (res / max_res)^2) x train images, free "
             "of timing noise; device-hours are measured per run (mean over seeds) and "
             "inflated by anything else running on the machine. Frontier: no configuration "
             "has less or equal cost and a higher or equal mean; marked against compute (C) "
             "and against measured device-hours (H). Compute counts epochs at each run's own "
             "maximum resolution and architecture: compare it across levers only where those "
             "are the same.", ""]
    devices = ", ".join(sorted(set(table["device"]))) if not table.empty else "none"
    lines += [f"Machine: {devices}.", ""]
    lines += _configuration_table(table, _present(table))
    lines += ["", "Supervised ceiling: the same backbone trained with labels on the same images "
              "for the same epochs and resolutions (ffcv_bt/train/supervised.py), evaluated "
              "with the same protocols.", ""]
    compared = comparisons(table, floor)
    if any(c["control"] or c["pixels"] or c["ceiling"] for c in compared):
        lines += ["## What pretraining beats", "",
                  "Pretrained minus each baseline, with the margin in standard deviations (the "
                  "difference over the larger of the two sample stds; the raw-pixel floor has "
                  "none, so the pretrained std counts), and the pretrained mean as a percentage "
                  "of the supervised ceiling's.", "",
                  "| lever | epochs | protocol | pretrained | vs random-init control "
                  "| vs raw pixels | of supervised ceiling |", "|---|---|---|---|---|---|---|"]
        for c in compared:
            share = f"{100 * c['ours'].mean / c['ceiling'].mean:.1f}%" if c["ceiling"] else "—"
            lines.append(f"| {c['lever']} | {c['epochs']} | {PROTOCOL_NAMES[c['protocol']]} "
                         f"| {_stat_cell(c['ours'])} | {_difference_cell(c['ours'], c['control'])} "
                         f"| {_difference_cell(c['ours'], c['pixels'])} | {share} |")
        lines += ["", "Crossings:", ""] + crossings(compared) + [""]
    lines += ["Controls (per lever that ran them; the random-init backbone has torchvision's "
              "standard initialisation, except in rows recorded before 2026-12-03, whose control "
              "was the zero-init pretraining start, a near-constant network):", ""]
    for (lever, protocol, backbone), stat in sorted(floor.items()):
        label = "raw pixels (the floor)" if backbone == "pixels" else f"{backbone}-init backbone"
        lines.append(f"- {lever}: {protocol}, {label}: {format_stat(stat, missing='n/a')}")
    if earlier is not None and not earlier.empty:
        lines += ["", "## Earlier configurations", "",
                  "Levers this sweep file no longer lists (kept in runs.csv under their code "
                  "revisions; docs/demo.md says what changed).", ""]
        lines += _configuration_table(earlier, _present(earlier))
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, floor: dict[tuple[str, str, str], Stat], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, "compute_images", "compute: images at max resolution") for p in _present(table)]
    panels.append((panels[0][0], "pretrain_hours", "measured pretraining device-hours"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.8))
    for ax, (protocol, cost, xlabel) in zip(axes, panels):
        for lever, group in table.groupby("lever", sort=False):
            have = group[group[protocol].notna()].sort_values(cost)
            line = ax.errorbar(have[cost], [s.mean for s in have[protocol]],
                               yerr=[s.std or 0 for s in have[protocol]], marker="o", capsize=3,
                               label=f"{lever}: pretrained")
            key = f"supervised_{protocol}"
            sup = group[group[key].notna()].sort_values(cost) if key in group else group.iloc[:0]
            if not sup.empty:
                ax.errorbar(sup[cost], [s.mean for s in sup[key]], yerr=[s.std or 0 for s in sup[key]],
                            marker="x", linestyle=":", capsize=3, color=line[0].get_color(),
                            label=f"{lever}: supervised ceiling")
            for backbone, style, name in (("random", "--", "random-init control"),
                                          ("pixels", "-.", "raw pixels")):
                if (lever, protocol, backbone) in floor:
                    stat = floor[(lever, protocol, backbone)]
                    ax.axhline(stat.mean, color=line[0].get_color(), linestyle=style, alpha=0.7,
                               label=f"{lever}: {name}")
                    if stat.std:
                        ax.axhspan(stat.mean - stat.std, stat.mean + stat.std,
                                   color=line[0].get_color(), alpha=0.08)
        front = table[table[f"front_{protocol}"].astype(bool)].sort_values(cost)
        if cost == "compute_images" and not front.empty:
            ax.step(front[cost], [s.mean for s in front[protocol]], where="post", color="black",
                    linestyle=":", label="Pareto frontier")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{PROTOCOL_NAMES[protocol]} top-1 (%), mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def generate(runs_csv: str | Path, sweep: str, out_md: str | Path,
             levers: list[str] | None = None) -> pd.DataFrame:
    """Write the sweep's table (``out_md``) and plot (same stem, .png); return the table.
    With ``levers`` (the sweep file's), other levers' rows go to an "earlier" table and
    stay out of the plot and the comparisons."""
    runs = read_runs(runs_csv)
    table = configurations(runs, sweep)
    floor = controls(runs, sweep)
    earlier = None
    if levers is not None and not table.empty:
        current = table["lever"].str.split(" @ ").str[0].isin(levers)
        table, earlier = table[current].reset_index(drop=True), table[~current].reset_index(drop=True)
        floor = {k: v for k, v in floor.items() if k[0].split(" @ ")[0] in levers}
    out_md = Path(out_md)
    out_md.write_text(markdown(table, floor, sweep, earlier))
    if not table.empty:
        plot(table, floor, out_md.with_suffix(".png"))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tables and plot of a sweep's frontier.")
    parser.add_argument("--sweep", default="demo-frontier")
    parser.add_argument("--runs", default="results/runs.csv")
    parser.add_argument("--out", default=None, help="default: results/frontier.md for "
                        "demo-frontier, else results/<sweep>.md")
    args = parser.parse_args(argv)
    out = args.out or ("results/frontier.md" if args.sweep == "demo-frontier"
                       else f"results/{args.sweep}.md")
    sweep_file = RULES_DIR / "sweeps" / f"{args.sweep}.yaml"
    levers = list(read_yaml(sweep_file, "sweep").get("levers") or {}) if sweep_file.is_file() else None
    generate(args.runs, args.sweep, out, levers)
    print(f"wrote {out} and {Path(out).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
