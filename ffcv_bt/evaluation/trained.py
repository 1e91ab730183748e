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
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ffcv_bt.atomic_files import atomic_write_json
from ffcv_bt.config import Recipe
from ffcv_bt.data.eval_loader import make_eval_loader
from ffcv_bt.data.manifest import Manifest, beton_path
from ffcv_bt.distributed.collectives import barrier, sum_over_ranks_
from ffcv_bt.distributed.preemption import StopSignals
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.errors import CheckpointError, ConfigError, NonFiniteLoss, Preempted
from ffcv_bt.evaluation.backbone_weights import load_backbone, sha256_of
from ffcv_bt.method.model import convert_sync_batchnorm
from ffcv_bt.method.schedules import cosine_epoch_lr
from ffcv_bt.stage.checkpoints import load_checkpoint, save_checkpoint
from ffcv_bt.stage.clock import StageClock
from ffcv_bt.stage.mixed_precision import autocast_dtype, set_tf32
from ffcv_bt.stage.provenance import device_description
from ffcv_bt.stage.skeleton import append_log, per_rank_batch, run_stage, set_stage_threads

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
        self.data_dir = Path(recipe.data.dir)
        self.manifest = Manifest.read(self.data_dir)
        self.train_loader, self.val_loader = self.create_loaders()
        self.model, self.ddp_model = self.create_model()
        self.optimizer = self.create_optimizer()
        precision = self.settings.precision if self.frozen else "fp32"  # fine-tuning trains in fp32
        set_tf32(precision)
        self.amp_dtype = autocast_dtype(precision, self.device)
        self.epoch, self.history, self.saved_seconds = self.resume()
        prior = self.saved_seconds + self.discarded_seconds()
        self.clock = StageClock(self.device, dist.world_size, prior_seconds=prior)
        self.stop = StopSignals()

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
        set_stage_threads(self.dist, self.recipe.train.cpu_threads)
        return train, val

    @property
    def channels_last(self) -> bool:
        return self.recipe.train.channels_last and self.device.type == "cuda"

    def create_model(self) -> tuple[Classifier, nn.Module]:
        m = self.recipe.model
        backbone, feat_dim = load_backbone(self.weights, m["arch"], m["width"], m["small_stem"],
                                           seed=self.recipe.train.seed)
        torch.manual_seed(self.recipe.train.seed + 1)
        model = Classifier(backbone, feat_dim, len(self.manifest.classes))
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
        state = load_checkpoint(self.ckpt_path)
        if state is None:
            return 0, [], 0.0
        if state["weights"] != self.weights:
            raise CheckpointError(f"{self.ckpt_path} evaluates {state['weights']}, not "
                                  f"{self.weights}; use another output folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        return state["epoch"], json.loads(state["history"]), state["device_seconds"]

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "history": json.dumps(self.history),
                "device_seconds": self.clock.seconds, "weights": self.weights})
        self.saved_seconds = self.clock.seconds
        barrier()

    def discarded_seconds(self) -> float:
        """Device seconds of epochs cut short by a stop after the checkpoint of ``self.epoch``
        (their work is replayed, their time was spent: it counts)."""
        path = self.out_dir / DISCARDED_FILE
        if not path.is_file():
            return 0.0
        record = json.loads(path.read_text())
        return float(record["seconds"]) if record["epoch"] == self.epoch else 0.0

    def record_discarded_seconds(self) -> None:
        """On a stop mid-epoch: the seconds since the last checkpoint, for the resumed run."""
        if self.dist.is_main:
            atomic_write_json(self.out_dir / DISCARDED_FILE, {
                "epoch": self.epoch, "seconds": self.clock.seconds - self.saved_seconds})

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
        with self.stop:
            while self.epoch < s.epochs:
                self.run_epoch()
        return self.result()

    def run_epoch(self) -> None:
        """Train one epoch, validate, log, checkpoint."""
        self.clock.start()
        try:
            train_loss = self.train_epoch()
            top1, top5 = self.validate()
        except Preempted:
            self.clock.stop()
            self.record_discarded_seconds()
            raise
        finally:
            if self.clock.running:
                self.clock.stop()
        self.check_frozen()
        record = {"epoch": self.epoch, "train_loss": train_loss, "top1": top1, "top5": top5,
                  "lr_classifier": self.optimizer.param_groups[0]["lr"],
                  "elapsed": self.clock.seconds}
        self.history.append(record)
        append_log(self.out_dir, record, self.dist)
        self.epoch += 1
        self.save_checkpoint()

    def learning_rates(self, epoch: float) -> list[float]:
        """Each parameter group's rate at (fractional) ``epoch``: the protocol's cosine, set
        once per epoch."""
        return [cosine_epoch_lr(int(epoch), self.settings.epochs, g["base_lr"])
                for g in self.optimizer.param_groups]

    def set_learning_rates(self, epoch: float) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates(epoch)):
            group["lr"] = lr

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def train_epoch(self) -> float:
        s = self.settings
        self.train_loader.set_epoch(self.epoch)
        self.model.train()
        if self.frozen:
            self.model.backbone.eval()  # BN statistics never move
        criterion = self.criterion()
        self.set_learning_rates(self.epoch)  # the epoch's rates, before its first batch
        steps = max(len(self.train_loader), 1)
        # losses stay on the device (no host sync per step); the epoch's non-finite flag is
        # combined over ranks before anyone raises, so no rank is left waiting in a collective
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        bad = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        bar = tqdm(self.train_loader, disable=not self.dist.is_main, leave=False,
                   desc=f"{s.protocol} epoch {self.epoch + 1}/{s.epochs}")
        for step, (images, labels) in enumerate(bar):
            self.set_learning_rates(self.epoch + step / steps)
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
            detached = loss.detach().double()
            bad += (~torch.isfinite(detached)).double()
            total += torch.nan_to_num(detached, nan=0.0, posinf=0.0, neginf=0.0) * labels.shape[0]
            count += labels.shape[0]
            stop = self.stop.agreed()
            if stop:
                # The epoch's partial work is dropped: the checkpoint of its start is on disk,
                # and the epoch replays identically (order and crops follow seed and epoch).
                bar.close()
                self.stop.hand_over()
                raise Preempted(f"signal {stop} during {s.protocol} epoch {self.epoch}: "
                                f"resumes from {self.ckpt_path} (epoch {self.epoch})")
        if float(sum_over_ranks_(bad)) > 0:  # every rank takes this branch together
            raise NonFiniteLoss(f"{s.protocol}: non-finite loss at epoch {self.epoch}; lower "
                                f"the protocol's learning rate")
        return float(total) / max(count, 1)

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


def main(argv: list[str]) -> int:
    """``python -m ffcv_bt.evaluation.trained --config RECIPE --protocol linear --weights PATH|random
    --out DIR [--record]``."""
    import argparse

    from ffcv_bt.config import load_recipe, parse_overrides
    from ffcv_bt.distributed.process_group import process_group

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (data and model keys)")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS + ("knn",))
    parser.add_argument("--weights", required=True,
                        help="backbone: our checkpoint/.pth, a torchvision state dict (e.g. the "
                        "released Barlow Twins ResNet-50), or 'random'")
    parser.add_argument("--out", required=True, help="output folder (resumes)")
    parser.add_argument("--record", action="store_true",
                        help="append the result to runs.csv as an 'external' checkpoint row "
                        "(no pretraining cost) and regenerate the tables")
    parser.add_argument("--results-dir", default=None, help="where runs.csv lives (default: "
                        "the repository's results/)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args, rest = parser.parse_known_args(argv)
    recipe = load_recipe(args.config, parse_overrides(rest))
    with process_group() as dist:
        if args.protocol == "knn":
            from ffcv_bt.evaluation.knn import evaluate_knn

            result = evaluate_knn(recipe, args.weights, args.out, dist)
        else:
            result = evaluate(recipe, args.protocol, args.weights, args.out, dist)
    if dist.is_main:
        print(f"{args.protocol}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}% "
              f"(best top-1 {result['best_top1']:.2f}% at epoch {result['best_epoch']})")
        if args.record:
            record_external(recipe, args.protocol, args.weights, Path(args.out), result,
                            Path(args.results_dir) if args.results_dir else None)
    return 0


def record_external(recipe: Recipe, protocol: str, weights: str, out_dir: Path,
                    result: dict[str, Any], results_dir: Path | None) -> None:
    """Append an evaluated external checkpoint to runs.csv (backbone "external", no
    pretraining cost) and regenerate the tables."""
    from ffcv_bt.config import REPO_ROOT
    from ffcv_bt.reporting.runs_csv import append_run_row, evaluation_row
    from ffcv_bt.reporting.tables import generate
    from ffcv_bt.stage.provenance import code_version

    if weights == "random":
        raise ConfigError("--record is for a checkpoint file; the random control is recorded "
                          "by run.py beside its pretrained row")
    results_dir = results_dir or REPO_ROOT / "results"
    code = code_version(REPO_ROOT)
    row = evaluation_row(
        run_id=f"external-{Path(weights).stem}-{out_dir.name}", recipe=recipe.name,
        dataset=Manifest.read(recipe.data.dir).dataset_fields(),
        seed=recipe.train.seed, protocol=protocol, backbone="external", epochs=0,
        result=result, pretrain_gpu_hours=0.0, pretrain_epoch_equivalents=0.0,
        device=result["device"],
        n_devices=result["n_devices"],
        git_sha=code["git_sha"] + ("-dirty" if code.get("dirty") else ""), run_dir=out_dir,
        repo_root=REPO_ROOT)
    append_run_row(results_dir / "runs.csv", row)
    generate(results_dir)
    print(f"recorded in {results_dir / 'runs.csv'} as an external checkpoint")


if __name__ == "__main__":
    from ffcv_bt.cli import run_command

    raise SystemExit(run_command(main))
