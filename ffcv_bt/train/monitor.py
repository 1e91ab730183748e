"""Online monitoring of a pretraining run: is it learning, has it collapsed?

Every ``monitor.every_epochs`` epochs, and after the last one, the monitor runs the model
frozen (eval mode, fp32) on two fixed, evenly spaced image subsets (val: the queries and
the embeddings; train: the kNN's neighbours) read without augmentation, and records:

* ``knn_top1`` / ``knn_top5``: weighted kNN (Wu et al. 2018; ``ffcv_bt.evaluation.knn``) of the
  backbone features of the val subset against those of the train subset;
* ``rankme``: the effective rank of the projector embeddings of the val subset (Garrido et
  al. 2023, "RankMe", arXiv 2210.02885): exp of the entropy of the singular values
  normalised to sum 1. It cannot exceed min(images, dim); a collapsed embedding has a
  small one;
* ``embedding_std``: the mean per-dimension std of the L2-normalised embeddings, about
  1/sqrt(dim) when they spread over the sphere and 0 at complete collapse;
* ``val_on_diag`` / ``val_off_diag`` / ``val_loss``: the two terms of the Barlow Twins
  objective on the val subset, the second view being the horizontal mirror of the first
  (so the invariance term measures flip invariance only; the training step is untouched);
* a collapse warning (printed once, recorded every time) when RankMe is below
  ``collapse_rank_fraction`` x min(images, dim) or the std below ``collapse_std``.

Records go to ``log.jsonl`` as ``{"kind": "monitor", ...}``, to TensorBoard under
``<out_dir>/tensorboard`` (with the training scalars) when the ``tensorboard`` package is
installed, and ``<out_dir>/monitor.png`` plots loss and kNN top-1 against device-hours.
The monitor's time is its own clock (``monitor_device_hours`` in result.json, kept in
``monitor_state.json`` across restarts); the pretraining clock is stopped while it runs.

Several ranks: each extracts a disjoint slice of each subset with the kNN protocol's
extraction (frozen, eval mode, fp32). The val slices are gathered (the queries and the
embeddings); the train slices stay sharded, each rank scoring the queries against its own
(``knn_accuracy(..., sharded=True)``). Every rank computes the same numbers; rank 0 writes.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffcv_bt.atomic_files import atomic_write, atomic_write_json
from ffcv_bt.config import Recipe
from ffcv_bt.data.manifest import Manifest, beton_path
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.knn import extract_features, gather_features, knn_accuracy
from ffcv_bt.evaluation.neighbours import shard_rows
from ffcv_bt.method.model import BarlowTwins
from ffcv_bt.method.objective import correlation_terms
from ffcv_bt.stage.clock import StageClock
from ffcv_bt.stage.skeleton import append_log, set_stage_threads

STATE_FILE = "monitor_state.json"
PLOT_FILE = "monitor.png"
TENSORBOARD_DIR = "tensorboard"
RESIZE_RATIO = 224 / 256  # centre crop of the short side, as the evaluation protocols
TRAIN_SCALARS = ("loss", "lr_weights", "lr_biases", "images_per_s", "resolution")
MONITOR_SCALARS = ("knn_top1", "knn_top5", "rankme", "embedding_std", "val_on_diag",
                   "val_off_diag", "val_loss")


# ----- the measures --------------------------------------------------------------------
@torch.no_grad()
def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """RankMe of ``embeddings`` (n, d): ``exp(-sum_k p_k log p_k)`` with
    ``p_k = sigma_k / sum(sigma) + eps`` over the singular values (Garrido et al. 2023).

    Between ~1 and min(n, d); ~r for a matrix with r equal non-zero singular values.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"rankme expects an (n, d) matrix, got shape {tuple(embeddings.shape)}")
    sigma = torch.linalg.svdvals(embeddings.double())
    total = sigma.sum()
    if total <= 0:
        return 1.0  # all zero: complete collapse
    p = sigma / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def embedding_std(embeddings: Tensor) -> float:
    """Mean over dimensions of the std (over rows, unbiased) of the L2-normalised rows.

    About 1/sqrt(d) for embeddings spread over the unit sphere, 0 when all rows coincide.
    """
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embedding_std expects an (n >= 2, d) matrix, got "
                         f"{tuple(embeddings.shape)}")
    return float(F.normalize(embeddings.double(), dim=1).std(dim=0).mean())


def collapse_messages(rank: float, std: float, n: int, dim: int, rank_fraction: float,
                      std_threshold: float) -> list[str]:
    """Why the embeddings look collapsed (empty when they do not)."""
    messages = []
    attainable = min(n, dim)
    if rank < rank_fraction * attainable:
        messages.append(f"RankMe {rank:.2f} < {rank_fraction:g} x {attainable} "
                        f"(min(images, embedding dim))")
    if std < std_threshold:
        messages.append(f"embedding std {std:.3g} < {std_threshold:g} (healthy ~1/sqrt({dim})"
                        f" = {1 / math.sqrt(dim):.3g})")
    return messages


def evenly_spaced(total: int, count: int) -> np.ndarray:
    """``min(count, total)`` distinct indices spread evenly over ``range(total)``.

    The .beton files are written class by class, so the first N indices would hold only the
    first classes; evenly spaced ones keep the class balance of the split.
    """
    count = min(count, total)
    return np.unique(np.linspace(0, total - 1, num=count).round().astype(np.int64))


def monitor_epochs(every: int, epochs: int) -> list[int]:
    """After which epochs (counted from 1) the monitor runs: every ``every``-th and the last."""
    if every <= 0:
        return []
    return [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]


def images_per_pass(train_images: int, val_images: int) -> int:
    """Frozen backbone forwards of one pass: the train subset once, the val subset twice
    (the image and its mirror)."""
    return train_images + 2 * val_images


# ----- the monitor -----------------------------------------------------------------------
class _WithEmbeddings(nn.Module):
    """One row an image: the backbone features, the projector's embedding of the image and
    that of its mirror image, side by side (so the kNN protocol's extraction takes all three)."""

    def __init__(self, model: BarlowTwins) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)
        self.feature_dim = self.embedding_dim = 0

    def forward(self, images: Tensor) -> Tensor:
        features = self.model.backbone(images)
        z1 = self.model.projector(features)
        z2 = self.model.projector(self.model.backbone(images.flip(-1)))
        self.feature_dim, self.embedding_dim = features.shape[1], z1.shape[1]
        return torch.cat([features, z1, z2], dim=1)


def _summary_writer(log_dir: Path) -> Any:
    """A TensorBoard SummaryWriter, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


class TrainingMonitor:
    """Runs the measures during pretraining, logs them and keeps its own clock."""

    def __init__(self, recipe: Recipe, out_dir: Path, dist: DistInfo) -> None:
        self.settings = recipe.monitor
        self.recipe, self.out_dir, self.dist = recipe, Path(out_dir), dist
        state = self._read_state()
        self.last_epoch: int = state["last_epoch"]
        self.clock = StageClock(dist.device, dist.world_size, prior_seconds=state["seconds"])
        self._loaders: dict[str, Any] = {}
        self._warned = False
        self._writer: Any = None
        if self.enabled and dist.is_main:
            self._writer = _summary_writer(self.out_dir / TENSORBOARD_DIR)

    @property
    def enabled(self) -> bool:
        return self.settings["every_epochs"] > 0

    def due(self, epochs_done: int) -> bool:
        """Monitor now, after ``epochs_done`` epochs (every N, the last, not twice)?"""
        if epochs_done <= self.last_epoch:
            return False
        return epochs_done in monitor_epochs(self.settings["every_epochs"],
                                             self.recipe.optim.epochs)

    def _read_state(self) -> dict[str, Any]:
        path = self.out_dir / STATE_FILE
        if path.is_file():
            return json.loads(path.read_text())
        return {"seconds": 0.0, "last_epoch": 0}

    # ----- extraction ------------------------------------------------------------------
    def _loader(self, split: str) -> Any:
        """The loader of this rank's slice of the fixed ``split`` subset (built once)."""
        if split not in self._loaders:
            from ffcv_bt.data.eval_loader import make_eval_loader

            data_dir = Path(self.recipe.data.dir)
            count = self.settings["val_images" if split == "val" else "train_images"]
            indices = evenly_spaced(Manifest.read(data_dir).num_images(split), count)
            per_rank = max(1, self.recipe.optim.batch_size // self.dist.world_size)
            self._loaders[split] = make_eval_loader(
                str(beton_path(data_dir, split)), per_rank, "val",
                self.recipe.data.num_workers, device=self.device,
                res=self.recipe.resolution.max_res, resize_ratio=RESIZE_RATIO,
                indices=indices[self.dist.rank::self.dist.world_size],
                in_memory=self.recipe.data.in_memory)
            set_stage_threads(self.dist, self.recipe.train.cpu_threads)  # FFCV resets them
        return self._loaders[split]

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def _extract(self, model: BarlowTwins, split: str, embed: bool) -> dict[str, Tensor]:
        """Backbone features and labels of the subset (the kNN protocol's extraction): this
        rank's slice alone, or with ``embed`` all ranks' and the projector embeddings of the
        images and of their mirror images."""
        if not embed:
            features, labels = extract_features(model.backbone, self._loader(split), self.device)
            return {"features": features, "labels": labels}
        both = _WithEmbeddings(model)
        rows, labels = gather_features(both, self._loader(split), self.dist)
        features, z1, z2 = (part.contiguous() for part in
                            rows.split([both.feature_dim, both.embedding_dim, both.embedding_dim], 1))
        return {"features": features, "labels": labels, "z1": z1, "z2": z2}

    # ----- one monitoring pass ---------------------------------------------------------
    def run(self, model: BarlowTwins, epochs_done: int, step: int,
            pretrain_clock: StageClock) -> dict[str, Any]:
        """Measure, log (rank 0) and return the record; the pretraining clock must be stopped."""
        if pretrain_clock.running:
            raise RuntimeError("the pretraining clock must be stopped while the monitor runs")
        self.clock.start()
        try:
            record = self._measure(model, epochs_done, step)  # frozen: eval mode, fp32
        finally:
            self.clock.stop()
        record["monitor_device_hours"] = self.clock.device_hours
        record["pretrain_device_hours"] = pretrain_clock.device_hours
        record["elapsed"] = pretrain_clock.seconds
        self.last_epoch = epochs_done
        if record["collapse"] and not self._warned and self.dist.is_main:
            print(f"warning: the embeddings look collapsed after epoch {epochs_done}: "
                  + "; ".join(record["collapse"]), file=sys.stderr)
            self._warned = True
        if self.dist.is_main:
            self._write(record)
        return record

    def _measure(self, model: BarlowTwins, epochs_done: int, step: int) -> dict[str, Any]:
        s, loss_cfg = self.settings, self.recipe.loss
        val = self._extract(model, "val", embed=True)
        train = self._extract(model, "train", embed=False)
        compute_on = self.device if self.device.type == "cuda" else torch.device("cpu")
        num_classes = len(Manifest.read(self.recipe.data.dir).classes)
        top1, top5 = knn_accuracy(train["features"].to(compute_on), train["labels"],
                                  val["features"].to(compute_on), val["labels"], num_classes,
                                  k=s["knn_k"], temperature=s["knn_temperature"], sharded=True)
        z1, z2 = val["z1"].to(compute_on), val["z2"].to(compute_on)
        n, dim = z1.shape
        rank, std = rankme(z1), embedding_std(z1)
        on_diag, off_diag = correlation_terms(z1, z2)
        return {
            "kind": "monitor", "epoch": epochs_done - 1, "epochs_done": epochs_done,
            "step": step, "knn_top1": top1, "knn_top5": top5,
            "rankme": rank, "rankme_max": min(n, dim), "embedding_std": std,
            "embedding_std_reference": 1 / math.sqrt(dim),
            "val_on_diag": on_diag, "val_off_diag": off_diag,
            "val_loss": loss_cfg["scale_loss"] * (on_diag + loss_cfg["lambd"] * off_diag),
            "collapse": collapse_messages(rank, std, n, dim, s["collapse_rank_fraction"],
                                          s["collapse_std"]),
            "train_images": shard_rows(train["features"].shape[0], compute_on)[1],
            "val_images": int(n),
        }

    # ----- outputs ---------------------------------------------------------------------
    def _write(self, record: dict[str, Any]) -> None:
        append_log(self.out_dir, record, self.dist)
        atomic_write_json(self.out_dir / STATE_FILE,
                          {"seconds": self.clock.seconds, "last_epoch": self.last_epoch})
        if self._writer is not None:
            for key in MONITOR_SCALARS:
                self._writer.add_scalar(f"monitor/{key}", record[key], record["step"])
            self._writer.add_scalar("monitor/collapse", float(bool(record["collapse"])),
                                    record["step"])
            self._writer.flush()
        write_plot(self.out_dir / "log.jsonl", self.out_dir / PLOT_FILE, self.dist.world_size)

    def on_train_record(self, record: dict[str, Any]) -> None:
        """Mirror a training log record (loss, learning rates, images/s, resolution) to
        TensorBoard (rank 0, monitor on, tensorboard installed)."""
        if self._writer is None:
            return
        for key in TRAIN_SCALARS:
            if key in record:
                self._writer.add_scalar(f"train/{key}", record[key], record["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_plot(log_file: Path, png: Path, n_devices: int) -> None:
    """Plot the training loss and the monitor's kNN top-1 against pretraining
    device-hours, from ``log_file``, into ``png`` (atomically; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") is None and "loss" in r]
    monitor = [r for r in records if r.get("kind") == "monitor"]
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_ax, knn_ax = figure.subplots(1, 2)
    loss_ax.plot([r["elapsed"] * n_devices / 3600 for r in train], [r["loss"] for r in train])
    loss_ax.set(xlabel="pretraining device-hours", ylabel="loss", title="Barlow Twins loss")
    knn_ax.plot([r["pretrain_device_hours"] for r in monitor], [r["knn_top1"] for r in monitor],
                marker="o")
    knn_ax.set(xlabel="pretraining device-hours", ylabel="top-1 (%)",
               title="kNN top-1 (monitor val subset)")
    figure.tight_layout()
    atomic_write(png, lambda tmp: figure.savefig(tmp, format="png"))
