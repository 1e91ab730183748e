"""The skeleton of a trained stage (pretraining, linear / semi-supervised evaluation, the
supervised ceiling): everything but what is trained, on what, and how one step goes.

A subclass supplies ``create_loaders``, ``create_model`` (wrapped here by ``wrap``),
``create_optimizer`` (each parameter group with its base rate, ``schedules.BASE_LR``),
``learning_rate`` (the schedule), ``train_step`` and ``result``; optional hooks say what an
epoch adds (``begin_epoch``, ``end_epoch``, ``between_epochs``) and what a checkpoint holds
beyond the common state (``checkpoint_extras`` / ``restore``).

The skeleton owns the device and torch's threads, SyncBN / channels_last / DDP, autocast and
the GradScaler, resume and save (model, optimiser, scaler, position, clock), the loop with
the stop vote (``StopSignals``, every ``train.stop_vote_every`` steps), the stage clock and one ``Meter``.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ffcv_bt.config import Recipe
from ffcv_bt.distributed.collectives import barrier
from ffcv_bt.distributed.preemption import StopSignals
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import NonFiniteLoss, Preempted
from ffcv_bt.method.model import convert_sync_batchnorm
from ffcv_bt.method.schedules import BASE_LR, set_group_rates
from ffcv_bt.stage.checkpoints import load_checkpoint, save_checkpoint
from ffcv_bt.stage.clock import StageClock
from ffcv_bt.stage.meter import Meter
from ffcv_bt.stage.mixed_precision import precision_setup
from ffcv_bt.stage.skeleton import set_stage_threads

CHECKPOINT_FILE = "checkpoint.pt"


class StageTrainer:
    """One resumable trained stage into ``out_dir``; ``run()`` trains the remaining epochs.

    Subclasses set ``name`` and ``epochs`` (and whatever their hooks read) before calling
    ``super().__init__``.
    """

    name = "stage"
    epochs = 0
    log_every: int | None = None  # steps between log.jsonl records of the loss window
    loss_per_image = False        # the epoch's loss: mean over images (else over steps)
    scaled_backward = True        # a GradScaler when the precision is fp16

    def __init__(self, recipe: Recipe, out_dir: str | Path, dist: DistInfo, precision: str) -> None:
        self.recipe, self.dist, self.device = recipe, dist, dist.device
        self.out_dir = Path(out_dir)
        self.ckpt_path = self.out_dir / CHECKPOINT_FILE
        self.train_loader, self.val_loader = self.create_loaders()
        set_stage_threads(dist, recipe.train.cpu_threads)  # FFCV's loader resets them
        self.model, self.ddp_model = self.create_model()
        self.optimizer = self.create_optimizer()
        self.amp_dtype, self.scaler = precision_setup(precision, self.device, self.scaled_backward)
        self.epoch = self.step = self.skip_batches = 0
        self.last_loss = math.nan
        self.clock = StageClock(self.device, dist.world_size, prior_seconds=self.resume())
        self.stop = StopSignals(recipe.train.stop_vote_every)
        self.meter = Meter(self.out_dir, dist)

    # ----- what a subclass supplies ------------------------------------------------------
    def create_loaders(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def create_model(self) -> tuple[nn.Module, nn.Module]:
        """(the model, what the step calls: ``wrap``'s second value)."""
        raise NotImplementedError

    def create_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def learning_rate(self, base_lr: float, batch: int, steps: int) -> float:
        """The rate of a group of base rate ``base_lr`` at batch ``batch`` of ``steps``."""
        raise NotImplementedError

    def train_step(self, *batch: torch.Tensor) -> torch.Tensor:
        """One optimisation step; the loss, detached, on the device."""
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError

    def begin_epoch(self) -> None:
        """Before the epoch's first batch (model already in train mode): loader epoch..."""
        self.train_loader.set_epoch(self.epoch)

    def end_epoch(self, loss: float) -> None:
        """After the epoch's last batch, on the clock."""

    def between_epochs(self) -> None:
        """Off the clock: before the first epoch and after each checkpoint."""

    def checkpoint_extras(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Check a loaded checkpoint belongs here, restore what ``checkpoint_extras`` saved."""

    def on_stop(self, batches_done: int) -> str:
        """Keep what a resume needs after a stop mid-epoch; say what was kept."""
        raise NotImplementedError

    def non_finite(self, step: int) -> str:
        return (f"non-finite loss at step {step} (epoch {self.epoch}, batch "
                f"{step - self.meter.first_step}); the last good checkpoint {self.ckpt_path} is "
                f"kept. Lower the learning rate or use precision bf16/fp32.")

    # ----- construction ---------------------------------------------------------------
    @property
    def channels_last(self) -> bool:
        return self.recipe.train.channels_last and self.device.type == "cuda"

    def wrap(self, model: nn.Module, sync_bn: bool = True,
             trained: nn.Module | None = None) -> tuple[nn.Module, nn.Module]:
        """``model`` on the device, its BatchNorms synchronised over ranks (``sync_bn``),
        channels_last on CUDA; and ``trained`` (a part of it; default all) under DDP."""
        model = model.to(self.device)
        if sync_bn and self.dist.distributed:
            model = convert_sync_batchnorm(model, self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        wrapped = model if trained is None else trained
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # gradients are views into DDP's buckets: no copy in or out of them each step, one
            # gradient-sized buffer less. static_graph stays off (docs/gpu.md).
            wrapped = DistributedDataParallel(wrapped, device_ids=ids, gradient_as_bucket_view=True)
        return model, wrapped

    # ----- checkpoints ----------------------------------------------------------------
    def resume(self) -> float:
        """Restore the newest readable checkpoint, if any; the device seconds it holds."""
        state = load_checkpoint(self.ckpt_path)
        if state is None:
            self.saved_seconds = 0.0
            return 0.0
        self.restore(state)
        self.model.load_state_dict(state["model"])
        base_rates = [group[BASE_LR] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, base_lr in zip(self.optimizer.param_groups, base_rates):
            group[BASE_LR] = base_lr  # this stage's own (checkpoints before it had none)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state.get("step", 0)
        self.skip_batches = state.get("batch_in_epoch", 0)
        if self.dist.is_main:
            print(f"resuming {self.ckpt_path}: epoch {self.epoch}, step {self.step}, "
                  f"batch {self.skip_batches}", file=sys.stderr)
        self.saved_seconds = state["device_seconds"]
        return self.saved_seconds

    def save_checkpoint(self, batches_done: int = 0) -> None:
        """Full checkpoint, CPU tensors, the previous one kept (rank 0 writes; all wait)."""
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "epoch": self.epoch, "step": self.step, "batch_in_epoch": batches_done,
                "device_seconds": self.clock.seconds, **self.checkpoint_extras()})
        self.saved_seconds = self.clock.seconds
        barrier()

    # ----- the loop -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train the remaining epochs (checkpoint after each); return the result."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.stop:
            self.between_epochs()
            while self.epoch < self.epochs:
                self.run_epoch()
                self.between_epochs()
        return self.result()

    def run_epoch(self) -> None:
        """Train one epoch and ``end_epoch`` on the clock, then checkpoint."""
        self.clock.start()
        try:
            self.last_loss = self.train_epoch()
            self.end_epoch(self.last_loss)
        finally:
            if self.clock.running:
                self.clock.stop()
        self.epoch += 1
        self.skip_batches = 0
        self.save_checkpoint()

    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def set_learning_rates(self, batch: int, steps: int) -> None:
        set_group_rates(self.optimizer, lambda base_lr: self.learning_rate(base_lr, batch, steps))

    def train_epoch(self) -> float:
        """One epoch from batch ``skip_batches`` (a stopped epoch replays identically); its
        mean loss. The stop vote runs after every ``train.stop_vote_every``-th step and the last."""
        self.model.train()
        self.begin_epoch()
        steps = self.steps_per_epoch()
        self.set_learning_rates(self.skip_batches, max(steps, 1))  # before any batch
        self.meter.start_epoch(self.step - self.skip_batches, self.clock.seconds)
        self.bar = tqdm(total=steps, initial=self.skip_batches, disable=not self.dist.is_main,
                        leave=False, desc=f"{self.name} epoch {self.epoch + 1}/{self.epochs}")
        for index, batch in enumerate(self.train_loader):
            if index >= steps:
                break
            if index < self.skip_batches:
                continue
            self.set_learning_rates(index, max(steps, 1))
            loss = self.train_step(*batch)
            n = batch[0].shape[0]
            self.meter.add(loss, self.step, n * self.dist.world_size, n if self.loss_per_image else 1)
            self.step += 1
            self.bar.update(1)
            stop = self.stop.agreed(self.step, last=index == steps - 1)
            if self.log_every and (stop or self.step % self.log_every == 0 or index == steps - 1):
                self.log_window()
            if stop:
                self.clock.stop()
                self.bar.close()
                kept = self.on_stop(index + 1)
                self.stop.hand_over()
                raise Preempted(f"signal {stop} during {self.name} epoch {self.epoch}: {kept}")
        self.bar.close()
        bad = self.meter.first_bad_step(over_ranks=True)  # every rank takes this branch together
        if bad is not None:
            raise NonFiniteLoss(self.non_finite(bad))
        return self.meter.epoch_mean()

    def log_window(self) -> None:
        """Read the loss window (waits for the device; NonFiniteLoss if a loss was not
        finite, before any checkpoint could keep its update) and log it."""
        bad = self.meter.first_bad_step()
        if bad is not None:
            raise NonFiniteLoss(self.non_finite(bad))
        now = self.clock.seconds
        loss, images_per_s = self.meter.read_window(now)
        self.bar.set_postfix(loss=f"{loss:.4g}")
        rates = {f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups if "name" in g}
        self.log({"epoch": self.epoch, "step": self.step, **rates, "loss": loss,
                  "images_per_s": images_per_s, **self.window_fields(), "elapsed": now})

    def window_fields(self) -> dict[str, Any]:
        """What a loss-window record adds (the resolution...)."""
        return {}

    def log(self, record: dict[str, Any]) -> None:
        self.meter.log(record)
