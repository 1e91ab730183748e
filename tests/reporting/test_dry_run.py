"""Cost estimates from device files, loader-core advice, and fitting epochs to a budget:
checked against sums computed here, epoch by epoch."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ffcv_bt import runner
from ffcv_bt.cli import run_command
from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.errors import ConfigError
from ffcv_bt.method.schedules import resolution_of_recipe
from ffcv_bt.reporting import device_profile
from ffcv_bt.reporting.dry_run import (
    IMAGENET_TRAIN_IMAGES,
    describe_plan,
    fit_to_budget,
)

DEVICE = "Test GPU 80GB"
PROFILE = {
    "format": device_profile.FORMAT, "device": DEVICE, "device_type": "cuda", "capability": "9.0",
    "torch": "2.14.1", "cuda": "13.0", "date": "2026-01-01T00:00:00",
    "command": "bench/gpu_check.py", "model": {"arch": "resnet50", "width": 64,
                                               "projector": "8192-8192-8192", "batch_per_device": 256},
    "pretrain": {"160": {"images_per_s": 3000.0, "precision": "bf16", "channels_last": True,
                         "compile": False, "peak_memory_gib": 20.0},
                 "224": {"images_per_s": 1600.0, "precision": "bf16", "channels_last": True,
                         "compile": True, "peak_memory_gib": 40.0}},
    "eval_images_per_s": 6000.0,
    "loader": {"cores": 16, "pairs_per_s": {"160": 6400.0, "224": 4800.0},
               "pairs_per_s_per_core": {"160": 400.0, "224": 300.0}},
}


def _recipe(tmp_path: Path, name: str = "fast-300ep.yaml", **overrides):
    return load_recipe(RULES_DIR / name, {"data.dir": str(tmp_path / "no-data"), **overrides})


def _hours(recipe_values: dict, rate) -> float:
    """Pretraining device-hours, one epoch at a time (ImageNet-size data)."""
    r, epochs = recipe_values["resolution"], recipe_values["optim"]["epochs"]
    seconds = 0.0
    for e in range(epochs):
        res = resolution_of_recipe(e, r)
        seconds += IMAGENET_TRAIN_IMAGES / rate(res)
    return seconds / 3600


def _paper_rate(recipe):
    est, max_res = recipe.estimate.pretrain_images_per_s, recipe.resolution.max_res
    return lambda res: est * (max_res / res) ** 2


def _measured_rate(res: int) -> float:
    # 160 and 224 measured; 192 is equally far from both: the larger (224) is used, scaled.
    return {160: 3000.0, 224: 1600.0, 192: 1600.0 * (224 / 192) ** 2}[res]


def _write_profile(folder: Path, profile: dict = PROFILE) -> Path:
    return device_profile.write(device_profile.device_file(DEVICE, folder), profile)


def _pretrain_hours_printed(plan: str) -> float:
    line = next(l for l in plan.splitlines() if l.strip().startswith("pretrain "))
    return float(line.split(":")[1].split("device-hours")[0])


def test_without_device_file_the_plan_uses_the_recipe_figures(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    plan = describe_plan(recipe, devices_dir=tmp_path / "devices", cores=8, gpus=1)
    assert "paper-derived" in plan and "no device file" in plan
    assert _pretrain_hours_printed(plan) == pytest.approx(
        _hours(recipe.values, _paper_rate(recipe)), abs=0.06)
    assert "loader cores per GPU: unknown" in plan


def test_device_file_gives_measured_hours_and_loader_cores(tmp_path: Path) -> None:
    _write_profile(tmp_path)
    recipe = _recipe(tmp_path, **{"estimate.device": DEVICE, "data.num_workers": 4,
                                  "slurm.cpus_per_task": 16})
    plan = describe_plan(recipe, devices_dir=tmp_path, cores=8, gpus=2)
    assert "measured:" in plan and str(device_profile.device_file(DEVICE, tmp_path)) in plan
    assert _pretrain_hours_printed(plan) == pytest.approx(_hours(recipe.values, _measured_rate),
                                                          abs=0.06)
    # 224 px: 1600 images/s / 300 pairs/s per core = 5.3 loader cores (+1) > 4 per GPU here.
    assert "224 px: 1,600 images/s per GPU / 300 pairs/s per core = 5.3 loader cores" in plan
    assert "160 px: 3,000 images/s per GPU / 400 pairs/s per core = 7.5 loader cores" in plan
    warnings = [l for l in plan.splitlines() if l.startswith("WARNING")]
    assert any("224 px a GPU needs 7 cores" in w and "4.0 per GPU" in w for w in warnings)
    assert any("160 px data.num_workers=4" in w for w in warnings)
    roomy = describe_plan(recipe, devices_dir=tmp_path, cores=64, gpus=2)
    assert not any("this machine has" in l for l in roomy.splitlines())


def test_fit_to_budget_fits_and_one_more_epoch_would_not(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)  # 300 epochs, ramp 120 -> 255, warmup 10, paper figures
    budget = 150.0
    fit = fit_to_budget(recipe, budget, devices_dir=tmp_path)
    fitted = load_recipe(RULES_DIR / "fast-300ep.yaml",
                         {"data.dir": str(tmp_path / "no-data"), **fit})
    epochs = fitted.optim.epochs
    assert _hours(fitted.values, _paper_rate(recipe)) <= budget
    more = copy.deepcopy(fitted.values)
    scale = (epochs + 1) / 300
    more["optim"]["epochs"] = epochs + 1
    more["resolution"].update(start_ramp=round(120 * scale), end_ramp=round(255 * scale))
    assert _hours(more, _paper_rate(recipe)) > budget
    # The ramp and the warmup keep their share of the run.
    assert 0 < epochs < 300
    assert fitted.resolution.start_ramp == round(120 * epochs / 300)
    assert fitted.resolution.end_ramp == round(255 * epochs / 300)
    assert fitted.optim.warmup_epochs == pytest.approx(10 * epochs / 300)
    plan = describe_plan(fitted, devices_dir=tmp_path)
    assert _pretrain_hours_printed(plan) <= budget + 0.05


def test_fit_to_budget_uses_the_device_file(tmp_path: Path) -> None:
    _write_profile(tmp_path)
    recipe = _recipe(tmp_path, **{"estimate.device": DEVICE})
    fit = fit_to_budget(recipe, 20.0, devices_dir=tmp_path)
    values = copy.deepcopy(recipe.values)
    values["optim"]["epochs"] = fit["optim.epochs"]
    values["resolution"].update(start_ramp=fit["resolution.start_ramp"],
                                end_ramp=fit["resolution.end_ramp"])
    assert _hours(values, _measured_rate) <= 20.0
    # ~0.12 device-hours per 160 px epoch: about 170 epochs, not the paper figure's ~9.
    assert fit["optim.epochs"] > 100


def test_fit_to_budget_refuses_less_than_one_epoch(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    one_epoch = IMAGENET_TRAIN_IMAGES / (132.4 * (224 / 160) ** 2) / 3600
    with pytest.raises(ConfigError, match=r"below the cost of one pretraining epoch, "
                                          rf"{one_epoch:.3g} device-hours"):
        fit_to_budget(recipe, one_epoch * 0.9, devices_dir=tmp_path)
    with pytest.raises(ConfigError, match="positive"):
        fit_to_budget(recipe, 0.0, devices_dir=tmp_path)
    assert fit_to_budget(recipe, one_epoch * 1.01, devices_dir=tmp_path)["optim.epochs"] == 1


def test_device_file_validation_names_file_and_key(tmp_path: Path) -> None:
    path = _write_profile(tmp_path)
    assert device_profile.load(path)["device"] == DEVICE
    assert path.name == "test-gpu-80gb.json"
    broken = copy.deepcopy(PROFILE)
    broken["loader"]["pairs_per_s_per_core"]["224"] = -1
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"test-gpu-80gb.json: 'loader.pairs_per_s_per_core.224'"):
        device_profile.load(path)
    del broken["eval_images_per_s"]
    with pytest.raises(ValueError, match="'eval_images_per_s'"):
        device_profile.validate(broken, "x.json")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        device_profile.load(path)
    recipe = _recipe(tmp_path, **{"estimate.device": DEVICE})
    with pytest.raises(ConfigError, match="estimate.device 'Test GPU 80GB'"):
        describe_plan(recipe, devices_dir=tmp_path)


def test_the_plan_counts_the_online_monitor(tmp_path: Path) -> None:
    off = describe_plan(_recipe(tmp_path), devices_dir=tmp_path / "devices", cores=8, gpus=1)
    assert "monitor " not in off
    recipe = _recipe(tmp_path, **{"monitor.every_epochs": "50", "monitor.train_images": "20000",
                                  "monitor.val_images": "5000"})
    plan = describe_plan(recipe, devices_dir=tmp_path / "devices", cores=8, gpus=1)
    line = next(l for l in plan.splitlines() if l.strip().startswith("monitor "))
    images = 6 * (20000 + 2 * 5000)  # after epochs 50, 100, ..., 300
    assert f"{images:,}" in line and "6 passes" in line
    hours = images / recipe.estimate.eval_images_per_s / 3600
    assert float(line.split(":")[1].split("device-hours")[0]) == pytest.approx(hours, abs=0.06)

    def total(text: str) -> float:
        return float(next(l for l in text.splitlines() if "total" in l).split()[1])
    assert total(plan) == pytest.approx(total(off) + hours, abs=0.11)


def test_aug_device_gpu_uses_the_workers_rates_when_measured(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, **{"estimate.device": DEVICE, "aug.device": "gpu"})
    _write_profile(tmp_path)  # no gpu_aug table: the CPU loader's rates, said so
    plan = describe_plan(recipe, devices_dir=tmp_path, cores=64, gpus=1)
    assert "no measurement of its workers" in plan
    assert "224 px: 1,600 images/s per GPU / 300 pairs/s per core = 5.3 loader cores" in plan
    profile = copy.deepcopy(PROFILE)
    profile["loader"]["gpu_aug_pairs_per_s_per_core"] = {"160": 800.0, "224": 640.0}
    _write_profile(tmp_path, profile)
    plan = describe_plan(recipe, devices_dir=tmp_path, cores=64, gpus=1)
    assert "the workers' part as measured" in plan
    assert "224 px: 1,600 images/s per GPU / 640 pairs/s per core = 2.5 loader cores" in plan
    assert "160 px: 3,000 images/s per GPU / 800 pairs/s per core = 3.8 loader cores" in plan
    cpu = describe_plan(_recipe(tmp_path, **{"estimate.device": DEVICE}), devices_dir=tmp_path,
                        cores=4, gpus=1)
    assert "300 pairs/s per core" in cpu and "aug.device: gpu moves" in cpu


def test_cost_of_a_progressive_recipe_against_a_hand_computed_one(tmp_path: Path) -> None:
    """4 epochs, 160 -> 224 px ramped over epochs 0..4, nearest multiple of 32: 160, 192
    (176 = 5.5 x 32, half to even: 6), 192, 192 (208 = 6.5 x 32: 6). Epochs-equivalent at
    224 px: (160/224)^2 + 3 (192/224)^2 = (25 + 3 x 36) / 49 = 133 / 49."""
    from ffcv_bt.method.schedules import pretrain_cost_factor

    recipe = _recipe(tmp_path, "1000ep.yaml", **{
        "optim.epochs": "4", "resolution.min_res": "160", "resolution.max_res": "224",
        "resolution.start_ramp": "0", "resolution.end_ramp": "4"})
    assert pretrain_cost_factor(recipe) == pytest.approx(133 / 49, rel=1e-12)
    plan = describe_plan(recipe, devices_dir=tmp_path / "devices", cores=8, gpus=1)
    # paper-derived rate at 224 px: 132.4 two-view images/s per V100; cost ~ res^2
    hours = IMAGENET_TRAIN_IMAGES * (133 / 49) / 132.4 / 3600
    assert _pretrain_hours_printed(plan) == pytest.approx(hours, abs=0.06)
    line = next(l for l in plan.splitlines() if l.strip().startswith("pretrain "))
    assert int(line.split()[1].replace(",", "")) == round(IMAGENET_TRAIN_IMAGES * 133 / 49)
    assert "epochs    1-3    192 px" in plan and "epochs    0-0    160 px" in plan


def _dry_run(recipe: Path, capsys: pytest.CaptureFixture) -> str:
    """run.py --dry-run in this process (run.py's own entry: ffcv_bt.cli.run_command)."""
    capsys.readouterr()
    code = run_command(runner.main, ["--config", str(recipe), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("recipe", sorted((RULES_DIR).glob("*.yaml")), ids=lambda p: p.name)
def test_dry_run_every_recipe(recipe: Path, capsys: pytest.CaptureFixture) -> None:
    out = _dry_run(recipe, capsys)
    assert "resolution schedule" in out and "device-hours" in out
    assert f"recipe {recipe.stem}" in out


def test_dry_run_estimates_the_reference_cost(capsys: pytest.CaptureFixture) -> None:
    out = _dry_run(RULES_DIR / "1000ep.yaml", capsys)
    line = next(l for l in out.splitlines() if l.strip().startswith("pretrain "))
    hours = float(line.split(":")[1].split("device-hours")[0])
    # 1000 epochs x 1,281,167 images at 132.4 images/s per V100 -> ~2,688 V100-hours
    assert hours == pytest.approx(1000 * 1_281_167 / 132.4 / 3600, rel=1e-3)
