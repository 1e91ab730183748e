"""Tests for ffcv_bt.reporting.tables (the CLI) and the aggregation, Markdown and plot it
writes with: tables aggregated over seeds, published rows, the plot."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from PIL import Image
from runs_rows import IMAGENET, make_row

from ffcv_bt.reporting.aggregate import is_imagenet_1k
from ffcv_bt.reporting.markdown import format_mean_std, format_significant, render_readme
from ffcv_bt.reporting.published import PUBLISHED, published_for
from ffcv_bt.reporting.runs_csv import append_run_row, read_runs
from ffcv_bt.reporting.tables import generate, main

REPO = Path(__file__).resolve().parents[2]
CPU = "cpu (Intel(R) Xeon(R) CPU @ 2.20GHz)"
V100 = "Tesla V100-SXM2-32GB"
A100 = "NVIDIA A100-SXM4-80GB"
FASHION = "fashion-mnist (10 classes, 10,000 train)"
FASHION_KEYS = {"dataset": FASHION, "dataset_classes": 10, "dataset_train_images": 10000}
BASELINE_HOURS = 16 * 7 * 24  # 16 V100 x 7 days, the released code's README


def tables(readme: str, heading: str) -> tuple[list[dict], list[dict]]:
    """(our rows, published rows) of the two Markdown tables under ``## heading``."""
    section = readme.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    ours, published = section.split("### Published, not run here")
    return _rows(ours), _rows(published)


def _rows(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if not lines:
        return []
    split = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    headers = split[0]
    assert all(len(cells) == len(headers) for cells in split)
    return [dict(zip(headers, cells)) for cells in split[2:]]


def mean_std(values: list[float]) -> str:
    """Independent of the code under test: statistics.stdev is the sample std (ddof=1)."""
    spread = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "—"
    return f"{statistics.mean(values):.2f} ± {spread} (n={len(values)})"


def expected_cost(total_hours: float, device_note: str | None) -> str:
    cell = f"{total_hours / BASELINE_HOURS:.3g}x of 2,688 V100-h"
    return cell + (f" (hours on {device_note}, not V100-hours)" if device_note else "")


def write(tmp_path: Path, rows: list[dict]) -> str:
    for row in rows:
        append_run_row(tmp_path / "runs.csv", row)
    generate(tmp_path)
    return (tmp_path / "README.md").read_text()


def seeds_of_imagenet() -> list[dict]:
    """Two seeds of one ImageNet-1k configuration, each with its random and pixel rows."""
    rows = []
    for seed, top1, top5, hours in ((0, 68.1, 88.0, 40.0), (1, 69.3, 88.9, 42.0)):
        run = {"run_id": f"bt100-s{seed}", "seed": seed, "run_dir": f"results/runs/bt100-s{seed}"}
        rows += [make_row(**run, top1=top1, top5=top5, best_top1=top1 + 0.2,
                          pretrain_gpu_hours=hours, eval_gpu_hours=3.0),
                 make_row(**run, protocol="semi1", top1=top1 - 15, top5=top5 - 10,
                          pretrain_gpu_hours=hours, eval_gpu_hours=0.5),
                 make_row(**run, protocol="semi10", top1=top1 - 2, top5=top5 - 1,
                          pretrain_gpu_hours=hours, eval_gpu_hours=1.5),
                 make_row(**run, protocol="knn", top1=top1 - 8, top5=top5 - 5,
                          pretrain_gpu_hours=hours, eval_gpu_hours=0.1)]
        for backbone, accuracy in (("random", 4.0 + seed), ("pixels", 3.0 + seed)):
            rows.append(make_row(**run, backbone=backbone, epochs=0, top1=accuracy, top5=12.0,
                                 pretrain_gpu_hours=0.0, eval_gpu_hours=2.0))
    return rows


def test_two_seeds_collapse_into_one_row_with_mean_and_sample_std(tmp_path):
    readme = write(tmp_path, seeds_of_imagenet())
    lin, _ = tables(readme, "Linear probe")
    assert [r["backbone"] for r in lin] == ["pretrained", "random init (control)",
                                            "raw pixels (floor)"]
    ours = lin[0]
    assert ours["recipe"] == "[100ep](../rules/100ep.yaml)"
    assert ours["data set"] == IMAGENET and ours["epochs"] == "100" and ours["seeds"] == "0, 1"
    assert ours["device"] == f"8x {A100}"
    assert ours["top-1"] == mean_std([68.1, 69.3]) == "68.70 ± 0.85 (n=2)"
    assert ours["top-5"] == mean_std([88.0, 88.9])
    assert ours["best top-1 (mean)"] == f"{statistics.mean([68.3, 69.5]):.2f}"
    assert ours["Δ top-1 vs paper (pp)"] == f"{statistics.mean([68.1, 69.3]) - 73.3:+.2f}"
    assert ours["pretrain device-h per run (mean)"] == "41.0"  # (40 + 42) / 2
    assert ours["total device-h per run (mean)"] == "44.0"  # 41 + 3 of linear probe
    assert ours["cost vs baseline"] == expected_cost(44.0, A100)
    control = lin[1]
    assert control["top-1"] == mean_std([4.0, 5.0]) and control["epochs"] == "0"
    assert control["pretrain device-h per run (mean)"] == "0"
    assert control["Δ top-1 vs paper (pp)"] == f"{4.5 - 73.3:+.2f}"

    sem, _ = tables(readme, "Semi-supervised")
    ours = sem[0]
    assert ours["1% top-1"] == mean_std([53.1, 54.3]) and ours["10% top-1"] == mean_std([66.1, 67.3])
    assert ours["1% top-5"] == mean_std([78.0, 78.9]) and ours["10% top-5"] == mean_std([87.0, 87.9])
    assert ours["Δ 1% top-1 (pp)"] == f"{statistics.mean([53.1, 54.3]) - 55.0:+.2f}"
    assert ours["Δ 10% top-1 (pp)"] == f"{statistics.mean([66.1, 67.3]) - 69.7:+.2f}"
    assert ours["total device-h per run (mean, pretrain + semi evals)"] == "43.0"  # 41 + 0.5 + 1.5

    knn, published = tables(readme, "kNN")
    assert "Δ top-1 vs paper (pp)" not in knn[0]  # the paper publishes no kNN number
    assert knn[0]["top-1"] == mean_std([60.1, 61.3])
    assert [r["backbone"] for r in knn] == ["pretrained"]
    assert [r["top-1"] for r in published] == ["63.80"]
    assert "bt100-s0`, `bt100-s1`" in readme.split("## Provenance")[1]


def test_n_one_shows_the_value_and_a_dash_for_the_std(tmp_path):
    readme = write(tmp_path, [make_row(top1=70.0, top5=90.0)])
    assert tables(readme, "Linear probe")[0][0]["top-1"] == "70.00 ± — (n=1)"
    assert format_mean_std([70.0]) == "70.00 ± — (n=1)"
    assert format_mean_std([]) == "—"
    values = [61.0, 62.5, 64.25]
    assert format_mean_std(values) == f"{statistics.mean(values):.2f} ± " \
                                      f"{statistics.stdev(values):.2f} (n=3)"


@pytest.mark.parametrize("change", [FASHION_KEYS, {"epochs": 300}, {"recipe": "300ep"},
                                    {"n_devices": 4}, {"device": V100}])
def test_another_configuration_stays_apart(tmp_path, change):
    rows = [make_row(run_id="a", seed=0), make_row(run_id="b", seed=1, top1=70.0),
            make_row(run_id="c", seed=2, top1=50.0, **change)]
    lin, _ = tables(write(tmp_path, rows), "Linear probe")
    assert len(lin) == 2
    assert lin[0]["top-1"] == mean_std([68.123, 70.0]) and lin[1]["top-1"] == mean_std([50.0])


def test_same_device_type_with_other_details_pools(tmp_path):
    rows = [make_row(run_id="a", device="cpu (AMD EPYC)", top1=60.0),
            make_row(run_id="b", seed=1, device="cpu (Intel Xeon)", top1=62.0)]
    lin, _ = tables(write(tmp_path, rows), "Linear probe")
    assert len(lin) == 1 and lin[0]["top-1"] == mean_std([60.0, 62.0])
    assert lin[0]["device"] == "8x cpu (AMD EPYC) / cpu (Intel Xeon)"


def test_controls_sit_below_the_pretrained_row_of_their_recipe_and_dataset(tmp_path):
    fashion = {**FASHION_KEYS, "recipe": "demo", "device": CPU, "n_devices": 1}
    rows = [make_row(run_id="d", backbone="pixels", epochs=0, pretrain_gpu_hours=0, **fashion),
            make_row(run_id="i", backbone="random", epochs=0, pretrain_gpu_hours=0),
            make_row(run_id="d", **fashion),
            make_row(run_id="i"),
            make_row(run_id="d", backbone="random", epochs=0, pretrain_gpu_hours=0, **fashion),
            make_row(run_id="x", backbone="external", epochs=1000, pretrain_gpu_hours=0)]
    lin, _ = tables(write(tmp_path, rows), "Linear probe")
    assert [(r["data set"], r["backbone"]) for r in lin] == [
        (FASHION, "pretrained"), (FASHION, "random init (control)"), (FASHION, "raw pixels (floor)"),
        (IMAGENET, "pretrained"), (IMAGENET, "external (published checkpoint)"),
        (IMAGENET, "random init (control)")]


def test_delta_and_cost_only_for_imagenet_1k(tmp_path):
    imagenet_100 = {"dataset": "imagenet-100", "dataset_classes": 100,
                    "dataset_train_images": 126689}
    small_1k = {"dataset": "imagenet-1k subset", "dataset_train_images": 128000}
    rows = [make_row(run_id="in1k"), make_row(run_id="fm", **FASHION_KEYS),
            make_row(run_id="in100", **imagenet_100), make_row(run_id="sub", **small_1k),
            make_row(run_id="fm", protocol="semi1", **FASHION_KEYS)]
    readme = write(tmp_path, rows)
    lin, _ = tables(readme, "Linear probe")
    by_dataset = {r["data set"]: r for r in lin}
    assert by_dataset[IMAGENET]["Δ top-1 vs paper (pp)"] == f"{68.123 - 73.3:+.2f}"
    assert by_dataset[IMAGENET]["cost vs baseline"] == expected_cost(43.7, A100)
    for name in (FASHION, "imagenet-100", "imagenet-1k subset"):
        assert by_dataset[name]["Δ top-1 vs paper (pp)"] == "—"
        assert by_dataset[name]["cost vs baseline"] == "—"
        assert by_dataset[name]["total device-h per run (mean)"] == "43.7"  # hours still shown
    sem, _ = tables(readme, "Semi-supervised")
    assert sem[0]["Δ 1% top-1 (pp)"] == sem[0]["cost vs baseline"] == "—"
    assert sem[0]["10% top-1"] == "—"  # only the 1% evaluation was recorded
    assert "not comparable to the ImageNet reference" in readme
    assert is_imagenet_1k(1000, 1281167) and not is_imagenet_1k(1000, 1_200_000)
    assert not is_imagenet_1k(None, None) and not is_imagenet_1k(100, 1281167)


def test_cost_names_the_device_type_when_not_v100(tmp_path):
    rows = [make_row(run_id="v", device=V100, n_devices=16, pretrain_gpu_hours=600.0,
                     eval_gpu_hours=30.0),
            make_row(run_id="c", device=CPU, n_devices=2, pretrain_gpu_hours=0.0123,
                     eval_gpu_hours=0.004)]
    lin, _ = tables(write(tmp_path, rows), "Linear probe")
    assert lin[0]["cost vs baseline"] == expected_cost(630.0, None)
    assert lin[1]["cost vs baseline"] == f"{(0.0163) / BASELINE_HOURS:.2e}x of 2,688 V100-h " \
                                         "(hours on cpu, not V100-hours)"


def test_published_rows_with_their_sources(tmp_path):
    readme = write(tmp_path, [])
    for heading, protocols in (("kNN", ("knn",)), ("Linear probe", ("linear",)),
                               ("Semi-supervised", ("semi1", "semi10"))):
        ours, published = tables(readme, heading)
        assert ours == []
        entries = list(dict.fromkeys(e for p in protocols for e in published_for(p)))
        assert len(published) == len(entries) > 0
        for entry, row in zip(entries, published):
            assert row["published, not run here"] == f"{entry.name} (published, not run here)"
            assert row["source"] == f"[{entry.source}]({entry.url})"
    _, lin = tables(readme, "Linear probe")
    by_name = {r["published, not run here"].split(" (published")[0]: r for r in lin}
    first = by_name["Barlow Twins paper, first release"]
    assert (first["top-1"], first["top-5"]) == ("73.30", "91.00")
    assert "arXiv 2103.03230" in first["source"]
    assert "f13c949" in first["schedule"] and "probe lr 0.1" in first["schedule"]
    second = by_name["Barlow Twins, second release"]
    assert (second["top-1"], second["top-5"]) == ("73.50", "91.00")
    assert "046eec3" in second["schedule"] and "probe lr 0.3" in second["schedule"]
    rerun = by_name["re-evaluation of the released weights"]
    assert (rerun["top-1"], rerun["top-5"]) == ("73.27", "91.09")
    assert "barlowtwins GitHub issue 14" in rerun["source"]
    assert rerun["Δ top-1 vs paper (pp)"] == f"{73.27 - 73.3:+.2f}"
    expected = {"VISSL, 300 ep": "70.75", "VISSL, 1000 ep": "71.80", "mmselfsup, 300 ep": "71.80",
                "solo-learn, 100 ep": "67.20", "lightly, 100 ep": "62.90",
                "solo-learn ImageNet-100, online linear": "80.38",
                "solo-learn ImageNet-100, offline linear": "80.16"}
    for batch, top1 in (("128", "69.70"), ("256", "70.70"), ("512", "71.40"), ("1024", "71.70"),
                        ("2048", "71.40"), ("4096", "70.70")):
        expected[f"barlowtwins issue 7, batch {batch}"] = top1
    assert {name: row["top-1"] for name, row in by_name.items()
            if name in expected} == expected and len(by_name) == len(expected) + 3
    assert by_name["solo-learn ImageNet-100, online linear"]["Δ top-1 vs paper (pp)"] == "—"
    assert first["Δ top-1 vs paper (pp)"] == "—"
    _, sem = tables(readme, "Semi-supervised")
    assert [[r[k] for k in ("1% labels top-1", "1% labels top-5", "10% labels top-1",
                            "10% labels top-5")] for r in sem] == \
        [["55.00", "79.20", "69.70", "89.30"], ["55.09", "79.89", "68.89", "88.97"]]
    notes = readme.split("## Notes")[1]
    assert "2,688 V100-hours (16 V100 x ~7 days, the released code's README" in notes
    assert "3,968 V100-hours (32 V100 x ~124 h, the paper's text" in notes
    assert "Cost ratios use the lower, 2,688 V100-hours" in notes
    assert all(entry.source and entry.url.startswith("https://") for entry in PUBLISHED)


@pytest.mark.parametrize("create_empty_file", [False, True])
def test_no_runs_still_shows_published_results(tmp_path, create_empty_file):
    if create_empty_file:
        (tmp_path / "runs.csv").touch()
    generate(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "No runs recorded yet in runs.csv." in readme
    assert len(tables(readme, "Linear probe")[1]) == len(published_for("linear"))
    with Image.open(tmp_path / "cost_accuracy.png") as image:
        assert image.format == "PNG"


def test_committed_file_renders() -> None:
    """results/runs.csv as committed loads (rows from before pretrain_epoch_equivalents
    included), and the committed results/README.md is what it renders to."""
    runs = read_runs(REPO / "results" / "runs.csv")
    assert not runs.empty and runs["pretrain_epoch_equivalents"].isna().any()
    assert render_readme(runs) == (REPO / "results" / "README.md").read_text()


def test_later_row_supersedes_earlier_evaluation(tmp_path):
    csv_path = tmp_path / "runs.csv"
    readme = write(tmp_path, [make_row(top1=60.0), make_row(top1=61.5)])
    assert len(csv_path.read_text().splitlines()) == 3  # both kept in the csv
    assert read_runs(csv_path)["top1"].tolist() == [61.5]
    assert tables(readme, "Linear probe")[0][0]["top-1"] == "61.50 ± — (n=1)"


def test_provenance_lists_runs_with_seed_and_relative_run_dir(tmp_path):
    readme = write(tmp_path, seeds_of_imagenet())
    provenance = readme.split("## Provenance")[1]
    assert "- `bt100-s1`: seed 1, data set " + IMAGENET in provenance
    assert "run dir `results/runs/bt100-s1`" in provenance


def test_plot_is_drawn(tmp_path):
    fashion = {**FASHION_KEYS, "recipe": "demo", "device": CPU, "n_devices": 1, "epochs": 4}
    rows = seeds_of_imagenet() + [make_row(run_id=f"d{s}", seed=s, top1=60.0 + s, **fashion)
                                  for s in range(3)]
    write(tmp_path, rows)
    png = tmp_path / "cost_accuracy.png"
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.width >= 600 and image.height >= 400
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert len(colors) > 50  # markers, text and grid were drawn, not a blank canvas
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("hours, text", [
    (2688, "2,688"), (123.4, "123"), (43.7, "43.7"), (12.345, "12.3"), (1, "1.00"),
    (0.0163, "0.0163"), (0.001234, "0.00123"), (99.96, "100"), (0, "0"),
])
def test_format_significant(hours, text):
    assert format_significant(hours) == text


def test_cli_regenerates_and_says_where(tmp_path, capsys):
    append_run_row(tmp_path / "runs.csv", make_row())
    main(["--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert str(tmp_path / "README.md") in out and str(tmp_path / "cost_accuracy.png") in out
    assert "`bt100`" in (tmp_path / "README.md").read_text()


# ----------------------------------------------------------------- every cell by hand
def _table_row(seed: int, protocol: str, backbone: str, top1: float, top5: float,
               pretrain: float, evaluation: float, sha: str = "abc1234") -> dict:
    return {"run_id": f"r-s{seed}", "recipe": "r", "dataset": "toy", "dataset_classes": 10,
            "dataset_train_images": 1000, "seed": seed, "protocol": protocol,
            "backbone": backbone, "epochs": 4 if backbone == "pretrained" else 0,
            "top1": top1, "top5": top5, "best_top1": top1 + 1.0,
            "pretrain_gpu_hours": pretrain,
            "pretrain_epoch_equivalents": 4.0 if backbone == "pretrained" else 0.0,
            "eval_gpu_hours": evaluation, "device": "cpu (test)", "n_devices": 1,
            "git_sha": sha, "finished_at": "", "run_dir": f"/nonexistent/r-s{seed}"}


def test_every_cell_of_a_results_table(tmp_path):
    rows = []
    # linear top-1 70, 71, 75: mean 72, sample variance (4 + 1 + 9) / 2 = 7;
    # top-5 90, 92, 94: mean 92, sd 2; best top-1 71, 72, 76: mean 73
    # pretraining 1, 2, 3 h -> 2 per run; linear evaluation 0.5 h each -> total 2.5;
    # kNN evaluation 10 h each -> its own table's total 12, never the linear one's
    for seed, (lin, top5, hours) in enumerate([(70.0, 90.0, 1.0), (71.0, 92.0, 2.0),
                                               (75.0, 94.0, 3.0)]):
        rows.append(_table_row(seed, "linear", "pretrained", lin, top5, hours, 0.5))
        rows.append(_table_row(seed, "knn", "pretrained", lin - 10, top5, hours, 10.0))
    rows.append(_table_row(0, "linear", "random", 20.0, 50.0, 0.0, 0.25))  # the control: apart
    readme = write(tmp_path, rows)
    linear, _ = tables(readme, "Linear probe")
    ours, control = linear
    assert ours["top-1"] == f"72.00 ± {math.sqrt(7):.2f} (n=3)" == "72.00 ± 2.65 (n=3)"
    assert ours["top-5"] == "92.00 ± 2.00 (n=3)"
    assert ours["best top-1 (mean)"] == "73.00"
    assert ours["seeds"] == "0, 1, 2" and ours["epochs"] == "4" and ours["device"] == "1x cpu (test)"
    assert ours["pretrain device-h per run (mean)"] == "2.00"
    assert ours["total device-h per run (mean)"] == "2.50"
    assert ours["cost vs baseline"] == "—" and ours["Δ top-1 vs paper (pp)"] == "—"  # not ImageNet
    assert control["backbone"] == "random init (control)" and control["top-1"] == "20.00 ± — (n=1)"
    assert control["pretrain device-h per run (mean)"] == "0"
    assert control["total device-h per run (mean)"] == "0.250"
    (knn,), _ = tables(readme, "kNN")
    assert knn["top-1"] == "62.00 ± 2.65 (n=3)" and knn["total device-h per run (mean)"] == "12.0"
