"""The kNN protocol run on a dataset folder: frozen features of train and val, then
weighted kNN votes (``ffcv_bt.knn``), k=20 and temperature 0.07 in the standard protocol.

Both splits are read without augmentation (resize to ``knn.resize``, centre crop
``knn.res``) and the backbone runs frozen, in eval mode, in fp32. Unlike the linear probe,
the result does not depend on the scale of the features (cosine similarity), so the
random-init control is a fair control. Backbones: a weights file, ``random``, or
``pixels`` (the normalised crops themselves as features: the floor any representation
should beat; small images only, it stores every train image).

Each rank extracts the features of a disjoint slice of the images; the slices are gathered
and every rank holds all features (ImageNet-1k at 2048-d: ~10 GB, as DINO's kNN does).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ffcv_bt.accounting import StageClock, device_description
from ffcv_bt.atomic_files import atomic_write_json
from ffcv_bt.backbone_weights import load_backbone, sha256_of
from ffcv_bt.collectives import broadcast_object, gather_rows
from ffcv_bt.config import Recipe
from ffcv_bt.data.eval_loader import make_eval_loader
from ffcv_bt.data.manifest import Manifest, beton_path
from ffcv_bt.distributed import DistInfo, set_cpu_compute_threads
from ffcv_bt.knn import extract_features, knn_accuracy

PIXELS = "pixels"


def _split_features(recipe: Recipe, backbone: nn.Module, data_dir: Path, split: str,
                    num_images: int, dist: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' features and labels of ``split``, in a fixed order (rank slices in turn)."""
    k = recipe["knn"]
    indices = np.arange(num_images)[dist.rank::dist.world_size]
    loader = make_eval_loader(str(beton_path(data_dir, split)),
                              max(1, k["batch_size"] // dist.world_size), "val",
                              recipe["data"]["num_workers"], device=dist.device, res=k["res"],
                              resize_ratio=k["res"] / k["resize"], indices=indices,
                              in_memory=recipe["data"]["in_memory"])
    if dist.device.type == "cpu":
        set_cpu_compute_threads(recipe["train"]["cpu_threads"])
    features, labels = extract_features(backbone, loader, dist.device)
    return gather_rows(features.to(dist.device)).cpu(), gather_rows(labels.to(dist.device)).cpu()


def evaluate_knn(recipe: Recipe, weights: str, out_dir: str | Path, dist: DistInfo) -> dict[str, Any]:
    """Run (or skip, if finished) the kNN protocol on ``weights`` (a path, ``random`` or
    ``pixels``); write and return result.json."""
    out_dir = Path(out_dir)
    done = out_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    m, k = recipe["model"], recipe["knn"]
    data_dir = Path(recipe["data"]["dir"])
    manifest = Manifest.read(data_dir)
    if weights == PIXELS:
        backbone: nn.Module = nn.Flatten()
    else:
        backbone, _ = load_backbone(weights, m["arch"], m["width"], m["small_stem"],
                                    seed=recipe["train"]["seed"])
    backbone = backbone.to(dist.device)
    clock = StageClock(dist.device, dist.world_size)
    clock.start()
    train_x, train_y = _split_features(recipe, backbone, data_dir, "train",
                                       manifest.num_images("train"), dist)
    val_x, val_y = _split_features(recipe, backbone, data_dir, "val", manifest.num_images("val"), dist)
    compute_on = dist.device if dist.device.type == "cuda" else torch.device("cpu")
    top1, top5 = knn_accuracy(train_x.to(compute_on), train_y, val_x.to(compute_on), val_y,
                              len(manifest.classes), k=k["k"], temperature=k["temperature"])
    clock.stop()
    kind = weights if weights in ("random", PIXELS) else "pretrained"
    result = {
        "protocol": "knn", "backbone": kind, "top1": top1, "top5": top5,
        "best_top1": top1, "best_epoch": 0,
        "device_seconds": clock.seconds, "device_hours": clock.device_hours,
        "checkpoint": weights,
        "checkpoint_sha256": None if kind != "pretrained" else sha256_of(weights),
        "settings": {**k, "precision": "fp32", "train_images": int(train_x.shape[0]),
                     "val_images": int(val_x.shape[0]), "feature_dim": int(train_x.shape[1])},
        "protocol_file": recipe.protocol_file, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **device_description(dist.device),
    }
    if dist.is_main:
        atomic_write_json(done, result)
    return broadcast_object(result)  # type: ignore[return-value]
