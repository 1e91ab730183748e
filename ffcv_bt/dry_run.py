"""``run.py --dry-run``: the plan of a recipe and its estimated cost, without running it.

The GPU-hour estimate divides the images each stage processes by a measured throughput
per device (the recipe's ``estimate`` section, filled from bench/train_step.py). Under
progressive resolution, the cost of an epoch is scaled by (res / max_res)^2 relative to
the throughput measured at max_res (convolution FLOPs scale with pixels).
"""
from __future__ import annotations

import json
from pathlib import Path

from ffcv_bt.config import Recipe
from ffcv_bt.schedules import lr_at, resolution_at

IMAGENET_TRAIN_IMAGES = 1_281_167


def _train_images(recipe: Recipe) -> tuple[int, str, dict[int, int]]:
    manifest = Path(recipe["data"]["dir"]) / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        subsets = {int(k): int(v["count"]) for k, v in info.get("subsets", {}).items()}
        return int(info["splits"]["train"]["num_images"]), f"{manifest}", subsets
    n = IMAGENET_TRAIN_IMAGES
    return n, f"{manifest} not found: assuming ImageNet-1k ({n:,} images)", \
        {1: round(0.01 * n), 10: round(0.1 * n)}


def resolution_segments(recipe: Recipe) -> list[tuple[int, int, int]]:
    """[(first epoch, last epoch, resolution)] runs of equal resolution."""
    r, epochs = recipe["resolution"], recipe["optim"]["epochs"]
    segments: list[tuple[int, int, int]] = []
    for e in range(epochs):
        res = resolution_at(e, r["min_res"], r["max_res"], r["start_ramp"], r["end_ramp"])
        if segments and segments[-1][2] == res:
            segments[-1] = (segments[-1][0], e, res)
        else:
            segments.append((e, e, res))
    return segments


def pretrain_cost_factor(recipe: Recipe) -> float:
    """Sum over epochs of (res / max_res)^2: epochs-equivalent at max_res."""
    max_res = recipe["resolution"]["max_res"]
    return sum((last - first + 1) * (res / max_res) ** 2
               for first, last, res in resolution_segments(recipe))


def describe_plan(recipe: Recipe) -> str:
    """Human-readable plan: data, stages, schedules and a GPU-hour estimate per stage."""
    o, est = recipe["optim"], recipe["estimate"]
    n_train, source, subsets = _train_images(recipe)
    steps = n_train // o["batch_size"]
    lines = [f"recipe {recipe.name}: {' + '.join(recipe.files)}",
             f"protocol: {recipe.protocol_file}",
             f"data: {recipe['data']['dir']} ({n_train:,} train images; {source})",
             f"stages: {', '.join(recipe.stages)}"
             + ("  (+ random-init control for each evaluation)" if recipe["eval"]["control"] else ""),
             f"model: {recipe['model']['arch']} width {recipe['model']['width']}, projector "
             f"{recipe['model']['projector']}; loss lambd {recipe['loss']['lambd']}",
             f"pretraining: {o['epochs']} epochs x {steps:,} steps of global batch {o['batch_size']}",
             "resolution schedule:"]
    for first, last, res in resolution_segments(recipe):
        lines.append(f"  epochs {first:>4}-{last:<4} {res} px")
    lines.append("learning rate (weights / biases):")
    total = o["epochs"] * max(steps, 1)
    for label, step in [("start", 0), ("end of warmup", int(o["warmup_epochs"] * max(steps, 1))),
                        ("middle", total // 2), ("last step", total - 1)]:
        m = lr_at(step, max(steps, 1), o["epochs"], o["batch_size"], o["warmup_epochs"],
                  o["final_lr_ratio"])
        lines.append(f"  {label:14s} step {step:>9,}: {m * o['lr_weights']:.5g} / "
                     f"{m * o['lr_biases']:.5g}")
    lin, semi = recipe["linear"], recipe["semi"]
    stage_images = {
        "pretrain": pretrain_cost_factor(recipe) * n_train,
        "linear": lin["epochs"] * n_train,
        "semi1": semi["epochs"] * subsets.get(1, round(0.01 * n_train)),
        "semi10": semi["epochs"] * subsets.get(10, round(0.1 * n_train)),
        "knn": n_train,  # one frozen pass over the train features (val is small)
    }
    lines.append(f"estimated cost on {est['n_devices']}x {est['device']}:")
    total_hours = 0.0
    for stage in recipe.stages:
        rate = est["pretrain_images_per_s"] if stage == "pretrain" else est["eval_images_per_s"]
        if rate <= 0:
            lines.append(f"  {stage:8s} {stage_images[stage]:>16,.0f} images: no measured "
                         f"throughput (set estimate.* from bench/train_step.py)")
            continue
        hours = stage_images[stage] / rate / 3600  # device-hours: per-device rate
        copies = 2 if stage != "pretrain" and recipe["eval"]["control"] else 1
        total_hours += hours * copies
        wall = hours / est["n_devices"]
        lines.append(f"  {stage:8s} {stage_images[stage]:>16,.0f} images: {hours * copies:10.1f} "
                     f"device-hours ({wall * copies:.1f} h wall on {est['n_devices']} devices)"
                     + ("  incl. control" if copies == 2 else ""))
    lines.append(f"  total    {total_hours:.1f} device-hours (reference: ~2,688 V100-hours "
                 f"for pretraining alone; compare only on the same device type)")
    return "\n".join(lines)
