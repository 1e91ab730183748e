"""The two evaluation protocols: linear probe on frozen features, and semi-supervised
fine-tuning on 1% / 10% of labels. These are the fixed rules of the benchmark; their
settings come from the protocol file (rules/protocols/), never from a recipe.

Top-1/top-5 are counted over the whole val set: each rank evaluates a disjoint slice of
the val indices (``rank::world_size``) and the counts are summed, so no sample is dropped
or counted twice at a partial last batch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ffcv_bt.atomic_files import atomic_write_json
from ffcv_bt.config import Recipe
from ffcv_bt.data.eval_loader import make_eval_loader
from ffcv_bt.data.manifest import Manifest, beton_path
from ffcv_bt.distributed.collectives import sum_over_ranks_
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import CheckpointError, ConfigError
from ffcv_bt.evaluation.backbone_weights import load_backbone, sha256_of
from ffcv_bt.method.schedules import BASE_LR, cosine_epoch_lr
from ffcv_bt.stage.mixed_precision import autocast, optimizer_step
from ffcv_bt.stage.provenance import device_description
from ffcv_bt.stage.skeleton import per_rank_batch, run_stage
from ffcv_bt.stage.trainer import StageTrainer

PROTOCOLS = ("linear", "semi1", "semi10")


DISCARDED_FILE = "discarded_seconds.json"  # time of epochs cut short since the checkpoint


@dataclass
class ProtocolSettings:
    """Everything that defines one evaluation run (recorded in its result)."""

    protocol: str            # linear | semi1 | semi10
    epochs: int
    batch_size: int          # global
    lr_classifier: float
    lr_backbone: float       # 0 for the linear probe (frozen)
    weight_decay: float
    momentum: float
    res: int
    resize: int
    precision: str = "fp32"
    subset_percent: int = 100
    label_smoothing: float = 0.0    # the supervised stage only
    lr_peak_epoch: float = 0.0      # the supervised stage only (ffcv-imagenet's triangular rate)

    @classmethod
    def from_recipe(cls, recipe: Recipe, protocol: str) -> ProtocolSettings:
        if protocol == "linear":
            p = recipe.linear
            return cls("linear", p["epochs"], p["batch_size"], p["lr"], 0.0, p["weight_decay"],
                       p["momentum"], p["res"], p["resize"], p["precision"], 100)
        if protocol in ("semi1", "semi10"):
            p = recipe.semi
            return cls(protocol, p["epochs"], p["batch_size"], p["lr_classifier"], p["lr_backbone"],
                       p["weight_decay"], p["momentum"], p["res"], p["resize"], "fp32",
                       int(protocol[4:]))
        if protocol == "supervised":
            # The supervised ceiling (ffcv_bt.train.supervised): the recipe's supervised
            # section at the pretraining's epochs and global batch; validated with the
            # linear protocol's crop (its train crops follow the recipe's resolution).
            p, lin, batch = recipe.supervised, recipe.linear, recipe.optim.batch_size
            lr = p["lr"] * batch / 256
            return cls("supervised", recipe.optim.epochs, batch, lr, lr, p["weight_decay"],
                       p["momentum"], lin["res"], lin["resize"], "fp32", 100,
                       p["label_smoothing"], p["lr_peak_epoch"])
        raise ConfigError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> list[int]:
    """Number of samples whose label is among the top-k logits, for each k."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(labels[:, None])
    return [int(hits[:, :min(k, kmax)].any(dim=1).sum()) for k in ks]


class Classifier(nn.Module):
    """Backbone followed by a linear layer initialised as the protocol says."""

    def __init__(self, backbone: nn.Module, feat_dim: int, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, classes)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class Evaluation(StageTrainer):
    """One protocol on one backbone, resumable, into ``out_dir``; one record per epoch
    (trained, then validated, on the stage clock)."""

    loss_per_image = True
    scaled_backward = False  # the linear probe's head trains in fp32; fine-tuning is fp32

    def __init__(self, recipe: Recipe, protocol: str, weights: str, out_dir: str | Path,
                 dist: DistInfo) -> None:
        self.weights = weights
        self.settings = ProtocolSettings.from_recipe(recipe, protocol)
        self.name, self.epochs = protocol, self.settings.epochs
        self.frozen = protocol == "linear"
        self.data_dir = Path(recipe.data.dir)
        self.manifest = Manifest.read(self.data_dir)
        self.history: list[dict] = []
        precision = self.settings.precision if self.frozen else "fp32"  # fine-tuning trains in fp32
        super().__init__(recipe, out_dir, dist, precision)

    def create_loaders(self):
        s, data = self.settings, self.recipe.data
        per_rank = per_rank_batch(s.batch_size, self.dist, f"{s.protocol} batch_size")
        train_indices = None if s.subset_percent == 100 else self.manifest.read_subset(s.subset_percent)
        if train_indices is not None and self.dist.distributed:
            # Equal shares keep the ranks' batch counts equal (DDP needs that): drop the
            # last (len % world_size) < world_size indices of the subset.
            usable = len(train_indices) - len(train_indices) % self.dist.world_size
            train_indices = train_indices[:usable][self.dist.rank::self.dist.world_size]
        ratio = s.res / s.resize
        common = dict(num_workers=data["num_workers"], device=self.device, res=s.res,
                      resize_ratio=ratio, channels_last=self.channels_last)
        train = make_eval_loader(str(beton_path(self.data_dir, "train")), per_rank,
                                 "train", indices=train_indices, seed=self.recipe.train.seed,
                                 distributed=self.dist.distributed and train_indices is None,
                                 drop_last=False, **common)
        val_indices = np.arange(self.manifest.num_images("val"))[self.dist.rank::self.dist.world_size]
        val = make_eval_loader(str(beton_path(self.data_dir, "val")), per_rank,
                               "val", indices=val_indices, distributed=False, **common)
        return train, val

    def create_model(self) -> tuple[Classifier, nn.Module]:
        m = self.recipe.model
        backbone, feat_dim = load_backbone(self.weights, m["arch"], m["width"], m["small_stem"],
                                           seed=self.recipe.train.seed)
        torch.manual_seed(self.recipe.train.seed + 1)
        model = Classifier(backbone, feat_dim, len(self.manifest.classes))
        if self.frozen:
            model.backbone.requires_grad_(False)
        # The linear probe trains (and DDP-averages) the head alone on frozen features.
        model, wrapped = self.wrap(model, sync_bn=not self.frozen,
                                   trained=model.head if self.frozen else None)
        self.frozen_reference = ({k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
                                 if self.frozen else None)
        return model, wrapped

    def create_optimizer(self) -> torch.optim.SGD:
        s = self.settings
        groups = [{"params": list(self.model.head.parameters()), "lr": s.lr_classifier,
                   BASE_LR: s.lr_classifier}]
        if not self.frozen:
            groups.append({"params": list(self.model.backbone.parameters()), "lr": s.lr_backbone,
                           BASE_LR: s.lr_backbone})
        return torch.optim.SGD(groups, lr=s.lr_classifier, momentum=s.momentum,
                               weight_decay=s.weight_decay)

    # ----- checkpoints and stops ----------------------------------------------------------
    def checkpoint_extras(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history), "weights": self.weights}

    def restore(self, state: dict[str, Any]) -> None:
        if state["weights"] != self.weights:
            raise CheckpointError(f"{self.ckpt_path} evaluates {state['weights']}, not "
                                  f"{self.weights}; use another output folder")
        self.history = json.loads(state["history"])

    def resume(self) -> float:
        """The checkpoint's device seconds, plus those of an epoch cut short after it."""
        return super().resume() + self.discarded_seconds()

    def discarded_seconds(self) -> float:
        """Device seconds of epochs cut short by a stop after the checkpoint of ``self.epoch``
        (their work is replayed, their time was spent: it counts)."""
        path = self.out_dir / DISCARDED_FILE
        if not path.is_file():
            return 0.0
        record = json.loads(path.read_text())
        return float(record["seconds"]) if record["epoch"] == self.epoch else 0.0

    def on_stop(self, batches_done: int) -> str:
        """The epoch's partial work is dropped: the checkpoint of its start is on disk, and
        the epoch replays identically (order and crops follow seed and epoch); its seconds
        since that checkpoint are kept for the resumed run."""
        if self.dist.is_main:
            atomic_write_json(self.out_dir / DISCARDED_FILE, {
                "epoch": self.epoch, "seconds": self.clock.seconds - self.saved_seconds})
        return f"resumes from {self.ckpt_path} (epoch {self.epoch})"

    def non_finite(self, step: int) -> str:
        return (f"{self.settings.protocol}: non-finite loss at epoch {self.epoch}; lower "
                f"the protocol's learning rate")

    # ----- the epoch and the step ---------------------------------------------------------
    def begin_epoch(self) -> None:
        super().begin_epoch()
        if self.frozen:
            self.model.backbone.eval()  # BN statistics never move
        self.loss_fn = self.criterion()

    def learning_rate(self, base_lr: float, batch: int, steps: int) -> float:
        """The protocol's cosine, set once per epoch."""
        return cosine_epoch_lr(int(self.epoch + batch / steps), self.settings.epochs, base_lr)

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                features = self.model.backbone(images)
            logits = self.ddp_model(features.float())  # the (DDP-wrapped) head only
        else:
            logits = self.ddp_model(images)
        loss = self.loss_fn(logits, labels)
        optimizer_step(loss, self.optimizer, self.scaler)
        return loss.detach()

    def end_epoch(self, loss: float) -> None:
        """Validate, check the frozen backbone, log the epoch's record."""
        top1, top5 = self.validate()
        self.check_frozen()
        record = {"epoch": self.epoch, "train_loss": loss, "top1": top1, "top5": top5,
                  "lr_classifier": self.optimizer.param_groups[0]["lr"],
                  "elapsed": self.clock.seconds}
        self.history.append(record)
        self.log(record)

    def check_frozen(self) -> None:
        """The linear probe's backbone must be bit-for-bit unchanged (BN stats included)."""
        if self.frozen_reference is None:
            return
        for name, value in self.model.backbone.state_dict().items():
            if not torch.equal(value, self.frozen_reference[name]):
                raise AssertionError(f"linear probe: frozen backbone tensor '{name}' changed "
                                     f"during epoch {self.epoch}")

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Top-1 and top-5 in percent over the whole val set (all ranks together)."""
        self.model.eval()
        counts = torch.zeros(3, dtype=torch.float64)
        for images, labels in self.val_loader:
            with autocast(self.device, self.amp_dtype):
                logits = self.model(images)
            c1, c5 = topk_correct(logits.float(), labels)
            counts += torch.tensor([c1, c5, labels.shape[0]], dtype=torch.float64)
        if self.dist.distributed:
            counts = sum_over_ranks_(counts.to(self.device)).cpu()
        return float(100 * counts[0] / counts[2]), float(100 * counts[1] / counts[2])

    def result(self) -> dict[str, Any]:
        final = self.history[-1]
        best = max(self.history, key=lambda r: r["top1"])
        weights = self.weights
        return {
            "protocol": self.settings.protocol,
            "backbone": "random" if weights == "random" else "pretrained",
            "top1": final["top1"], "top5": final["top5"],
            "best_top1": best["top1"], "best_epoch": best["epoch"],
            "device_seconds": self.clock.seconds, "device_hours": self.clock.device_hours,
            "checkpoint": weights,
            "checkpoint_sha256": None if weights == "random" else sha256_of(weights),
            "settings": asdict(self.settings), "protocol_file": self.recipe.protocol_file,
            **device_description(self.device),
        }


def evaluate(recipe: Recipe, protocol: str, weights: str, out_dir: str | Path,
             dist: DistInfo) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one protocol; write and return result.json."""
    return run_stage(out_dir, lambda: Evaluation(recipe, protocol, weights, out_dir, dist).run(), dist)
