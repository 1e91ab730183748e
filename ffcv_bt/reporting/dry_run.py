"""``run.py --dry-run``: the plan of a recipe and its estimated cost, without running it;
and ``fit_to_budget``: the epochs that fit a device-hour budget.

The GPU-hour estimate divides the images each stage processes by a throughput per device.
That throughput comes from the device file of the recipe's ``estimate.device``
(``results/devices/<slug>.json``, written by python -m bench.gpu_check on that device: measured
per resolution) when it exists, else from the recipe's ``estimate`` section (figures
derived from the paper, given at max_res). Where a resolution was not measured, the cost
of an image scales with its pixels, (res / measured res)^2.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffcv_bt.config import Recipe
from ffcv_bt.data.manifest import MANIFEST_NAME, Manifest
from ffcv_bt.errors import ConfigError
from ffcv_bt.method.schedules import (
    lr_at,
    pretrain_cost_factor,
    resolution_segments,
    scaled_schedule,
    schedule_hours,
)
from ffcv_bt.reporting import device_profile
from ffcv_bt.reporting.published import BASELINE_HARDWARE, BASELINE_HOURS

IMAGENET_TRAIN_IMAGES = 1_281_167
MAX_EPOCHS = 100_000  # optim.epochs' declared range


def _train_images(recipe: Recipe) -> tuple[int, str, dict[int, int]]:
    manifest = Path(recipe.data.dir) / MANIFEST_NAME
    if manifest.is_file():
        info = Manifest.read(recipe.data.dir)
        return info.num_images("train"), f"{manifest}", info.subset_counts()
    n = IMAGENET_TRAIN_IMAGES
    return n, f"{manifest} not found: assuming ImageNet-1k ({n:,} images)", \
        {1: round(0.01 * n), 10: round(0.1 * n)}


@dataclass(frozen=True)
class Throughput:
    """Per-device rates used for the estimate, and where they come from."""

    device: str
    source: str                      # printable provenance
    profile: dict[str, Any] | None   # the device file, when measured
    paper_images_per_s: float        # the recipe's figure at max_res (used without a file)
    max_res: int
    eval_rate: float

    @property
    def measured(self) -> bool:
        return self.profile is not None

    def pretrain_rate(self, res: int) -> float:
        """Two-view images/s per device at ``res`` (0 when unknown)."""
        if self.profile is not None:
            return device_profile.step_images_per_s(self.profile, res)
        return self.paper_images_per_s * (self.max_res / res) ** 2


def throughput(recipe: Recipe, devices_dir: str | Path | None = None) -> Throughput:
    """The measured device file of ``estimate.device`` if present, else the recipe's figures."""
    est = recipe.estimate
    path = device_profile.device_file(est["device"], devices_dir)
    max_res = recipe.resolution.max_res
    if path.is_file():
        try:
            profile = device_profile.load(path)
        except ValueError as exc:
            raise ConfigError(f"estimate.device {est['device']!r}: {exc}") from None
        model = profile.get("model", {})
        return Throughput(profile["device"],
                          f"measured: {path} ({profile['date']}; {model.get('arch')} projector "
                          f"{model.get('projector')}, {model.get('batch_per_device')} images per "
                          f"device per step)", profile, est["pretrain_images_per_s"], max_res,
                          float(profile["eval_images_per_s"]))
    return Throughput(est["device"],
                      f"the recipe's estimate section (paper-derived, not measured here; no device "
                      f"file {path}: write one with python -m bench.gpu_check on that device)",
                      None, est["pretrain_images_per_s"], max_res, est["eval_images_per_s"])


def pretrain_device_hours(recipe: Recipe, tp: Throughput, n_train: int) -> float:
    """Estimated pretraining device-hours (devices x wall hours) of the recipe."""
    if tp.pretrain_rate(recipe.resolution.max_res) <= 0:
        return math.nan
    return schedule_hours(recipe.resolution, recipe.optim.epochs, n_train, tp.pretrain_rate)


def fit_to_budget(recipe: Recipe, hours: float, devices_dir: str | Path | None = None
                  ) -> dict[str, Any]:
    """Overrides (``section.key -> value``) giving the most epochs whose estimated
    pretraining device-hours fit ``hours``, with ramps and warmup scaled proportionally.

    Uses the same throughput as ``describe_plan`` (device file, else the recipe's figures).
    ConfigError when ``hours`` is below the cost of one epoch.
    """
    if not hours > 0 or math.isinf(hours):
        raise ConfigError(f"--budget-hours must be a positive number of device-hours, got {hours}")
    tp = throughput(recipe, devices_dir)
    n_train, _, _ = _train_images(recipe)
    if tp.pretrain_rate(recipe.resolution.max_res) <= 0:
        raise ConfigError(f"--budget-hours: no throughput for {tp.device} (estimate."
                          f"pretrain_images_per_s is 0 and there is no device file)")
    r = dict(recipe.resolution)

    def cost(epochs: int) -> float:
        fitted = scaled_schedule(recipe, epochs)
        res = {**r, "start_ramp": fitted["resolution.start_ramp"],
               "end_ramp": fitted["resolution.end_ramp"]}
        return schedule_hours(res, epochs, n_train, tp.pretrain_rate)

    one = cost(1)
    if one > hours:
        raise ConfigError(
            f"--budget-hours {hours:g}: below the cost of one pretraining epoch, "
            f"{one:.3g} device-hours ({n_train:,} images at {r['min_res']} px on {tp.device}; "
            f"throughput from {'the device file' if tp.measured else 'the recipe (paper-derived)'}); "
            f"raise the budget or use a smaller data set")
    lo, hi = 1, MAX_EPOCHS  # cost(lo) <= hours; find the largest such epochs
    if cost(hi) <= hours:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= hours:
            lo = mid
        else:
            hi = mid
    while lo < MAX_EPOCHS and cost(lo + 1) <= hours:  # rounding of the ramps: be sure
        lo += 1
    return scaled_schedule(recipe, lo)


def _setting(profile: dict[str, Any], res: int) -> str:
    """How the step was run at ``res`` (measured there), or that it was scaled."""
    entry = profile["pretrain"].get(str(res))
    if entry is None:
        return " (scaled from the nearest measured resolution)"
    return (f" ({entry['precision']}, {'channels_last' if entry['channels_last'] else 'contiguous'}"
            f"{', torch.compile' if entry['compile'] else ''})")


def _gpus_here(recipe: Recipe) -> int:
    """GPUs of this machine, else the GPUs per node the recipe would use."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no driver: count nothing
        count = 0
    return count or max(1, min(recipe.estimate.n_devices, recipe.slurm.gpus_per_node))


def loader_lines(recipe: Recipe, tp: Throughput, cores: int | None = None,
                 gpus: int | None = None) -> list[str]:
    """Loader cores per GPU needed at each resolution of the schedule, and warnings."""
    if tp.profile is None:
        return ["loader cores per GPU: unknown without a device file (python -m bench.gpu_check "
                "measures the loader's pairs/s per core)"]
    if tp.profile.get("loader") is None:
        return ["loader cores per GPU: unknown (the device file was measured without ffcv: "
                "run python -m bench.gpu_check where ffcv imports)"]
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    gpus = _gpus_here(recipe) if gpus is None else gpus
    per_gpu = cores / gpus
    lines = [f"loader cores per GPU to feed the measured step (+1 core for the training process); "
             f"this machine: {cores} cores for {gpus} GPU(s) = {per_gpu:.1f} per GPU; "
             f"data.num_workers {recipe.data.num_workers}, slurm.cpus_per_task "
             f"{recipe.slurm.cpus_per_task}:"]
    aug_device = recipe.aug.device
    table = device_profile.loader_table(tp.profile, aug_device)
    if aug_device == "gpu":
        lines.append("  aug.device gpu: " + (
            "the workers' part as measured (decode, crop, flip)"
            if table != "pairs_per_s_per_core" else
            "no measurement of its workers in the device file; the CPU loader's rates "
            "(an upper bound on the cores)")
            + "; the step's rate does not include the device-side ops (gpu_check: ms per pair)")
    warnings = []
    for res in sorted({res for _, _, res in resolution_segments(recipe)}):
        need = device_profile.loader_cores_needed(tp.profile, res, aug_device)
        lines.append(f"  {res} px: {tp.pretrain_rate(res):,.0f} images/s per GPU / "
                     f"{device_profile.loader_pairs_per_s_per_core(tp.profile, res, aug_device):,.0f} pairs/s "
                     f"per core = {need:.1f} loader cores")
        total = math.ceil(need) + 1
        if per_gpu < total:
            warnings.append(f"WARNING: at {res} px a GPU needs {total} cores ({need:.1f} for the "
                            f"loader + 1), this machine has {per_gpu:.1f} per GPU: the loader "
                            f"will limit the step"
                            + (" (aug.device: gpu moves the colour jitter, grayscale, blur and "
                               "solarize to the GPU)" if aug_device == "cpu" else ""))
        if recipe.data.num_workers < need:
            warnings.append(f"WARNING: at {res} px data.num_workers={recipe.data.num_workers} "
                            f"is below the {need:.1f} loader cores needed")
        if recipe.slurm.cpus_per_task < total:
            warnings.append(f"WARNING: at {res} px slurm.cpus_per_task="
                            f"{recipe.slurm.cpus_per_task} is below the {total} cores needed")
    return lines + warnings


def _monitor_cost(recipe: Recipe, tp: Throughput, n_train: int) -> tuple[str, float]:
    """The plan's line for the online monitor (ffcv_bt.train.monitor) and its device-hours: its
    frozen forwards at the evaluation rate ("" and 0 when it is off or not pretraining)."""
    from ffcv_bt.train.monitor import images_per_pass, monitor_epochs

    m = recipe.monitor
    passes = len(monitor_epochs(m["every_epochs"], recipe.optim.epochs))
    if not passes or "pretrain" not in recipe.stages:
        return "", 0.0
    images = passes * images_per_pass(min(m["train_images"], n_train), m["val_images"])
    head = f"  monitor  {images:>16,.0f} images"
    if tp.eval_rate <= 0:
        return f"{head}: no measured throughput ({passes} passes)", 0.0
    hours = images / tp.eval_rate / 3600
    return (f"{head}: {hours:10.1f} device-hours ({passes} passes; reported apart as "
            f"monitor_device_hours)", hours)


def describe_plan(recipe: Recipe, devices_dir: str | Path | None = None,
                  cores: int | None = None, gpus: int | None = None) -> str:
    """Human-readable plan: data, stages, schedules and a GPU-hour estimate per stage.

    ``devices_dir`` (results/devices), ``cores`` (this process's CPU affinity) and ``gpus``
    (this machine's) are parameters for tests.
    """
    o, est = recipe.optim, recipe.estimate
    n_train, source, subsets = _train_images(recipe)
    tp = throughput(recipe, devices_dir)
    steps = n_train // o["batch_size"]
    lines = [f"recipe {recipe.name}: {' + '.join(recipe.files)}",
             f"protocol: {recipe.protocol_file}",
             f"data: {recipe.data.dir} ({n_train:,} train images; {source})",
             f"stages: {', '.join(recipe.stages)}"
             + ("  (+ random-init control for each evaluation)" if recipe.eval.control else "")
             + ("  (+ supervised ceiling: trained, then each evaluation)"
                if recipe.eval.supervised else ""),
             f"model: {recipe.model.arch} width {recipe.model.width}, projector "
             f"{recipe.model.projector}; loss lambd {recipe.loss.lambd}, "
             f"scale {recipe.loss.scale_loss:g}",
             f"optimizer: LARS momentum {o['momentum']:g}, eta {o['eta']:g}, weight decay "
             f"{o['weight_decay']:g}; lr {o['lr_weights']:g} weights / {o['lr_biases']:g} biases "
             f"x batch/256, {o['warmup_epochs']:g} warmup epochs, cosine to {o['final_lr_ratio']:g}x",
             f"evaluation: {recipe.protocol_file} (linear probe lr {recipe.linear.lr:g}; "
             f"semi lr {recipe.semi.lr_backbone:g} backbone / "
             f"{recipe.semi.lr_classifier:g} classifier)",
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
    lin, semi = recipe.linear, recipe.semi
    stage_images = {
        "pretrain": pretrain_cost_factor(recipe) * n_train,
        "linear": lin["epochs"] * n_train,
        "semi1": semi["epochs"] * subsets.get(1, round(0.01 * n_train)),
        "semi10": semi["epochs"] * subsets.get(10, round(0.1 * n_train)),
        "knn": n_train,  # one frozen pass over the train features (val is small)
        "logreg": n_train,  # the same pass; the L-BFGS fit on the features is small beside it
    }
    lines.append(f"throughput: {tp.source}")
    if tp.measured:
        rates = ", ".join(f"{res} px {tp.pretrain_rate(res):,.0f}{_setting(tp.profile, res)}"
                          for res in sorted({res for _, _, res in resolution_segments(recipe)}))
        lines.append(f"  two-view images/s per device: {rates}; evaluation {tp.eval_rate:,.0f}")
    lines.append(f"estimated cost on {est['n_devices']}x {tp.device}:")
    total_hours = 0.0
    for stage in recipe.stages:
        if stage == "pretrain":
            hours = pretrain_device_hours(recipe, tp, n_train)
        else:
            hours = stage_images[stage] / tp.eval_rate / 3600 if tp.eval_rate > 0 else math.nan
        if math.isnan(hours):
            lines.append(f"  {stage:8s} {stage_images[stage]:>16,.0f} images: no measured "
                         f"throughput (set estimate.* or run python -m bench.gpu_check)")
            continue
        extra = [] if stage == "pretrain" else \
            [name for name, on in (("control", recipe.eval.control),
                                   ("supervised", recipe.eval.supervised)) if on]
        copies = 1 + len(extra)
        total_hours += hours * copies
        wall = hours / est["n_devices"]
        lines.append(f"  {stage:8s} {stage_images[stage]:>16,.0f} images: {hours * copies:10.1f} "
                     f"device-hours ({wall * copies:.1f} h wall on {est['n_devices']} devices)"
                     + (f"  incl. {' and '.join(extra)}" if extra else ""))
        if stage == "pretrain" and recipe.eval.supervised:
            # one view forward + backward: about half a two-view pretraining step
            total_hours += hours / 2
            lines.append(f"  supervised {stage_images[stage]:>14,.0f} images: "
                         f"{hours / 2:10.1f} device-hours ({hours / 2 / est['n_devices']:.1f} h "
                         f"wall on {est['n_devices']} devices)  one view: ~half a pretraining step")
    monitor_line, monitor_hours = _monitor_cost(recipe, tp, n_train)
    if monitor_line:
        lines.append(monitor_line)
        total_hours += monitor_hours
    lines.append(f"  total    {total_hours:.1f} device-hours (reference: ~{BASELINE_HOURS:,.0f} "
                 f"{BASELINE_HARDWARE}-hours for pretraining alone; compare only on the same "
                 f"device type)")
    lines += loader_lines(recipe, tp, cores, gpus)
    return "\n".join(lines)
