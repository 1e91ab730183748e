"""The sizes of one GPU check run (full on a GPU, or --quick), and the small recipe its
resume and linear-probe checks train with."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffcv_bt.config import Recipe, load_recipe

BASE_RECIPE = Path(__file__).resolve().parent.parent / "rules" / "base.yaml"


@dataclass
class Plan:
    """Sizes and variants of one check run (full on a GPU, or --quick)."""

    device: str
    arch: str
    width: int
    projector: str
    batch: int
    resolutions: list[int]
    precisions: list[str]
    channels_last: list[bool]
    compile_res: list[int]
    warmup: int
    steps: int
    train_images: int
    val_images: int
    classes: int
    image_size: tuple[int, int]  # (height, width) around which images vary
    ckpt_model: tuple[str, int, str]  # arch, width, projector of the resume check
    ckpt_res: int
    ckpt_batch: int
    ckpt_steps: int
    eval_overrides: dict[str, Any]
    ddp_nproc: int
    ddp_loader_steps: int
    loader_min_seconds: float
    cores: int


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan of gpu_check's command line ``args`` (device already chosen)."""
    cuda = args.device == "cuda"
    cores = len(os.sched_getaffinity(0))
    if args.quick:
        plan = Plan(args.device, "resnet18", 8, "64-64", 16, [16, 32],
                    ["bf16"] if cuda else ["fp32"], [True, False] if cuda else [False],
                    [], 1, 3, 160, 40, 4, (350, 400), ("resnet18", 8, "64-64"), 16, 16, 3,
                    {"linear.res": 32, "linear.resize": 36, "linear.batch_size": 32},
                    1, 4 if cuda else 0, 0.0, cores)
    else:
        plan = Plan(args.device, "resnet50", 64, "8192-8192-8192", args.batch, [160, 192, 224],
                    ["bf16", "fp16"] if cuda else ["fp32"], [True, False] if cuda else [False],
                    [224] if cuda else [], 3, 8, args.images, max(args.images // 6, 64), 10,
                    (350, 400), ("resnet18", 32, "512-512"), 64, 64, 4, {},
                    args.ddp_nproc, 12 if cuda else 0, 2.0, cores)
    if args.no_compile or not cuda:
        plan.compile_res = []
    if args.batch_override:
        plan.batch = args.batch_override
    return plan


def small_recipe(plan: Plan, data_dir: Path, **extra: Any) -> Recipe:
    """base.yaml at the plan's resume-check sizes on ``data_dir``, with ``extra`` overrides."""
    arch, width, projector = plan.ckpt_model
    cuda = plan.device == "cuda"
    overrides = {"data.dir": str(data_dir), "data.num_workers": plan.cores,
                 "resolution.min_res": plan.ckpt_res, "resolution.max_res": plan.ckpt_res,
                 "model.arch": arch, "model.width": width, "model.projector": projector,
                 "optim.batch_size": plan.ckpt_batch, "optim.epochs": 2, "optim.warmup_epochs": 1,
                 "train.max_steps_per_epoch": plan.ckpt_steps, "train.log_every": 1,
                 # deterministic algorithms exist on the CPU; on CUDA some backward kernels
                 # (adaptive average pooling) have none, so a GPU resume matches to tolerance
                 "train.deterministic": not cuda, "train.precision": "auto" if cuda else "fp32",
                 "train.channels_last": cuda, "eval.protocol": "smoke", "run.stages": "pretrain",
                 **extra}
    return load_recipe(BASE_RECIPE, overrides)
