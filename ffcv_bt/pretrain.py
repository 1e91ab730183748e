"""Barlow Twins pretraining: the loop, checkpoints, resume, signals, logging.

``Pretrainer.__init__`` reads as a table of contents: loader, model, optimiser, precision,
then resume. The same code runs as a plain process, under torchrun or as SLURM tasks
(see ffcv_bt.distributed). Every epoch ends with an atomic checkpoint; SIGTERM/SIGUSR1/USR2
save one mid-epoch (with the number of batches done, which a restart skips, so the
augmentations, derived from (seed, epoch, sample index), replay identically) and exit.

Outputs in ``out_dir``: ``checkpoint.pt`` (full state), ``log.jsonl``, ``config.yaml``,
and at the end ``<arch>.pth`` (torchvision-format backbone) and ``result.json``.
"""
from __future__ import annotations

import json
import math
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ffcv_bt.accounting import StageClock, device_description
from ffcv_bt.config import Recipe
from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader
from ffcv_bt.distributed import DistInfo, set_cpu_compute_threads, broadcast_object
from ffcv_bt.io import atomic_torch_save, atomic_write_json, atomic_write_text
from ffcv_bt.model import BarlowTwins, convert_sync_batchnorm
from ffcv_bt.objective import barlow_twins_loss
from ffcv_bt.precision import autocast_dtype
from ffcv_bt.optim import LARS, param_groups_for_lars, set_learning_rates
from ffcv_bt.schedules import lr_at, resolution_at


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class Preempted(Exception):
    """A SIGTERM/SIGUSR1/SIGUSR2 arrived; a checkpoint was saved."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augmentation_from_config(aug: dict[str, Any]) -> AugmentationParams:
    """The recipe's ``aug`` section as the loader's per-view parameters."""
    return AugmentationParams(
        crop_scale=(aug["scale_min"], aug["scale_max"]),
        flip_p=(aug["flip_p"], aug["flip_p"]), jitter_p=(aug["jitter_p"], aug["jitter_p"]),
        brightness=aug["brightness"], contrast=aug["contrast"], saturation=aug["saturation"],
        hue=aug["hue"], grayscale_p=(aug["grayscale_p"], aug["grayscale_p"]),
        blur_p=(aug["blur_p1"], aug["blur_p2"]),
        blur_sigma=(aug["blur_sigma_min"], aug["blur_sigma_max"]),
        solarize_p=(aug["solarize_p1"], aug["solarize_p2"]),
        solarize_threshold=aug["solarize_threshold"])


def build_model(recipe: Recipe) -> BarlowTwins:
    """Backbone + projector as the recipe says."""
    m = recipe["model"]
    return BarlowTwins(m["arch"], m["projector"], width=m["width"], small_stem=m["small_stem"],
                       zero_init_residual=m["zero_init_residual"])


class Pretrainer:
    """One pretraining run of a recipe into ``out_dir`` (resumes if a checkpoint exists)."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, dist: DistInfo) -> None:
        self.recipe, self.dist = recipe, dist
        self.out_dir = Path(out_dir)
        self.ckpt_path = self.out_dir / "checkpoint.pt"
        self.device = dist.device
        seed_everything(recipe["train"]["seed"])
        if recipe["train"]["deterministic"]:
            torch.use_deterministic_algorithms(True)
        self.loader = self.create_loader()
        self.model, self.ddp_model = self.create_model()
        self.optimizer = self.create_optimizer()
        self.amp_dtype, self.scaler = self.create_precision()
        self.epoch, self.step, self.skip_batches, prior = self.resume()
        self.clock = StageClock(self.device, dist.world_size, prior_seconds=prior)
        self.stop_signal: int | None = None

    # ----- construction -------------------------------------------------------------
    def create_loader(self):
        data, r = self.recipe["data"], self.recipe["resolution"]
        batch = self.recipe["optim"]["batch_size"]
        if batch % self.dist.world_size:
            raise ValueError(f"optim.batch_size={batch} is not divisible by the "
                             f"{self.dist.world_size} ranks")
        beton = Path(data["dir"]) / "train.beton"
        if not beton.is_file():
            raise FileNotFoundError(f"{beton} not found (data.dir={data['dir']}); write it "
                                    f"with write_dataset.py")
        loader = make_pretrain_loader(
            str(beton), batch_size=batch // self.dist.world_size,
            num_workers=data["num_workers"], aug=augmentation_from_config(self.recipe["aug"]),
            res=resolution_at(0, r["min_res"], r["max_res"], r["start_ramp"], r["end_ramp"]),
            seed=self.recipe["train"]["seed"], device=self.device,
            distributed=self.dist.distributed, order=data["order"], in_memory=data["in_memory"],
            channels_last=self.channels_last)
        # FFCV sets torch's thread count to its worker count: set it deliberately.
        if self.device.type == "cpu":
            set_cpu_compute_threads()
        return loader

    @property
    def channels_last(self) -> bool:
        return self.recipe["train"]["channels_last"] and self.device.type == "cuda"

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
        if self.recipe["train"]["compile"]:
            wrapped = torch.compile(wrapped)
        return model, wrapped

    def create_optimizer(self) -> LARS:
        o = self.recipe["optim"]
        return LARS(param_groups_for_lars(self.model), lr=0.0, weight_decay=o["weight_decay"],
                    momentum=o["momentum"], eta=o["eta"])

    def create_precision(self) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
        dtype = autocast_dtype(self.recipe["train"]["precision"], self.device)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return dtype, scaler

    # ----- checkpoints ----------------------------------------------------------------
    def resume(self) -> tuple[int, int, int, float]:
        """(epoch, step, batches to skip, device seconds so far) from checkpoint.pt, if any."""
        if not self.ckpt_path.is_file():
            return 0, 0, 0, 0.0
        try:
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - report which file is broken
            raise RuntimeError(f"cannot resume from {self.ckpt_path}: {exc}") from exc
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
        """Atomic full checkpoint (rank 0 writes; the others wait)."""
        if self.dist.is_main:
            np_state = np.random.get_state()
            state = {
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
            }
            atomic_torch_save(self.ckpt_path, state)
        if self.dist.distributed:
            torch.distributed.barrier()

    # ----- the loop -------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; return the result (also written to result.json)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "config.yaml", self.recipe.to_yaml())
        epochs = self.recipe["optim"]["epochs"]
        self._install_signal_handlers()
        last_loss = math.nan
        while self.epoch < epochs:
            last_loss = self.train_epoch(self.epoch)
            self.epoch += 1
            self.skip_batches = 0
            self.save_checkpoint(self.epoch, 0)
        return self.finish(last_loss)

    def steps_per_epoch(self) -> int:
        limit = self.recipe["train"]["max_steps_per_epoch"]
        return min(len(self.loader), limit) if limit else len(self.loader)

    def train_epoch(self, epoch: int) -> float:
        r, o = self.recipe["resolution"], self.recipe["optim"]
        res = resolution_at(epoch, r["min_res"], r["max_res"], r["start_ramp"], r["end_ramp"])
        self.loader.set_resolution(res)
        self.loader.set_epoch(epoch)
        steps = self.steps_per_epoch()
        self.model.train()
        bar = tqdm(total=steps, initial=self.skip_batches, disable=not self.dist.is_main,
                   desc=f"pretrain epoch {epoch + 1}/{o['epochs']} @{res}px", leave=False)
        loss_sum, n_loss, window_images = 0.0, 0, 0
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
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                self.clock.stop()
                raise NonFiniteLoss(
                    f"non-finite loss ({loss_value}) at step {self.step} (epoch {epoch}, batch "
                    f"{batch_index}); the last good checkpoint {self.ckpt_path} is kept. Lower the "
                    f"learning rate or use precision bf16/fp32.")
            loss_sum, n_loss = loss_sum + loss_value, n_loss + 1
            window_images += view1.shape[0] * self.dist.world_size
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}")
            if self.step % self.recipe["train"]["log_every"] == 0 or batch_index == steps - 1:
                now = self.clock.seconds  # loss.item() above synchronised the device
                self.log({"epoch": epoch, "step": self.step, "lr_weights": lr_mult * o["lr_weights"],
                          "lr_biases": lr_mult * o["lr_biases"], "loss": loss_value,
                          "images_per_s": window_images / max(now - window_start, 1e-9),
                          "resolution": res, "elapsed": now})
                window_start, window_images = now, 0
            if self.stop_signal is not None:
                self.clock.stop()
                bar.close()
                self.save_checkpoint(epoch, batch_index + 1)
                self._chain_previous_handler()
                raise Preempted(f"signal {self.stop_signal}: checkpoint saved at epoch {epoch}, "
                                f"batch {batch_index + 1}")
        self.clock.stop()
        bar.close()
        return loss_sum / max(n_loss, 1)

    def train_step(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Forward both views, the objective in float32, backward, LARS step."""
        loss_cfg = self.recipe["loss"]
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            z1, z2 = self.ddp_model(view1, view2)
        loss = barlow_twins_loss(z1.float(), z2.float(), lambd=loss_cfg["lambd"],
                                 scale_loss=loss_cfg["scale_loss"],
                                 formulation=loss_cfg["formulation"])
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def finish(self, last_loss: float) -> dict[str, Any]:
        """Save the torchvision-format backbone and result.json."""
        arch = self.recipe["model"]["arch"]
        result = {
            "epochs": self.recipe["optim"]["epochs"], "steps": self.step,
            "final_epoch_loss": last_loss, "device_seconds": self.clock.seconds,
            "device_hours": self.clock.device_hours,
            "backbone": str(self.out_dir / f"{arch}.pth"), "checkpoint": str(self.ckpt_path),
            **device_description(self.device),
        }
        if self.dist.is_main:
            atomic_torch_save(self.out_dir / f"{arch}.pth", self.model.backbone_state_dict())
            atomic_write_json(self.out_dir / "result.json", result)
        if self.dist.distributed:
            torch.distributed.barrier()
        return result

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGUSR1/SIGUSR2 (submitit's preemption signal): finish the current step,
        checkpoint, exit; a chained submitit handler then requeues the job."""
        def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
            self.stop_signal = signum
        self._previous_handlers: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            try:
                self._previous_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. inside some launchers)
                pass

    def _chain_previous_handler(self) -> None:
        """After our checkpoint, let a previous handler act (submitit's requeues the job)."""
        previous = self._previous_handlers.get(self.stop_signal or -1)
        if callable(previous):
            previous(self.stop_signal, None)


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def pretrain(recipe: Recipe, out_dir: str | Path, dist: DistInfo) -> dict[str, Any]:
    """Run (or resume) pretraining; return result.json's content. Skips a finished run."""
    out_dir = Path(out_dir)
    done = out_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    trainer = Pretrainer(recipe, out_dir, dist)
    result = trainer.train()
    return broadcast_object(result)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    """``python -m ffcv_bt.pretrain --config RECIPE --out DIR [--section.key=value ...]``."""
    import argparse

    from ffcv_bt.config import load_or_exit, parse_overrides
    from ffcv_bt.distributed import setup, teardown

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (rules/*.yaml)")
    parser.add_argument("--out", required=True, help="output folder (resumes if it has a checkpoint)")
    args, rest = parser.parse_known_args(argv)
    recipe = load_or_exit(args.config, parse_overrides(rest))
    dist = setup()
    try:
        result = pretrain(recipe, args.out, dist)
    except Preempted as exc:
        print(str(exc), file=sys.stderr)
        return 143
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        teardown()
    if dist.is_main:
        print(f"pretraining done: backbone {result['backbone']}, "
              f"{result['device_hours']:.4f} device-hours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
