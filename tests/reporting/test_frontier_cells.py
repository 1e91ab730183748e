"""Every cell of a sweep's frontier table from a hand-made runs.csv whose answer is worked
out by hand below: which rows enter a configuration, the mean, the sample std (ddof=1) and n,
the mean pretraining hours per run, and which axis each Pareto mark uses (C: compute,
H: measured hours)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from ffcv_bt.reporting.frontier import configurations, controls, markdown
from ffcv_bt.reporting.runs_csv import append_run_row, read_runs

# (lever, epochs) -> epoch-equivalents; train images 1000, so compute = 1000 x eq
EQ = {("a", 2): 2.0, ("a", 4): 4.0, ("b", 2): 1.0}
# (lever, epochs) -> per seed: (pretrain hours, kNN top-1, linear top-1 or None)
SEEDS = {
    ("a", 2): [(0.05, 60.0, 50.0), (0.06, 62.0, 52.0), (0.07, 67.0, 54.0)],
    ("a", 4): [(0.08, 69.0, 57.0), (0.09, 70.0, 58.0), (0.10, 71.0, 59.0)],
    ("b", 2): [(0.11, 64.0, 50.0), (0.13, 66.0, None)],  # seed 1's linear probe never ran
}


def _row(lever: str, epochs: int, seed: int, protocol: str, backbone: str, top1: float,
         hours: float = 0.0, recipe: str | None = None, sha: str = "abc1234") -> dict:
    trained = backbone in ("pretrained", "supervised")
    run_id = f"{lever}-e{epochs}-seed-{seed}"
    return {"run_id": run_id, "recipe": recipe or f"sw.{lever}", "dataset": "toy",
            "dataset_classes": 10, "dataset_train_images": 1000, "seed": seed,
            "protocol": protocol, "backbone": backbone, "epochs": epochs if trained else 0,
            "top1": top1, "top5": 99.0, "best_top1": top1,
            "pretrain_gpu_hours": hours if trained else 0.0,
            "pretrain_epoch_equivalents": EQ[lever, epochs] if trained else 0.0,
            "eval_gpu_hours": 0.001, "device": "cpu (test)", "n_devices": 1, "git_sha": sha,
            "finished_at": "", "run_dir": f"/nonexistent/{run_id}"}


@pytest.fixture
def runs(tmp_path: Path):
    csv = tmp_path / "runs.csv"
    # an earlier kNN row of a-e2 seed 0, superseded by the re-run below (last row counts)
    append_run_row(csv, _row("a", 2, 0, "knn", "pretrained", 10.0, 0.9))
    for (lever, epochs), seeds in SEEDS.items():
        for seed, (hours, knn, linear) in enumerate(seeds):
            append_run_row(csv, _row(lever, epochs, seed, "knn", "pretrained", knn, hours))
            if linear is not None:
                append_run_row(csv, _row(lever, epochs, seed, "linear", "pretrained", linear, hours))
    # controls with each lever's first point (two networks: two controls, two floors)
    for seed, value in enumerate([18.0, 20.0]):
        append_run_row(csv, _row("a", 2, seed, "knn", "random", value))
        append_run_row(csv, _row("a", 2, seed, "knn", "pixels", 80.0))
        append_run_row(csv, _row("a", 2, seed, "linear", "random", 10.0 + 2 * seed))
    append_run_row(csv, _row("b", 2, 0, "knn", "random", 30.0))
    append_run_row(csv, _row("b", 2, 0, "knn", "pixels", 70.0))
    # the supervised ceiling of a-e2 (its own pretraining hours must not enter ours)
    for seed, value in enumerate([75.0, 77.0]):
        append_run_row(csv, _row("a", 2, seed, "knn", "supervised", value, hours=0.5))
    # rows of other recipes: another sweep whose name starts alike, a plain run
    append_run_row(csv, _row("a", 2, 5, "knn", "pretrained", 99.0, 0.01, recipe="sw2.a"))
    append_run_row(csv, _row("a", 2, 6, "knn", "pretrained", 98.0, 0.01, recipe="swa"))
    append_run_row(csv, _row("a", 2, 7, "knn", "pretrained", 97.0, 0.01, recipe="demo"))
    return read_runs(csv)


def test_statistics_of_each_configuration(runs):
    table = configurations(runs, "sw").set_index(["lever", "epochs"])
    assert list(table.index) == [("a", 2), ("a", 4), ("b", 2)]
    # by hand: a-e2 kNN 60, 62, 67: mean 63, deviations -3, -1, 4, sum of squares 26,
    # sample variance 26 / 2 = 13 (population 26 / 3 would give 2.94)
    knn = {k: (s.mean, s.std, s.n) for k, s in table["knn"].items()}
    assert knn[("a", 2)] == pytest.approx((63.0, math.sqrt(13), 3))
    assert knn[("a", 4)] == pytest.approx((70.0, 1.0, 3))
    assert knn[("b", 2)] == pytest.approx((65.0, math.sqrt(2), 2))
    linear = {k: (s.mean, s.std, s.n) for k, s in table["linear"].items()}
    assert linear[("a", 2)] == pytest.approx((52.0, 2.0, 3))
    assert linear[("a", 4)] == pytest.approx((58.0, 1.0, 3))
    assert linear[("b", 2)] == (50.0, None, 1)
    # hours: mean over runs (seeds), each run once however many protocols it has:
    # b-e2 (0.11 + 0.13) / 2 = 0.12, not (0.11 + 0.11 + 0.13) / 3 over rows
    assert dict(table["pretrain_hours"]) == pytest.approx({("a", 2): 0.06, ("a", 4): 0.09,
                                                           ("b", 2): 0.12})
    assert dict(table["compute_images"]) == {("a", 2): 2000.0, ("a", 4): 4000.0, ("b", 2): 1000.0}
    sup = table.loc[("a", 2), "supervised_knn"]
    assert (sup.mean, sup.std, sup.n) == pytest.approx((76.0, math.sqrt(2), 2))
    assert table.loc[("a", 4), "supervised_knn"] is None
    assert table.loc[("a", 2), "supervised_linear"] is None


def test_pareto_marks_use_their_own_axis(runs):
    # (compute, hours, kNN mean, linear mean):
    #   a-e2 (2000, 0.06, 63, 52)   a-e4 (4000, 0.09, 70, 58)   b-e2 (1000, 0.12, 65, 50)
    # kNN vs compute: b-e2 is cheaper and better than a-e2 -> a-e2 off;
    # kNN vs hours: a-e4 is cheaper and better than b-e2 -> b-e2 off;
    # linear vs compute: 50 < 52 < 58 as compute grows -> all on;
    # linear vs hours: a-e4 beats b-e2 -> b-e2 off.
    table = configurations(runs, "sw")
    flags = {(r.lever, r.epochs): (r.front_knn, r.front_knn_hours, r.front_linear,
                                   r.front_linear_hours) for r in table.itertuples()}
    assert flags == {("a", 2): (False, True, True, True), ("a", 4): (True, True, True, True),
                     ("b", 2): (True, False, True, False)}


def test_every_cell_of_the_markdown_table(runs):
    text = markdown(configurations(runs, "sw"), controls(runs, "sw"), "sw")
    first_table = text.split("Supervised ceiling:")[0]
    rows = [line for line in first_table.splitlines() if line.startswith(("| a ", "| b "))]
    assert rows == [
        "| a | 2 | 2.00 | 0.002 | 0.0600 | 63.00 ± 3.61 (n=3) | 52.00 ± 2.00 (n=3) | H | C H "
        "| 76.00 ± 1.41 (n=2) | — |",
        "| a | 4 | 4.00 | 0.004 | 0.0900 | 70.00 ± 1.00 (n=3) | 58.00 ± 1.00 (n=3) | C H | C H "
        "| — | — |",
        "| b | 2 | 1.00 | 0.001 | 0.1200 | 65.00 ± 1.41 (n=2) | 50.00 ± n/a (n=1) | C | C "
        "| — | — |",
    ]
    assert "99.0" not in text and "98.0" not in text and "97.0" not in text


def test_controls_are_kept_per_lever(runs):
    # each lever's network has its own random-init control and resolution its own pixel
    # floor: lever a's kNN control 18, 20 -> 19 ± 1.41; lever b's 30 alone (pooled, the
    # reader would see 22.67 for neither network)
    floor = {k: (s.mean, s.std, s.n) for k, s in controls(runs, "sw").items()}
    assert floor == pytest.approx({
        ("a", "knn", "random"): (19.0, math.sqrt(2), 2), ("a", "knn", "pixels"): (80.0, 0.0, 2),
        ("a", "linear", "random"): (11.0, math.sqrt(2), 2),
        ("b", "knn", "random"): (30.0, None, 1), ("b", "knn", "pixels"): (70.0, None, 1)})
    text = markdown(configurations(runs, "sw"), controls(runs, "sw"), "sw")
    assert "- a: knn, random-init backbone: 19.00 ± 1.41 (n=2)" in text
    assert "- b: knn, random-init backbone: 30.00 ± n/a (n=1)" in text
    assert "- a: knn, raw pixels (the floor): 80.00 ± 0.00 (n=2)" in text
    assert "- b: knn, raw pixels (the floor): 70.00 ± n/a (n=1)" in text


def test_a_lever_rerun_by_other_code_is_another_configuration(tmp_path) -> None:
    """Rows of one lever from two code revisions are labelled apart, controls too."""
    from runs_rows import make_row as row_of

    from ffcv_bt.reporting.runs_csv import append_run_row as append
    csv_path = tmp_path / "runs.csv"
    for sha, top1, control in (("aaaaaaa1", 70.0, 20.0), ("bbbbbbb2-dirty", 75.0, 60.0)):
        for seed in (0, 1):
            common = dict(recipe="sw.lever", protocol="knn", epochs=4, seed=seed, git_sha=sha,
                          run_id=f"{sha}-{seed}")
            append(csv_path, row_of(**common, top1=top1 + seed))
            append(csv_path, row_of(**{**common, "epochs": 0}, backbone="random", top1=control,
                                    pretrain_gpu_hours=0.0))
    from ffcv_bt.reporting.frontier import configurations, controls
    from ffcv_bt.reporting.runs_csv import read_runs as read

    table = configurations(read(csv_path), "sw")
    assert sorted(table["lever"]) == ["lever @ aaaaaaa", "lever @ bbbbbbb"]
    assert sorted(s.mean for s in table["knn"]) == [70.5, 75.5]
    floors = controls(read(csv_path), "sw")
    assert {k: v.mean for k, v in floors.items()} == {("lever @ aaaaaaa", "knn", "random"): 20.0,
                                                      ("lever @ bbbbbbb", "knn", "random"): 60.0}


def test_what_pretraining_beats_by_hand(runs):
    """Margins in sd over the larger of the two stds (pixels: ours alone), shares of the
    ceiling and the crossings, worked out from the fixture's rows."""
    text = markdown(configurations(runs, "sw"), controls(runs, "sw"), "sw")
    section = text.split("## What pretraining beats")[1].split("Controls (")[0]
    rows = [line for line in section.splitlines() if line.startswith(("| a ", "| b "))]
    assert rows == [
        # a-e2 kNN 63 ± sqrt(13) = 3.61; control 19 ± 1.41: +44 / 3.61 = 12.2 sd;
        # pixels 80 ± 0: -17 / 3.61 = -4.7 sd; ceiling 76: 63 / 76 = 82.9%
        "| a | 2 | kNN | 63.00 ± 3.61 (n=3) | +44.00 (12.2 sd) | -17.00 (-4.7 sd) | 82.9% |",
        # linear control 11 ± 1.41; ours 52 ± 2: +41 / 2 = 20.5 sd; no pixels, no ceiling
        "| a | 2 | linear | 52.00 ± 2.00 (n=3) | +41.00 (20.5 sd) | — | — |",
        # 70 ± 1: +51 / 1.41 = 36.1 sd; -10 / 1 = -10.0 sd
        "| a | 4 | kNN | 70.00 ± 1.00 (n=3) | +51.00 (36.1 sd) | -10.00 (-10.0 sd) | — |",
        "| a | 4 | linear | 58.00 ± 1.00 (n=3) | +47.00 (33.2 sd) | — | — |",
        # b: control 30 and pixels 70 have n = 1 (no std): ours 65 ± 1.41 counts alone
        "| b | 2 | kNN | 65.00 ± 1.41 (n=2) | +35.00 (24.7 sd) | -5.00 (-3.5 sd) | — |",
        "| b | 2 | linear | 50.00 ± n/a (n=1) | — | — | — |",
    ]
    assert ("- a, kNN: above the random-init control by > 3 sd from 2 epochs; above the raw-pixel "
            "floor by > 3 sd at no point up to 4 epochs; at or above the supervised ceiling at no "
            "point up to 4 epochs.") in section
    assert "- a, linear: above the random-init control by > 3 sd from 2 epochs." in section
    assert ("- b, kNN: above the random-init control by > 3 sd from 2 epochs; above the raw-pixel "
            "floor by > 3 sd at no point up to 2 epochs.") in section
    assert "- b, linear" not in section  # nothing to compare it with


def test_margin_edge_cases() -> None:
    from ffcv_bt.reporting.aggregate import Stat
    from ffcv_bt.reporting.frontier import margin

    assert margin(Stat(10.0, 2.0, 3), Stat(4.0, 3.0, 3)) == pytest.approx(2.0)  # 6 / max(2, 3)
    assert margin(Stat(10.0, None, 1), Stat(4.0, None, 1)) is None  # no spread to measure in
    assert margin(Stat(10.0, 0.0, 3), Stat(4.0, 0.0, 3)) == math.inf  # identical seeds, higher
    assert margin(Stat(4.0, 0.0, 3), Stat(4.0, 0.0, 3)) == 0.0


def test_levers_the_sweep_no_longer_lists_are_set_apart(runs, tmp_path: Path) -> None:
    from ffcv_bt.reporting.frontier import generate

    csv = tmp_path / "runs.csv"
    runs.to_csv(csv, index=False)
    table = generate(csv, "sw", tmp_path / "f.md", levers=["a"])
    assert sorted(set(table["lever"])) == ["a"]
    current, earlier = (tmp_path / "f.md").read_text().split("## Earlier configurations")
    assert "| b | 2 |" not in current and "- b:" not in current  # nor its controls
    assert "| b | 2 | 1.00 | 0.001 | 0.1200 | 65.00 ± 1.41 (n=2) | 50.00 ± n/a (n=1) |" in earlier
    assert (tmp_path / "f.png").is_file()


def test_a_lever_without_controls_uses_the_sweep_s_only_ones(runs) -> None:
    # drop lever b's own controls: with one lever holding controls (controls: first), b is
    # compared with a's (19 ± 1.41 kNN control, 80 pixels); with two owners nothing is shared
    from ffcv_bt.reporting.frontier import comparisons

    table = configurations(runs, "sw")
    only_a = {k: v for k, v in controls(runs, "sw").items() if k[0] == "a"}
    b_knn = next(c for c in comparisons(table, only_a) if (c["lever"], c["protocol"]) == ("b", "knn"))
    assert (b_knn["control"].mean, b_knn["pixels"].mean) == (19.0, 80.0)
    both = controls(runs, "sw")
    b_knn = next(c for c in comparisons(table, both) if (c["lever"], c["protocol"]) == ("b", "knn"))
    assert (b_knn["control"].mean, b_knn["pixels"].mean) == (30.0, 70.0)
    b_linear = next(c for c in comparisons(table, both) if (c["lever"], c["protocol"]) == ("b", "linear"))
    assert b_linear["control"] is None  # a's linear control is not b's: two levers own controls
