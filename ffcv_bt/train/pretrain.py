"""Barlow Twins pretraining: the loop, checkpoints, resume, signals, logging.

``Pretrainer.__init__`` reads as a table of contents: loader, model, optimiser, precision,
then resume. The same code runs as a plain process, under torchrun or as SLURM tasks
(see ffcv_bt.distributed.process_group). Every epoch ends with an atomic checkpoint; SIGTERM/SIGUSR1/USR2
save one mid-epoch (with the number of batches done, which a restart skips, so the
augmentations, derived from (seed, epoch, sample index), replay identically) and exit.

Outputs in ``out_dir``: ``checkpoint.pt`` (full state), ``log.jsonl``, ``config.yaml``,
and at the end ``<arch>.pth`` (torchvision-format backbone) and ``result.json``.
"""
from __future__ import annotations

import math
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ffcv_bt.atomic_files import atomic_torch_save, atomic_write_text
from ffcv_bt.config import Recipe
from ffcv_bt.data.manifest import beton_path
from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader
from ffcv_bt.distributed.collectives import barrier
from ffcv_bt.distributed.preemption import StopSignals
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import NonFiniteLoss, Preempted
from ffcv_bt.method.lars import LARS, param_groups_for_lars, set_learning_rates
from ffcv_bt.method.model import BarlowTwins, convert_sync_batchnorm
from ffcv_bt.method.schedules import lr_at, resolution_of_recipe
from ffcv_bt.preflight import check_device_settings
from ffcv_bt.stage.checkpoints import load_checkpoint, save_checkpoint, to_cpu
from ffcv_bt.stage.clock import StageClock
from ffcv_bt.stage.mixed_precision import autocast_dtype, set_tf32
from ffcv_bt.stage.provenance import device_description
from ffcv_bt.stage.skeleton import append_log, per_rank_batch, run_stage, set_stage_threads
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


class Pretrainer:
    """One pretraining run of a recipe into ``out_dir`` (resumes if a checkpoint exists)."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, dist: DistInfo) -> None:
        self.recipe, self.dist = recipe, dist
        self.out_dir = Path(out_dir)
        self.ckpt_path = self.out_dir / "checkpoint.pt"
        self.device = dist.device
        seed_everything(recipe.train.seed)
        check_device_settings(recipe, self.device.type == "cuda")
        if recipe.train.deterministic:
            torch.use_deterministic_algorithms(True)
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes within a resolution
        self.loader = self.create_loader()
        self.model, self.ddp_model = self.create_model()
        self.optimizer = self.create_optimizer()
        self.amp_dtype, self.scaler = self.create_precision()
        self.epoch, self.step, self.skip_batches, prior = self.resume()
        self.clock = StageClock(self.device, dist.world_size, prior_seconds=prior)
        self.stop = StopSignals()
        self.monitor = TrainingMonitor(recipe, self.out_dir, dist)

    # ----- construction -------------------------------------------------------------
    def create_loader(self):
        data, r = self.recipe.data, self.recipe.resolution
        per_rank = per_rank_batch(self.recipe.optim.batch_size, self.dist, "optim.batch_size")
        loader = make_pretrain_loader(
            str(beton_path(data["dir"], "train")), batch_size_per_rank=per_rank,
            num_workers=data["num_workers"], aug=AugmentationParams.from_config(self.recipe.aug),
            res=resolution_of_recipe(0, r),
            seed=self.recipe.train.seed, device=self.device,
            distributed=self.dist.distributed, order=data["order"], in_memory=data["in_memory"],
            channels_last=self.channels_last, augment_on=self.recipe.aug.device)
        if self.device.type == "cpu" and self.recipe.aug.device == "gpu":
            warnings.warn("aug.device=gpu with a CPU training device: the augmentations run as "
                          "torch ops in the training process, far slower than the loader's "
                          "numba workers (python -m bench.loader); use aug.device=cpu on CPUs", stacklevel=2)
        set_stage_threads(self.dist, self.recipe.train.cpu_threads)
        return loader

    @property
    def channels_last(self) -> bool:
        return self.recipe.train.channels_last and self.device.type == "cuda"

    def create_model(self) -> tuple[BarlowTwins, torch.nn.Module]:
        model = build_model(self.recipe).to(self.device)
        if self.dist.distributed:
            model = convert_sync_batchnorm(model, self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        wrapped: torch.nn.Module = model
        if self.dist.distributed:
            wrapped = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
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
        return LARS(param_groups_for_lars(self.model), lr=0.0, weight_decay=o["weight_decay"],
                    momentum=o["momentum"], eta=o["eta"])

    def create_precision(self) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
        set_tf32(self.recipe.train.precision)
        dtype = autocast_dtype(self.recipe.train.precision, self.device)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return dtype, scaler

    # ----- checkpoints ----------------------------------------------------------------
    def resume(self) -> tuple[int, int, int, float]:
        """(epoch, step, batches to skip, device seconds so far) from the newest readable
        checkpoint (the previous one if the newest is corrupt), if any."""
        state = load_checkpoint(self.ckpt_path)
        if state is None:
            return 0, 0, 0, 0.0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(tuple(state["rng"]["numpy"]))  # type: ignore[arg-type]
        random.setstate(_to_tuple(state["rng"]["python"]))
        if self.dist.is_main:
            print(f"resuming {self.ckpt_path}: epoch {state['epoch']}, step {state['step']}, "
                  f"batch {state['batch_in_epoch']}", file=sys.stderr)
        return state["epoch"], state["step"], state["batch_in_epoch"], state["device_seconds"]

    def save_checkpoint(self, epoch: int, batch_in_epoch: int) -> None:
        """Full checkpoint, CPU tensors, the previous one kept (rank 0 writes; all wait)."""
        if self.dist.is_main:
            np_state = np.random.get_state()
            save_checkpoint(self.ckpt_path, {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "epoch": epoch, "step": self.step, "batch_in_epoch": batch_in_epoch,
                "device_seconds": self.clock.seconds,
                "rng": {"torch": torch.get_rng_state(),
                        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()),
                                  *np_state[2:]],
                        "python": random.getstate()},
                "config": self.recipe.values,
            })
        barrier()

    # ----- the loop -------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; return the result (also written to result.json)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "config.yaml", self.recipe.to_yaml())
        epochs = self.recipe.optim.epochs
        last_loss = math.nan
        with self.stop:
            self.run_monitor()  # one a restart interrupted
            while self.epoch < epochs:
                last_loss = self.train_epoch(self.epoch)
                self.epoch += 1
                self.skip_batches = 0
                self.save_checkpoint(self.epoch, 0)
                self.run_monitor()
        self.monitor.close()
        return self.finish(last_loss)

    def run_monitor(self) -> None:
        """The online monitor (ffcv_bt.train.monitor) when due, on its own clock, between epochs
        (the pretraining clock is stopped then)."""
        if self.monitor.due(self.epoch):
            self.monitor.run(self.model, self.epoch, self.step, self.clock)

    def steps_per_epoch(self) -> int:
        limit = self.recipe.train.max_steps_per_epoch
        return min(len(self.loader), limit) if limit else len(self.loader)

    def train_epoch(self, epoch: int) -> float:
        """One epoch; returns its mean loss.

        The host never waits for the device inside a step: losses accumulate on the device
        and are read (and checked for NaN/inf) at each log interval and before any
        checkpoint, so a checkpoint never holds weights updated by a non-finite loss.
        """
        r, o = self.recipe.resolution, self.recipe.optim
        res = resolution_of_recipe(epoch, r)
        self.loader.set_resolution(res)
        self.loader.set_epoch(epoch)
        steps = self.steps_per_epoch()
        log_every = self.recipe.train.log_every
        self.model.train()
        bar = tqdm(total=steps, initial=self.skip_batches, disable=not self.dist.is_main,
                   desc=f"pretrain epoch {epoch + 1}/{o['epochs']} @{res}px", leave=False)
        epoch_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        window = _LossWindow(self.device)
        n_loss, window_images = 0, 0
        first_step = self.step - self.skip_batches  # the step number of this epoch's batch 0
        self.clock.start()
        window_start = self.clock.seconds
        for batch_index, (view1, view2) in enumerate(self.loader):
            if batch_index >= steps:
                break
            if batch_index < self.skip_batches:  # replaying a preempted epoch
                continue
            lr_mult = lr_at(self.step, steps, o["epochs"], o["batch_size"], o["warmup_epochs"],
                            o["final_lr_ratio"])
            set_learning_rates(self.optimizer, lr_mult, o["lr_weights"], o["lr_biases"])
            loss = self.train_step(view1, view2)
            window.add(loss, self.step)
            epoch_loss += loss
            n_loss += 1
            window_images += view1.shape[0] * self.dist.world_size
            self.step += 1
            bar.update(1)
            stop = self.stop.agreed()
            if self.step % log_every == 0 or batch_index == steps - 1 or stop:
                mean_loss = window.check(self.ckpt_path, epoch, first_step)  # waits for the device
                now = self.clock.seconds
                bar.set_postfix(loss=f"{mean_loss:.4g}")
                self.log({"epoch": epoch, "step": self.step, "lr_weights": lr_mult * o["lr_weights"],
                          "lr_biases": lr_mult * o["lr_biases"], "loss": mean_loss,
                          "images_per_s": window_images / max(now - window_start, 1e-9),
                          "resolution": res, "elapsed": now})
                window_start, window_images = now, 0
            if stop:
                self.clock.stop()
                bar.close()
                self.save_checkpoint(epoch, batch_index + 1)
                self.stop.hand_over()
                raise Preempted(f"signal {stop}: checkpoint saved at epoch {epoch}, "
                                f"batch {batch_index + 1}")
        self.clock.stop()
        bar.close()
        return float(epoch_loss) / max(n_loss, 1)

    def train_step(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """One optimisation step (see :func:`barlow_step`); returns the loss on the device."""
        return barlow_step(self.ddp_model, self.optimizer, self.scaler, self.amp_dtype,
                           self.recipe.loss, view1, view2)

    def log(self, record: dict[str, Any]) -> None:
        append_log(self.out_dir, record, self.dist)
        if self.dist.is_main:
            self.monitor.on_train_record(record)

    def finish(self, last_loss: float) -> dict[str, Any]:
        """Save the torchvision-format backbone; return the result (run_stage writes it)."""
        arch = self.recipe.model.arch
        result = {
            "epochs": self.recipe.optim.epochs, "steps": self.step,
            "final_epoch_loss": last_loss, "device_seconds": self.clock.seconds,
            "device_hours": self.clock.device_hours,
            "monitor_device_seconds": self.monitor.clock.seconds,
            "monitor_device_hours": self.monitor.clock.device_hours,
            "backbone": str(self.out_dir / f"{arch}.pth"), "checkpoint": str(self.ckpt_path),
            **device_description(self.device),
        }
        if self.dist.is_main:
            atomic_torch_save(self.out_dir / f"{arch}.pth", to_cpu(self.model.backbone_state_dict()))
        return result



class _LossWindow:
    """Losses of the steps since the last log, kept on the device: the sum, and the first
    step whose loss was not finite (found without asking the device each step)."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, step: int) -> None:
        self.total += loss.double()
        bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)
        self.count += 1

    def check(self, checkpoint: Path, epoch: int, first_step: int) -> float:
        """The window's mean loss; NonFiniteLoss if any step's loss was NaN or inf. Resets.

        ``first_step`` is the step number of the epoch's first batch (to name the batch).
        """
        bad_step = int(self.first_bad_step)
        mean = float(self.total) / max(self.count, 1)
        if bad_step >= 0:
            raise NonFiniteLoss(
                f"non-finite loss at step {bad_step} (epoch {epoch}, batch {bad_step - first_step})"
                f"; the last good checkpoint "
                f"{checkpoint} is kept. Lower the learning rate or use precision bf16/fp32.")
        self.total.zero_()
        self.count = 0
        return mean


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def pretrain(recipe: Recipe, out_dir: str | Path, dist: DistInfo) -> dict[str, Any]:
    """Run (or resume) pretraining; return result.json's content. Skips a finished run."""
    return run_stage(out_dir, lambda: Pretrainer(recipe, out_dir, dist).train(), dist)


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
