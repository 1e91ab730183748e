"""Barlow Twins pretraining: what it trains, on what, and its step; the stage skeleton
(``ffcv_bt.stage.trainer``) does the rest (DDP, precision, checkpoints, the stop vote, the
clock, the log).

The same code runs as a plain process, under torchrun or as SLURM tasks (see
ffcv_bt.distributed.process_group). Every epoch ends with an atomic checkpoint;
SIGTERM/SIGUSR1/USR2 save one mid-epoch (with the number of batches done, which a restart
skips, so the augmentations, derived from (seed, epoch, sample index), replay identically)
and exit.

Outputs in ``out_dir``: ``checkpoint.pt`` (full state), ``log.jsonl``, ``config.yaml``,
and at the end ``<arch>.pth`` (torchvision-format backbone) and ``result.json``.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffcv_bt.atomic_files import atomic_torch_save, atomic_write_text
from ffcv_bt.config import Recipe
from ffcv_bt.data.manifest import beton_path
from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.method.lars import LARS, param_groups_for_lars
from ffcv_bt.method.model import BarlowTwins
from ffcv_bt.method.schedules import lr_at, resolution_of_recipe
from ffcv_bt.preflight import check_device_settings
from ffcv_bt.stage.checkpoints import to_cpu
from ffcv_bt.stage.provenance import device_description
from ffcv_bt.stage.skeleton import per_rank_batch, run_stage
from ffcv_bt.stage.trainer import StageTrainer
from ffcv_bt.train.monitor import TrainingMonitor
from ffcv_bt.train.step import barlow_step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(recipe: Recipe) -> BarlowTwins:
    """Backbone + projector as the recipe says."""
    m = recipe.model
    return BarlowTwins(m["arch"], m["projector"], width=m["width"], small_stem=m["small_stem"],
                       zero_init_residual=m["zero_init_residual"])


class Pretrainer(StageTrainer):
    """One pretraining run of a recipe into ``out_dir`` (resumes if a checkpoint exists)."""

    name = "pretrain"

    def __init__(self, recipe: Recipe, out_dir: str | Path, dist: DistInfo) -> None:
        seed_everything(recipe.train.seed)
        check_device_settings(recipe, dist.device.type == "cuda")
        if recipe.train.deterministic:
            torch.use_deterministic_algorithms(True)
        elif dist.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes within a resolution
        self.epochs, self.log_every = recipe.optim.epochs, recipe.train.log_every
        super().__init__(recipe, out_dir, dist, recipe.train.precision)
        self.monitor = TrainingMonitor(recipe, self.out_dir, dist)

    def create_loaders(self) -> tuple[Any, None]:
        data, aug = self.recipe.data, self.recipe.aug
        per_rank = per_rank_batch(self.recipe.optim.batch_size, self.dist, "optim.batch_size")
        loader = make_pretrain_loader(
            str(beton_path(data["dir"], "train")), batch_size_per_rank=per_rank,
            num_workers=data["num_workers"], aug=AugmentationParams.from_config(aug),
            res=resolution_of_recipe(0, self.recipe.resolution), seed=self.recipe.train.seed,
            device=self.device, distributed=self.dist.distributed, order=data["order"],
            in_memory=data["in_memory"], channels_last=self.channels_last, augment_on=aug.device)
        if self.device.type == "cpu" and aug.device == "gpu":
            warnings.warn("aug.device=gpu with a CPU training device: the augmentations run as "
                          "torch ops in the training process, far slower than the loader's "
                          "numba workers (python -m bench.loader); use aug.device=cpu on CPUs", stacklevel=2)
        return loader, None

    def create_model(self) -> tuple[BarlowTwins, torch.nn.Module]:
        model, wrapped = self.wrap(build_model(self.recipe))
        if self.recipe.train.compile:
            if self.dist.distributed:
                # SyncBatchNorm breaks the compiled graph at every BN layer (a collective
                # inside each): no gain measured, so compile stays off under DDP.
                warnings.warn("train.compile is ignored with several ranks (SyncBatchNorm "
                              "breaks the graph at every BN)", stacklevel=2)
            else:
                wrapped = torch.compile(wrapped)
        return model, wrapped

    def create_optimizer(self) -> LARS:
        o = self.recipe.optim
        return LARS(param_groups_for_lars(self.model, o["lr_weights"], o["lr_biases"]), lr=0.0,
                    weight_decay=o["weight_decay"], momentum=o["momentum"], eta=o["eta"])

    # ----- the epoch and the step -------------------------------------------------------
    def begin_epoch(self) -> None:
        self.resolution = resolution_of_recipe(self.epoch, self.recipe.resolution)
        self.train_loader.set_resolution(self.resolution)
        super().begin_epoch()

    def steps_per_epoch(self) -> int:
        limit = self.recipe.train.max_steps_per_epoch
        return min(len(self.train_loader), limit) if limit else len(self.train_loader)

    def learning_rate(self, base_lr: float, batch: int, steps: int) -> float:
        """Warmup then cosine, per step (``lr_at``), times the group's base rate."""
        o = self.recipe.optim
        return lr_at(self.step, steps, o["epochs"], o["batch_size"], o["warmup_epochs"],
                     o["final_lr_ratio"]) * base_lr

    def train_step(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """One optimisation step (see :func:`barlow_step`); returns the loss on the device."""
        return barlow_step(self.ddp_model, self.optimizer, self.scaler, self.amp_dtype,
                           self.recipe.loss, view1, view2)

    def window_fields(self) -> dict[str, Any]:
        return {"resolution": self.resolution}

    def log(self, record: dict[str, Any]) -> None:
        super().log(record)
        if self.dist.is_main:
            self.monitor.on_train_record(record)

    # ----- around the epochs --------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "config.yaml", self.recipe.to_yaml())
        return super().run()

    def between_epochs(self) -> None:
        """The online monitor (ffcv_bt.train.monitor) when due, on its own clock (the
        pretraining clock is stopped then); also one a restart interrupted."""
        if self.monitor.due(self.epoch):
            self.monitor.run(self.model, self.epoch, self.step, self.clock)

    def on_stop(self, batches_done: int) -> str:
        self.save_checkpoint(batches_done)
        return f"checkpoint saved at epoch {self.epoch}, batch {batches_done}"

    def checkpoint_extras(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {"rng": {"torch": torch.get_rng_state(),
                        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
                        "python": random.getstate()},
                "config": self.recipe.values}

    def restore(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(tuple(state["rng"]["numpy"]))  # type: ignore[arg-type]
        random.setstate(_to_tuple(state["rng"]["python"]))

    def result(self) -> dict[str, Any]:
        """Save the torchvision-format backbone; return the result (run_stage writes it)."""
        self.monitor.close()
        arch = self.recipe.model.arch
        result = {
            "epochs": self.epochs, "steps": self.step, "final_epoch_loss": self.last_loss,
            "device_seconds": self.clock.seconds, "device_hours": self.clock.device_hours,
            "monitor_device_seconds": self.monitor.clock.seconds,
            "monitor_device_hours": self.monitor.clock.device_hours,
            "backbone": str(self.out_dir / f"{arch}.pth"), "checkpoint": str(self.ckpt_path),
            **device_description(self.device),
        }
        if self.dist.is_main:
            atomic_torch_save(self.out_dir / f"{arch}.pth", to_cpu(self.model.backbone_state_dict()))
        return result


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def pretrain(recipe: Recipe, out_dir: str | Path, dist: DistInfo) -> dict[str, Any]:
    """Run (or resume) pretraining; return result.json's content. Skips a finished run."""
    return run_stage(out_dir, lambda: Pretrainer(recipe, out_dir, dist).run(), dist)


def main(argv: list[str]) -> int:
    """``python -m ffcv_bt.train.pretrain --config RECIPE --out DIR [--section.key=value ...]``."""
    import argparse

    from ffcv_bt.config import load_recipe, parse_overrides
    from ffcv_bt.distributed.process_group import process_group

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (rules/*.yaml)")
    parser.add_argument("--out", required=True, help="output folder (resumes if it has a checkpoint)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args, rest = parser.parse_known_args(argv)
    recipe = load_recipe(args.config, parse_overrides(rest))
    with process_group() as dist:
        result = pretrain(recipe, args.out, dist)
    if dist.is_main:
        print(f"pretraining done: backbone {result['backbone']}, "
              f"{result['device_hours']:.4f} device-hours")
    return 0


if __name__ == "__main__":
    from ffcv_bt.cli import run_command

    raise SystemExit(run_command(main))
