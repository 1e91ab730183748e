"""The two baselines every pretrained row is read against: the random-init control (a
network whose features carry information) and the supervised ceiling (the same backbone
trained with labels), tested on real Fashion-MNIST images and on what the supervised
stage's optimizer, loss and loader actually received."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recipes import write_tiny_recipe

from ffcv_bt.config import load_recipe
from ffcv_bt.data.eval_loader import make_eval_loader
from ffcv_bt.data.manifest import beton_path
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.backbone_weights import load_backbone
from ffcv_bt.evaluation.knn import evaluate_knn
from ffcv_bt.method.model import build_backbone
from ffcv_bt.train.supervised import SupervisedTraining, train_supervised

CPU = DistInfo()


def _val_images(data_dir: Path, res: int = 32) -> torch.Tensor:
    loader = make_eval_loader(str(beton_path(data_dir, "val")), 100, "val", num_workers=1,
                              res=res, resize_ratio=1.0, device="cpu")
    return torch.cat([images for images, _ in loader])


def _relative_spread(features: torch.Tensor) -> float:
    """Variance across images over the squared mean feature (0 for constant features)."""
    return float(features.var(0).sum() / features.mean(0).pow(2).sum())


@torch.no_grad()
def test_random_control_features_are_informative(tiny_dataset: Path) -> None:
    """The control's pooled features vary across real images; the zero-init-residual
    network (the pretraining start) gives near-constant ones, which is why it is not the
    control."""
    images = _val_images(tiny_dataset)
    control, _ = load_backbone("random", "resnet18", width=32, seed=0)
    zero_init, _ = build_backbone("resnet18", width=32, zero_init_residual=True)
    control.eval(), zero_init.eval()
    # measured on these images: 0.078 (control) vs 0.003 (zero-init) at 500 demo val images
    assert _relative_spread(control(images)) > 0.03
    assert _relative_spread(zero_init(images)) < 0.01
    # the control really is torchvision's standard init: every last-BN gamma is 1
    assert all(float(b.bn2.weight.min()) == 1.0 for layer in (control.layer1, control.layer4) for b in layer)


def test_random_control_knn_is_far_above_chance(tiny_dataset: Path, tmp_path: Path) -> None:
    """kNN of the control on real images (10 classes, chance 10%): far above chance."""
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset),
                         {"model.small_stem": "false", "model.width": "32"})
    result = evaluate_knn(recipe, "random", tmp_path / "knn-random", CPU)
    assert result["top1"] >= 40.0, result


def _lr_by_step(epochs: int, steps: int, peak_epoch: float, peak: float) -> list[float]:
    """The triangular rate written out: up linearly to ``peak`` at ``peak_epoch``, down to 0."""
    out = []
    for e in range(epochs):
        for i in range(steps):
            t = e + i / steps
            out.append(peak * t / peak_epoch if t <= peak_epoch
                       else peak * (epochs - t) / (epochs - peak_epoch))
    return out


def test_supervised_stage_receives_its_recipe(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """What the supervised stage's optimizer, loss and loader actually received, at every step:
    the triangular rate, weight decay on conv/linear weights only, label smoothing, the
    recipe's resolution epoch by epoch; then its backbone is saved and evaluable."""
    overrides = {"optim.epochs": "3", "optim.batch_size": "40", "resolution.min_res": "16",
                 "resolution.max_res": "24", "resolution.start_ramp": "0",
                 "resolution.end_ramp": "2", "resolution.multiple": "8",
                 "supervised.lr": "0.64", "supervised.lr_peak_epoch": "1",
                 "supervised.weight_decay": "0.001", "supervised.label_smoothing": "0.2"}
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), overrides)
    seen: list[dict] = []
    original_step = torch.optim.SGD.step

    def spy_step(self, *args, **kwargs):
        seen.append({"lrs": [g["lr"] for g in self.param_groups],
                     "wds": [g["weight_decay"] for g in self.param_groups]})
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy_step)
    stage = SupervisedTraining(recipe, tmp_path / "supervised", CPU)
    train_resolutions: list[int] = []
    forward = stage.model.forward

    def recording_forward(x):
        if stage.model.training:
            train_resolutions.append(int(x.shape[-1]))
        return forward(x)

    stage.model.forward = recording_forward
    criterion = stage.criterion()
    assert criterion.label_smoothing == pytest.approx(0.2)
    decay, plain = stage.optimizer.param_groups
    assert decay["weight_decay"] == pytest.approx(0.001) and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in plain["params"])
    bn_weights = {id(m.weight) for m in stage.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bn_weights <= {id(p) for p in plain["params"]}
    result = stage.run()

    steps = 200 // 40  # 200 train images, drop_last
    expected = _lr_by_step(3, steps, 1.0, 0.64 * 40 / 256)
    assert len(seen) == 3 * steps
    np.testing.assert_allclose([s["lrs"][0] for s in seen], expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([s["lrs"][1] for s in seen], expected, rtol=1e-12, atol=1e-15)
    # FFCV's ramp 16 -> 24 over epochs 0-2, rounded to the nearest multiple of 8 (halves to
    # even): 16, round(20 / 8) = 2 -> 16, 24
    assert train_resolutions == [16] * steps + [16] * steps + [24] * steps
    assert result["backbone"] == "supervised"
    saved = tmp_path / "supervised" / "resnet18.pth"
    backbone, _ = load_backbone(str(saved), "resnet18", width=4, small_stem=True)
    init, _ = load_backbone("random", "resnet18", width=4, small_stem=True, seed=0)
    assert not torch.equal(backbone.conv1.weight, init.conv1.weight)


def test_supervised_runs_in_run_py_and_records_rows(tiny_dataset: Path, tmp_path: Path) -> None:
    """eval.supervised adds the supervised stage and a 'supervised' row per protocol, with
    its training cost; a second call skips the finished stage."""
    from ffcv_bt.runner import main

    recipe = write_tiny_recipe(tmp_path, tiny_dataset, epochs=1)
    argv = ["--config", str(recipe), "--stages", "pretrain,knn", "--eval.supervised=true",
            "--eval.control=false", "--out", str(tmp_path / "run"), "--results-dir",
            str(tmp_path / "results")]
    assert main(argv) == 0
    import pandas as pd
    rows = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert sorted(rows["backbone"]) == ["pretrained", "supervised"]
    sup = rows[rows["backbone"] == "supervised"].iloc[0]
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert sup["pretrain_gpu_hours"] == pytest.approx(meta["stages"]["supervised"]["device_hours"])
    assert sup["epochs"] == 1
    stamp = (tmp_path / "run" / "supervised" / "result.json").stat().st_mtime_ns
    assert train_supervised(load_recipe(recipe, {"eval.supervised": "true"}),
                            tmp_path / "run" / "supervised", CPU)["backbone"] == "supervised"
    assert (tmp_path / "run" / "supervised" / "result.json").stat().st_mtime_ns == stamp


def test_frontier_shows_the_supervised_ceiling_per_point(tmp_path: Path) -> None:
    """Supervised rows become each (lever, epochs) point's ceiling column (mean ± std, n of
    that point's rows only), never a control nor a frontier point."""
    import statistics

    from ffcv_bt.reporting.frontier import generate
    from ffcv_bt.reporting.runs_csv import append_run_row

    def row(run: str, epochs: int, seed: int, backbone: str, top1: float) -> dict:
        trained = backbone in ("pretrained", "supervised")
        return {"run_id": run, "recipe": "sw.a", "dataset": "toy", "dataset_classes": 10,
                "dataset_train_images": 1000, "seed": seed, "protocol": "knn", "backbone": backbone,
                "epochs": epochs if trained else 0, "top1": top1, "top5": 100.0, "best_top1": top1,
                "pretrain_gpu_hours": 0.01 if trained else 0.0,
                "pretrain_epoch_equivalents": float(epochs) if trained else 0.0,
                "eval_gpu_hours": 0.001, "device": "cpu (test)", "n_devices": 1, "git_sha": "",
                "finished_at": "", "run_dir": f"/nonexistent/{run}"}

    csv = tmp_path / "runs.csv"
    sup = {2: [80.0, 82.0, 84.0], 4: [88.0, 90.0]}
    for epochs in (2, 4):
        for seed in range(3):
            append_run_row(csv, row(f"e{epochs}-s{seed}", epochs, seed, "pretrained", 70.0 + epochs + seed))
        for seed, value in enumerate(sup[epochs]):
            append_run_row(csv, row(f"e{epochs}-s{seed}", epochs, seed, "supervised", value))
    append_run_row(csv, row("e2-s0", 2, 0, "random", 77.0))
    table = generate(csv, "sw", tmp_path / "f.md").set_index("epochs")
    for epochs, values in sup.items():
        stat = table.loc[epochs, "supervised_knn"]
        assert (stat.mean, stat.std, stat.n) == (statistics.mean(values), statistics.stdev(values), len(values))
        assert table.loc[epochs, "knn"].mean == statistics.mean([70.0 + epochs + s for s in range(3)])
    text = (tmp_path / "f.md").read_text()
    assert "82.00 ± 2.00 (n=3)" in text and "89.00 ± 1.41 (n=2)" in text
    assert "knn, random-init backbone: 77.00" in text and "supervised-init" not in text


def test_tables_keep_code_revisions_apart(tmp_path: Path) -> None:
    """Rows of one recipe from two code revisions (the old zero-init control and the fair
    one) are two configurations; a seed's "-dirty" suffix does not split a run's seeds."""
    from ffcv_bt.reporting.aggregate import configurations
    from ffcv_bt.reporting.markdown import render_readme
    from ffcv_bt.reporting.runs_csv import append_run_row, read_runs

    csv = tmp_path / "runs.csv"
    for sha, values in (("aaaaaaa1111", [18.0, 19.0, 18.5]), ("bbbbbbb2222", [77.0, 78.0, 76.0])):
        for seed, value in enumerate(values):
            append_run_row(csv, {
                "run_id": f"{sha}-s{seed}", "recipe": "demo", "dataset": "toy", "dataset_classes": 10,
                "dataset_train_images": 1000, "seed": seed, "protocol": "knn", "backbone": "random",
                "epochs": 0, "top1": value, "top5": 100.0, "best_top1": value,
                "pretrain_gpu_hours": 0.0, "pretrain_epoch_equivalents": 0.0, "eval_gpu_hours": 0.001,
                "device": "cpu (test)", "n_devices": 1, "git_sha": sha + ("-dirty" if seed else ""),
                "finished_at": "", "run_dir": f"/nonexistent/{sha}-{seed}"})
    configs = configurations(read_runs(csv), ("knn",))
    assert [(c.revision, c.values("knn", "top1")) for c in configs] == [
        ("aaaaaaa", [18.0, 19.0, 18.5]), ("bbbbbbb", [77.0, 78.0, 76.0])]
    text = render_readme(read_runs(csv))
    assert "@ aaaaaaa" in text and "18.50 ± 0.50 (n=3)" in text and "77.00 ± 1.00 (n=3)" in text
