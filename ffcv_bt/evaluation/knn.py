"""The kNN protocol: weighted k-nearest-neighbour votes on frozen features, and the
stage that runs it on a dataset folder.

The protocol of Wu et al. 2018 ("Unsupervised feature learning via non-parametric instance
discrimination"), as used by DINO's ``eval_knn`` (Caron et al. 2021): features are
L2-normalised, each query's k most cosine-similar training features vote for their labels
with weight ``exp(similarity / temperature)``, and the class scores are the summed votes.
Usual settings: k = 20, temperature = 0.07.

``knn_predict`` works on full tensors on any device. ``evaluate_knn`` runs the protocol on
a dataset folder with the protocol file's k and temperature. Both splits are read without
augmentation (resize to ``knn.resize``, centre crop ``knn.res``) and the backbone runs
frozen, in eval mode, in fp32. Unlike the linear probe, the result does not depend on the
scale of the features (cosine similarity), so the random-init control is a fair control.
Backbones: a weights file, ``random``, or ``pixels`` (the normalised crops themselves as
features: the floor any representation should beat; small images only, it stores every
train image).

Each rank extracts the features of a disjoint slice of the images. The train features stay
sharded: each rank scores every (gathered, small) query against its own slice and the
per-slice k nearest are merged (``ffcv_bt.evaluation.neighbours``), so a rank holds
1/world_size of the bank (ImageNet-1k at 2048-d: ~10 GB in all) and the result equals one
process's. The logistic regression gathers all of them (:func:`all_rows`) for its fit.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffcv_bt.config import Recipe
from ffcv_bt.data.eval_loader import make_eval_loader
from ffcv_bt.data.manifest import Manifest, beton_path
from ffcv_bt.distributed.collectives import gather_rows
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.backbone_weights import load_backbone, sha256_of
from ffcv_bt.evaluation.neighbours import gather_candidates, merge_nearest, shard_nearest, shard_rows
from ffcv_bt.stage.clock import StageClock
from ffcv_bt.stage.mixed_precision import true_fp32
from ffcv_bt.stage.provenance import device_description
from ffcv_bt.stage.skeleton import run_stage, set_stage_threads


def knn_predict(train_features: Tensor, train_labels: Tensor, query_features: Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07,
                chunk_size: int = 256, *, sharded: bool = False) -> Tensor:
    """Class scores (Q, C) of each query row: the sum of ``exp(cos / temperature)`` over its
    ``min(k, N)`` most similar training rows, per training label (equal similarities: the
    lower bank position first; ``ffcv_bt.evaluation.neighbours``).

    Computed on ``train_features``' device in its dtype (at least float32, TF32 off). Queries are taken
    ``chunk_size`` at a time against tiles of the bank, so the similarity matrix in memory is
    ``chunk_size x min(N, neighbours.TILE_ROWS)``.
    With ``sharded`` (a collective: every rank calls it), ``train_features`` are this rank's
    rows of a bank made of every rank's rows in rank order, and every rank gets the scores
    of the whole bank, equal to one process's on the gathered bank.
    """
    if train_features.ndim != 2 or query_features.ndim != 2:
        raise ValueError("knn_predict expects (N, D) train and (Q, D) query features, got "
                         f"{tuple(train_features.shape)} and {tuple(query_features.shape)}")
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(f"feature dimensions differ: train {train_features.shape[1]}, "
                         f"query {query_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must have shape ({train_features.shape[0]},), "
                         f"got {tuple(train_labels.shape)}")
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(f"need k >= 1, temperature > 0, chunk_size >= 1; got {k}, "
                         f"{temperature}, {chunk_size}")
    device = train_features.device
    offset, total = (shard_rows(train_features.shape[0], device) if sharded
                     else (0, train_features.shape[0]))
    if total == 0:
        raise ValueError("knn_predict needs at least one training feature")
    dtype = torch.promote_types(train_features.dtype, torch.float32)
    train = F.normalize(train_features.to(dtype), dim=1)
    labels = train_labels.to(device=device, dtype=torch.int64)
    queries = F.normalize(query_features.to(device, dtype), dim=1)
    k = min(k, total)
    nearest = shard_nearest(train, labels, queries, k, offset, total, chunk_size)
    if sharded:
        nearest = merge_nearest(*gather_candidates(*nearest), k)
    similarity, _, label = nearest
    scores = torch.zeros(queries.shape[0], num_classes, device=device, dtype=dtype)
    return scores.scatter_add_(1, label, (similarity / temperature).exp())


def knn_accuracy(train_features: Tensor, train_labels: Tensor, query_features: Tensor,
                 query_labels: Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk_size: int = 256, *, sharded: bool = False) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of :func:`knn_predict`'s scores (``sharded``: see
    there).

    Classes with equal scores rank by class index (lowest first), so results are
    deterministic.
    """
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k,
                         temperature, chunk_size, sharded=sharded)
    if query_labels.shape != (scores.shape[0],):
        raise ValueError(f"query_labels must have shape ({scores.shape[0]},), "
                         f"got {tuple(query_labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("knn_accuracy needs at least one query")
    ranking = scores.sort(dim=1, descending=True, stable=True).indices[:, :min(5, num_classes)]
    hits = ranking.eq(query_labels.to(ranking.device, torch.int64)[:, None])
    n = scores.shape[0]
    return (100.0 * float(hits[:, :1].any(dim=1).sum()) / n,
            100.0 * float(hits.any(dim=1).sum()) / n)


@torch.no_grad()
def extract_features(backbone: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                     device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Features (N, D) float32 and labels (N,) int64, both on the CPU, of a frozen backbone.

    Runs ``backbone`` in eval mode (BatchNorm uses its running statistics, its mode is
    restored afterwards) in fp32 with autocast and TF32 off. Everything kept is copied out of the
    batch, since FFCV loaders reuse their buffers.
    """
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for images, targets in batches:
            with torch.autocast(device.type, enabled=False), true_fp32():
                out = backbone(images.to(device, non_blocking=True).float())
            features.append(out.reshape(out.shape[0], -1).to("cpu", torch.float32, copy=True))
            labels.append(targets.reshape(-1).to("cpu", torch.int64, copy=True))
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("extract_features got no batches")
    return torch.cat(features), torch.cat(labels)


PIXELS = "pixels"


def frozen_backbone(recipe: Recipe, weights: str, dist: DistInfo) -> nn.Module:
    """The backbone a frozen-feature protocol reads, on the stage's device: ``weights`` (a
    path or ``random``) in the recipe's architecture, or the flattened pixels."""
    if weights == PIXELS:
        return nn.Flatten().to(dist.device)
    m = recipe.model
    backbone, _ = load_backbone(weights, m["arch"], m["width"], m["small_stem"],
                                seed=recipe.train.seed)
    return backbone.to(dist.device)


# Features extracted in this process, for the next frozen-feature protocol on the same
# backbone, images and crops (the demo runs kNN, then logreg, on four backbones). Only
# small feature sets are kept (the demo's; never ImageNet's ~10 GB per backbone).
_FEATURE_MEMO: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
FEATURE_MEMO_BYTES = 1 << 29


def _backbone_key(recipe: Recipe, weights: str) -> tuple:
    """What fixes a frozen backbone's features: its weights file's bytes, or for ``random``
    the architecture and seed; ``pixels`` is itself."""
    if weights == PIXELS:
        return (PIXELS,)
    m = recipe.model
    arch = (m["arch"], m["width"], m["small_stem"])
    if weights == "random":
        return ("random", *arch, recipe.train.seed)
    return ("file", sha256_of(weights), *arch)


def features_key(recipe: Recipe, settings: Mapping[str, Any], weights: str, data_dir: Path,
                 split: str, num_images: int, dist: DistInfo) -> tuple:
    """What fixes the features of ``split``: backbone, images, crops and this rank's share."""
    return (_backbone_key(recipe, weights), str(Path(data_dir).resolve()), split, num_images,
            settings["res"], settings["resize"], dist.rank, dist.world_size)


def memo_features(recipe: Recipe, settings: Mapping[str, Any], weights: str, data_dir: Path,
                  split: str, num_images: int, dist: DistInfo,
                  backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """:func:`split_features`, or the copy this process kept from an identical extraction;
    the flag says which (True: reused)."""
    key = features_key(recipe, settings, weights, data_dir, split, num_images, dist)
    if key in _FEATURE_MEMO:
        return (*_FEATURE_MEMO[key], True)
    features, labels = split_features(recipe, settings, backbone, data_dir, split, num_images, dist)
    kept = sum(x.numel() * x.element_size() for pair in _FEATURE_MEMO.values() for x in pair)
    if kept + features.numel() * features.element_size() <= FEATURE_MEMO_BYTES:
        _FEATURE_MEMO[key] = (features, labels)
    return features, labels, False


def split_features(recipe: Recipe, k: Mapping[str, Any], backbone: nn.Module, data_dir: Path,
                   split: str, num_images: int, dist: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's features and labels of ``split`` (its slice ``rank::world_size`` of the
    images, on the CPU), read as protocol section ``k`` says (its batch_size, res and
    resize); :func:`all_rows` gathers every rank's."""
    indices = np.arange(num_images)[dist.rank::dist.world_size]
    loader = make_eval_loader(str(beton_path(data_dir, split)),
                              max(1, k["batch_size"] // dist.world_size), "val",
                              recipe.data.num_workers, device=dist.device, res=k["res"],
                              resize_ratio=k["res"] / k["resize"], indices=indices,
                              in_memory=recipe.data.in_memory)
    set_stage_threads(dist, recipe.train.cpu_threads)
    return extract_features(backbone, loader, dist.device)


def all_rows(features: Tensor, labels: Tensor, dist: DistInfo) -> tuple[Tensor, Tensor]:
    """Every rank's rows in rank order, on every rank, on the CPU (identity alone)."""
    if dist.world_size == 1:
        return features, labels
    return gather_rows(features.to(dist.device)).cpu(), gather_rows(labels.to(dist.device)).cpu()


def gather_features(backbone: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                    dist: DistInfo) -> tuple[Tensor, Tensor]:
    """``extract_features`` of this rank's ``batches``, then every rank's rows in rank order
    (on every rank, on the CPU)."""
    return all_rows(*extract_features(backbone, batches, dist.device), dist)


class FrozenSplits(NamedTuple):
    """What a frozen-feature protocol starts from: the data set's manifest, the stage clock
    (started before the backbone ran) and this rank's train and val features."""

    manifest: Manifest
    clock: StageClock
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    train_reused: bool  # the train features came from an earlier protocol in this process


def frozen_splits(recipe: Recipe, settings: Mapping[str, Any], weights: str,
                  dist: DistInfo) -> FrozenSplits:
    """The frozen backbone of ``weights`` run (or its kept features reused, memo_features)
    over both splits with the protocol's ``settings``, timed by a started StageClock."""
    data_dir = Path(recipe.data.dir)
    manifest = Manifest.read(data_dir)
    backbone = frozen_backbone(recipe, weights, dist)
    clock = StageClock(dist.device, dist.world_size)
    clock.start()
    train_x, train_y, reused = memo_features(recipe, settings, weights, data_dir, "train",
                                             manifest.num_images("train"), dist, backbone)
    val_x, val_y, _ = memo_features(recipe, settings, weights, data_dir, "val",
                                    manifest.num_images("val"), dist, backbone)
    return FrozenSplits(manifest, clock, train_x, train_y, val_x, val_y, reused)


def evaluate_knn(recipe: Recipe, weights: str, out_dir: str | Path, dist: DistInfo) -> dict[str, Any]:
    """Run (or skip, if finished) the kNN protocol on ``weights`` (a path, ``random`` or
    ``pixels``); write and return result.json."""
    return run_stage(out_dir, lambda: _knn_stage(recipe, weights, Path(out_dir), dist), dist)


def _knn_stage(recipe: Recipe, weights: str, out_dir: Path, dist: DistInfo) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    k = recipe.knn
    manifest, clock, train_x, train_y, val_x, val_y, _ = frozen_splits(recipe, k, weights, dist)
    val_x, val_y = all_rows(val_x, val_y, dist)  # every query; the bank stays sharded
    compute_on = dist.device if dist.device.type == "cuda" else torch.device("cpu")
    train_images = shard_rows(train_x.shape[0], compute_on)[1]
    top1, top5 = knn_accuracy(train_x.to(compute_on), train_y, val_x.to(compute_on), val_y,
                              len(manifest.classes), k=k["k"], temperature=k["temperature"],
                              sharded=True)
    clock.stop()
    kind = weights if weights in ("random", PIXELS) else "pretrained"
    result = {
        "protocol": "knn", "backbone": kind, "top1": top1, "top5": top5,
        "best_top1": top1, "best_epoch": 0,
        "device_seconds": clock.seconds, "device_hours": clock.device_hours,
        "checkpoint": weights,
        "checkpoint_sha256": None if kind != "pretrained" else sha256_of(weights),
        "settings": {**k, "precision": "fp32", "train_images": train_images,
                     "val_images": int(val_x.shape[0]), "feature_dim": int(train_x.shape[1])},
        "protocol_file": recipe.protocol_file, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **device_description(dist.device),
    }
    return result
