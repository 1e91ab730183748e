"""The cost-accuracy frontier of a sweep, from results/runs.csv only.

``python -m ffcv_bt.reporting.frontier --sweep demo-frontier`` writes ``results/<sweep>.md`` (default
``results/frontier.md`` for the demo sweep) and a plot beside it: one row per configuration
(lever x epochs) with mean ± sample std and n over seeds per protocol, the measured
pretraining device-hours, the noise-free compute (epochs-equivalent at the maximum
resolution x train images, from the ``pretrain_epoch_equivalents`` column) and whether the
configuration is on the Pareto frontier of accuracy vs compute.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ffcv_bt.reporting.aggregate import Stat, code_revision
from ffcv_bt.reporting.markdown import format_stat
from ffcv_bt.reporting.runs_csv import read_runs

PROTOCOLS = ("knn", "linear")


def pareto_front(costs: list[float], values: list[float]) -> list[bool]:
    """True where no other point costs no more and scores no less, and is strictly better
    in one of the two (equal points are both on the frontier)."""
    out = []
    for c, v in zip(costs, values):
        dominated = any(c2 <= c and v2 >= v and (c2 < c or v2 > v)
                        for c2, v2 in zip(costs, values))
        out.append(not dominated)
    return out


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


def markdown(table: pd.DataFrame, floor: dict[tuple[str, str, str], Stat], sweep: str) -> str:
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
    lines += [f"Machine: {devices}.", "",
              "| lever | epochs | epoch-eq. at max res | compute (M images) | pretrain device-h "
              "| kNN top-1 | linear top-1 | frontier kNN | frontier linear | supervised ceiling "
              "kNN | supervised ceiling linear |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]

    def flags(r, protocol: str) -> str:
        marks = [m for m, key in (("C", f"front_{protocol}"), ("H", f"front_{protocol}_hours"))
                 if r.get(key)]
        return " ".join(marks)

    def stat_cell(stat: Stat | None) -> str:
        return format_stat(stat, missing="n/a") if stat else "—"

    for _, r in table.iterrows():
        cells = [r["lever"], str(r["epochs"]), f"{r['epoch_equivalents']:.2f}",
                 f"{r['compute_images'] / 1e6:.3f}", f"{r['pretrain_hours']:.4f}",
                 stat_cell(r["knn"]), stat_cell(r["linear"]), flags(r, "knn"), flags(r, "linear"),
                 stat_cell(r.get("supervised_knn")), stat_cell(r.get("supervised_linear"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Supervised ceiling: the same backbone trained with labels on the same images "
              "for the same epochs and resolutions (ffcv_bt/train/supervised.py), evaluated "
              "with the same protocols.", "",
              "Controls (per lever that ran them; the random-init backbone has torchvision's "
              "standard initialisation, except in rows recorded before 2026-12-03, whose control "
              "was the zero-init pretraining start, a near-constant network):", ""]
    for (lever, protocol, backbone), stat in sorted(floor.items()):
        label = "raw pixels (the floor)" if backbone == "pixels" else f"{backbone}-init backbone"
        lines.append(f"- {lever}: {protocol}, {label}: {format_stat(stat, missing='n/a')}")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, floor: dict[tuple[str, str, str], Stat], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [("knn", "compute_images", "compute: images at max resolution"),
              ("linear", "compute_images", "compute: images at max resolution"),
              ("knn", "pretrain_hours", "measured pretraining device-hours")]
    for ax, (protocol, cost, xlabel) in zip(axes, panels):
        for lever, group in table.groupby("lever", sort=False):
            have = group[group[protocol].notna()].sort_values(cost)
            line = ax.errorbar(have[cost], [s.mean for s in have[protocol]],
                        yerr=[s.std or 0 for s in have[protocol]], marker="o", capsize=3,
                        label=lever)
            key = f"supervised_{protocol}"
            sup = group[group[key].notna()].sort_values(cost) if key in group else group.iloc[:0]
            if not sup.empty:
                ax.plot(sup[cost], [s.mean for s in sup[key]], marker="x", linestyle=":",
                        color=line[0].get_color(), label=f"{lever}: supervised ceiling")
            for backbone, style, name in (("random", "--", "random-init control"),
                                          ("pixels", "-.", "raw-pixel kNN floor")):
                if (lever, protocol, backbone) in floor:
                    ax.axhline(floor[(lever, protocol, backbone)].mean, color=line[0].get_color(),
                               linestyle=style, alpha=0.7, label=f"{lever}: {name}")
        front = table[table[f"front_{protocol}"].astype(bool)].sort_values(cost)
        if cost == "compute_images" and not front.empty:
            ax.step(front[cost], [s.mean for s in front[protocol]], where="post", color="black",
                    linestyle=":", label="Pareto frontier")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{protocol} top-1 (%), mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def generate(runs_csv: str | Path, sweep: str, out_md: str | Path) -> pd.DataFrame:
    """Write the sweep's table (``out_md``) and plot (same stem, .png); return the table."""
    runs = read_runs(runs_csv)
    table = configurations(runs, sweep)
    floor = controls(runs, sweep)
    out_md = Path(out_md)
    out_md.write_text(markdown(table, floor, sweep))
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
    generate(args.runs, args.sweep, out)
    print(f"wrote {out} and {Path(out).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
