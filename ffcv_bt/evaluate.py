"""The two evaluation protocols: linear probe on frozen features, and semi-supervised
fine-tuning on 1% / 10% of labels. These are the fixed rules of the benchmark; their
settings come from the protocol file (rules/protocols/), never from a recipe.

Top-1/top-5 are counted over the whole val set: each rank evaluates a disjoint slice of
the val indices (``rank::world_size``) and the counts are summed, so no sample is dropped
or counted twice at a partial last batch.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ffcv_bt.accounting import StageClock, device_description
from ffcv_bt.config import Recipe
from ffcv_bt.data.eval_loader import make_eval_loader
from ffcv_bt.distributed import DistInfo, set_cpu_compute_threads, all_reduce_sum, broadcast_object
from ffcv_bt.io import atomic_torch_save, atomic_write_json
from ffcv_bt.model import build_backbone, convert_sync_batchnorm
from ffcv_bt.precision import autocast_dtype
from ffcv_bt.schedules import cosine_epoch_lr

PROTOCOLS = ("linear", "semi1", "semi10")


class BackboneLoadError(ValueError):
    """A backbone checkpoint is missing, corrupt or of the wrong architecture."""


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

    @classmethod
    def from_recipe(cls, recipe: Recipe, protocol: str) -> ProtocolSettings:
        if protocol == "linear":
            p = recipe["linear"]
            return cls("linear", p["epochs"], p["batch_size"], p["lr"], 0.0, p["weight_decay"],
                       p["momentum"], p["res"], p["resize"], p["precision"], 100)
        if protocol in ("semi1", "semi10"):
            p = recipe["semi"]
            return cls(protocol, p["epochs"], p["batch_size"], p["lr_classifier"], p["lr_backbone"],
                       p["weight_decay"], p["momentum"], p["res"], p["resize"], "fp32",
                       int(protocol[4:]))
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _backbone_state_from_file(path: Path) -> dict[str, torch.Tensor]:
    """Backbone tensors from our pretraining checkpoint, our <arch>.pth, or a torchvision
    state dict (its ``fc.*`` entries are dropped)."""
    if not path.is_file():
        raise BackboneLoadError(f"{path}: backbone checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means corrupt
        raise BackboneLoadError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # full checkpoint
        state = {k[len("backbone."):]: v for k, v in state["model"].items()
                 if k.startswith("backbone.")}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneLoadError(f"{path}: expected a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_backbone(weights: str, arch: str, width: int = 64, small_stem: bool = False,
                  seed: int = 0) -> tuple[nn.Module, int]:
    """The backbone to evaluate: ``weights`` is a checkpoint path or ``"random"``."""
    torch.manual_seed(seed)
    backbone, feat_dim = build_backbone(arch, width=width, zero_init_residual=True,
                                        small_stem=small_stem)
    if weights == "random":
        return backbone, feat_dim
    path = Path(weights)
    state = _backbone_state_from_file(path)
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs {arch} {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise BackboneLoadError(
            f"{path}: does not match {arch} (width {width}, small_stem {small_stem}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(shapes)} shape mismatches {shapes[:3]}")
    backbone.load_state_dict(state)
    return backbone, feat_dim


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest.json that write_dataset.py wrote beside the .betons."""
    return json.loads((Path(data_dir) / "manifest.json").read_text())


def read_subset(data_dir: str | Path, percent: int) -> np.ndarray:
    """Train-set indices of the 1% / 10% label subset written by write_dataset.py."""
    path = Path(data_dir) / f"train_subset_{percent}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label subset not found; write_dataset.py writes it")
    return np.loadtxt(path, dtype=np.int64, ndmin=1)


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


class Evaluation:
    """One protocol on one backbone, resumable, into ``out_dir``."""

    def __init__(self, recipe: Recipe, protocol: str, weights: str, out_dir: str | Path,
                 dist: DistInfo) -> None:
        self.recipe, self.dist, self.weights = recipe, dist, weights
        self.settings = ProtocolSettings.from_recipe(recipe, protocol)
        self.out_dir = Path(out_dir)
        self.ckpt_path = self.out_dir / "checkpoint.pt"
        self.device = dist.device
        self.frozen = protocol == "linear"
        self.data_dir = Path(recipe["data"]["dir"])
        self.manifest = read_manifest(self.data_dir)
        self.train_loader, self.val_loader = self.create_loaders()
        self.model, self.ddp_model = self.create_model()
        self.optimizer = self.create_optimizer()
        self.amp_dtype = autocast_dtype(self.settings.precision, self.device) if self.frozen else None
        self.epoch, self.history, prior = self.resume()
        self.clock = StageClock(self.device, dist.world_size, prior_seconds=prior)

    def create_loaders(self):
        s, data = self.settings, self.recipe["data"]
        if s.batch_size % self.dist.world_size:
            raise ValueError(f"{s.protocol}: batch size {s.batch_size} not divisible by "
                             f"{self.dist.world_size} ranks")
        train_indices = None if s.subset_percent == 100 else read_subset(self.data_dir, s.subset_percent)
        if train_indices is not None and self.dist.distributed:
            # Equal shares keep the ranks' batch counts equal (DDP needs that): drop the
            # last (len % world_size) < world_size indices of the subset.
            usable = len(train_indices) - len(train_indices) % self.dist.world_size
            train_indices = train_indices[:usable][self.dist.rank::self.dist.world_size]
        ratio = s.res / s.resize
        common = dict(num_workers=data["num_workers"], device=self.device, res=s.res,
                      resize_ratio=ratio, channels_last=self.channels_last)
        train = make_eval_loader(str(self.data_dir / "train.beton"), s.batch_size // self.dist.world_size,
                                 "train", indices=train_indices, seed=self.recipe["train"]["seed"],
                                 distributed=self.dist.distributed and train_indices is None,
                                 drop_last=False, **common)
        n_val = int(self.manifest["splits"]["val"]["num_images"])
        val_indices = np.arange(n_val)[self.dist.rank::self.dist.world_size]
        val = make_eval_loader(str(self.data_dir / "val.beton"), s.batch_size // self.dist.world_size,
                               "val", indices=val_indices, distributed=False, **common)
        if self.device.type == "cpu":
            set_cpu_compute_threads()
        return train, val

    @property
    def channels_last(self) -> bool:
        return self.recipe["train"]["channels_last"] and self.device.type == "cuda"

    def create_model(self) -> tuple[Classifier, nn.Module]:
        m = self.recipe["model"]
        backbone, feat_dim = load_backbone(self.weights, m["arch"], m["width"], m["small_stem"],
                                           seed=self.recipe["train"]["seed"])
        torch.manual_seed(self.recipe["train"]["seed"] + 1)
        model = Classifier(backbone, feat_dim, len(self.manifest["classes"]))
        model = model.to(self.device)
        if self.frozen:
            model.backbone.requires_grad_(False)
        elif self.dist.distributed:
            model = convert_sync_batchnorm(model, self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # The linear probe trains (and DDP-averages) the head alone on frozen features.
        wrapped: nn.Module = model.head if self.frozen else model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids)
        self.frozen_reference = ({k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
                                 if self.frozen else None)
        return model, wrapped

    def create_optimizer(self) -> torch.optim.SGD:
        s = self.settings
        groups = [{"params": list(self.model.head.parameters()), "lr": s.lr_classifier,
                   "base_lr": s.lr_classifier}]
        if not self.frozen:
            groups.append({"params": list(self.model.backbone.parameters()), "lr": s.lr_backbone,
                           "base_lr": s.lr_backbone})
        return torch.optim.SGD(groups, lr=s.lr_classifier, momentum=s.momentum,
                               weight_decay=s.weight_decay)

    def resume(self) -> tuple[int, list[dict], float]:
        if not self.ckpt_path.is_file():
            return 0, [], 0.0
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        if state["weights"] != self.weights:
            raise RuntimeError(f"{self.ckpt_path} evaluates {state['weights']}, not {self.weights}; "
                               f"use another output folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        return state["epoch"], json.loads(state["history"]), state["device_seconds"]

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            atomic_torch_save(self.ckpt_path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "history": json.dumps(self.history),
                "device_seconds": self.clock.seconds, "weights": self.weights})
        if self.dist.distributed:
            torch.distributed.barrier()

    def check_frozen(self) -> None:
        """The linear probe's backbone must be bit-for-bit unchanged (BN stats included)."""
        if self.frozen_reference is None:
            return
        for name, value in self.model.backbone.state_dict().items():
            if not torch.equal(value, self.frozen_reference[name]):
                raise AssertionError(f"linear probe: frozen backbone tensor '{name}' changed "
                                     f"during epoch {self.epoch}")

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluating each; return the result."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        while self.epoch < s.epochs:
            self.clock.start()
            train_loss = self.train_epoch()
            top1, top5 = self.validate()
            self.clock.stop()
            self.check_frozen()
            record = {"epoch": self.epoch, "train_loss": train_loss, "top1": top1, "top5": top5,
                      "lr_classifier": self.optimizer.param_groups[0]["lr"],
                      "elapsed": self.clock.seconds}
            self.history.append(record)
            if self.dist.is_main:
                with open(self.out_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            self.epoch += 1
            self.save_checkpoint()
        return self.result()

    def train_epoch(self) -> float:
        s = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_epoch_lr(self.epoch, s.epochs, group["base_lr"])
        self.train_loader.set_epoch(self.epoch)
        self.model.train()
        if self.frozen:
            self.model.backbone.eval()  # BN statistics never move
        criterion = nn.CrossEntropyLoss()
        total, count = 0.0, 0
        bar = tqdm(self.train_loader, disable=not self.dist.is_main, leave=False,
                   desc=f"{s.protocol} epoch {self.epoch + 1}/{s.epochs}")
        for images, labels in bar:
            if self.frozen:
                with torch.no_grad(), torch.autocast(self.device.type,
                                                     dtype=self.amp_dtype or torch.float32,
                                                     enabled=self.amp_dtype is not None):
                    features = self.model.backbone(images)
                logits = self.ddp_model(features.float())  # the (DDP-wrapped) head only
            else:
                logits = self.ddp_model(images)
            loss = criterion(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"{s.protocol}: non-finite loss at epoch {self.epoch}")
            total, count = total + value * labels.shape[0], count + labels.shape[0]
            bar.set_postfix(loss=f"{value:.4g}")
        return total / max(count, 1)

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Top-1 and top-5 in percent over the whole val set (all ranks together)."""
        self.model.eval()
        counts = torch.zeros(3, dtype=torch.float64)
        for images, labels in self.val_loader:
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.model(images)
            c1, c5 = topk_correct(logits.float(), labels)
            counts += torch.tensor([c1, c5, labels.shape[0]], dtype=torch.float64)
        if self.dist.distributed:
            counts = counts.to(self.device)
            all_reduce_sum(counts)
            counts = counts.cpu()
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
    out_dir = Path(out_dir)
    done = out_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    result = Evaluation(recipe, protocol, weights, out_dir, dist).run()
    if dist.is_main:
        atomic_write_json(done, result)
    return broadcast_object(result)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    """``python -m ffcv_bt.evaluate --config RECIPE --protocol linear --weights PATH|random --out DIR``."""
    import argparse

    from ffcv_bt.config import load_or_exit, parse_overrides
    from ffcv_bt.distributed import setup, teardown

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (data and model keys)")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--weights", required=True,
                        help="backbone: our checkpoint/.pth, a torchvision state dict, or 'random'")
    parser.add_argument("--out", required=True, help="output folder (resumes)")
    args, rest = parser.parse_known_args(argv)
    recipe = load_or_exit(args.config, parse_overrides(rest))
    dist = setup()
    try:
        result = evaluate(recipe, args.protocol, args.weights, args.out, dist)
    except BackboneLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        teardown()
    if dist.is_main:
        print(f"{args.protocol}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}% "
              f"(best top-1 {result['best_top1']:.2f}% at epoch {result['best_epoch']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
