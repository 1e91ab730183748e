"""The GPU check's part e: frozen features in true fp32 against bf16, and their speed: the
benchmark backbone's frozen forward (torch only), and one linear-probe epoch through
ffcv_bt.evaluation.trained (with the FFCV loader)."""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.gpu_plan import Plan, small_recipe
from ffcv_bt.stage.clock import sync_device


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for matmuls and cuDNN on (True) or off (False, true fp32 as the reference
    evaluates), restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def feature_differences(f32: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """How far ``other`` features are from the fp32 ones: the max |diff| over the max |f|,
    and the max relative difference where |f| is at least 1% of the max."""
    diff = (other - f32).abs()
    big = f32.abs() >= 0.01 * f32.abs().max()
    return {"features_max_abs_diff_over_max_abs": float(diff.max() / f32.abs().max()),
            "features_max_relative_diff": float((diff[big] / f32.abs()[big]).max()),
            "features_compared": int(big.sum())}


def linear_probe_check(plan: Plan, device: torch.device, data_dir: Path, work: Path
                       ) -> dict[str, Any]:
    """One linear-probe epoch through ffcv_bt.evaluation.trained (random-init backbone of the benchmark
    architecture), a second epoch timed for images/s, and fp32 vs bf16 frozen features."""
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.evaluation.trained import Evaluation

    recipe = small_recipe(plan, data_dir, **{
        "model.arch": plan.arch, "model.width": plan.width, "model.projector": plan.projector,
        "eval.protocol": "standard", **plan.eval_overrides})
    ev = Evaluation(recipe, "linear", "random", work / "linear", DistInfo(device=device))
    ev.out_dir.mkdir(parents=True)
    start = time.perf_counter()
    ev.run_epoch()  # train (loader JIT included), validate, frozen check, checkpoint
    first_epoch = time.perf_counter() - start
    sync_device(device)
    start = time.perf_counter()
    ev.train_epoch()
    sync_device(device)
    seconds = time.perf_counter() - start
    images = len(ev.train_loader) * ev.settings.batch_size
    first = None
    for batch, _ in ev.val_loader:  # a whole pass: never leave an FFCV epoch half-read
        if first is None:
            first = batch.clone()
    backbone = ev.model.backbone.eval()
    with torch.no_grad():
        with tf32(False):
            f32 = backbone(first).float()
        with tf32(True):
            f_tf32 = backbone(first).float()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = backbone(first).float()
    record = {"protocol": "linear", "res": ev.settings.res, "batch": ev.settings.batch_size,
              "precision": ev.settings.precision, "first_epoch_seconds": first_epoch,
              "images_per_s": images / seconds, "top1_after_one_epoch": ev.history[-1]["top1"],
              "train_loss": ev.history[-1]["train_loss"], **feature_differences(f32, bf16),
              "features_tf32_max_abs_diff_over_max_abs": float((f_tf32 - f32).abs().max()
                                                               / f32.abs().max())}
    record["ok"] = (math.isfinite(record["train_loss"])
                    and record["features_max_abs_diff_over_max_abs"] < 0.1)
    print(f"  linear probe: {record['images_per_s']:,.0f} images/s at {record['res']} px, "
          f"fp32 vs bf16 features: max |diff| / max |f| = "
          f"{record['features_max_abs_diff_over_max_abs']:.2e}", flush=True)
    return record


def frozen_forward_check(plan: Plan, device: torch.device) -> dict[str, Any]:
    """The frozen evaluation forward of the benchmark backbone (eval mode): images/s in true
    fp32 (TF32 off, as the reference), and the bf16 features' difference to fp32."""
    from ffcv_bt.method.model import BarlowTwins

    res = plan.eval_overrides.get("linear.res", 224)
    batch = plan.ckpt_batch if device.type == "cpu" else 256
    torch.manual_seed(0)
    backbone = BarlowTwins(plan.arch, plan.projector, width=plan.width).backbone.to(device).eval()
    x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad(), tf32(False):
        f32 = backbone(x).float()
        sync_device(device)
        start, passes = time.perf_counter(), 3
        for _ in range(passes):
            backbone(x)
        sync_device(device)
        seconds = time.perf_counter() - start
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = backbone(x).float()
    record = {"res": res, "batch": batch, "fp32_images_per_s": batch * passes / seconds,
              **feature_differences(f32, bf16)}
    record["ok"] = bool(math.isfinite(record["fp32_images_per_s"])
                        and record["features_max_abs_diff_over_max_abs"] < 0.1)
    print(f"  frozen forward fp32: {record['fp32_images_per_s']:,.0f} images/s at {res} px; bf16 vs "
          f"fp32 max |diff| / max |f| = {record['features_max_abs_diff_over_max_abs']:.2e}", flush=True)
    return record
