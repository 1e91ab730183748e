"""The logistic-regression protocol: a linear classifier fitted by L-BFGS on frozen features
extracted once, without augmentation.

SimCLR's linear evaluation for transfer (Chen et al. 2020, arXiv 2002.05709, appendix B.8):
an L2-regularised multinomial logistic regression on the frozen network's features of
centre crops, fitted with L-BFGS, no data augmentation, its L2 coefficient chosen on held-out
data. Here the coefficient is chosen per backbone from the protocol's list by the top-1 on a
fixed held-out fifth of the train images (the same split for every backbone and seed), then
refitted on all of them; val is only scored. It costs one frozen pass over the
images (the kNN protocol's pass) instead of the linear probe's epochs of augmented
forwards, which is what makes it fit the CPU demo. Features are standardised with the
train split's mean and std first, so that the result does not depend on the scale of a
backbone's features: a random-init network's small, correlated features are not handicapped
against a pretrained network's (the SGD probe, whose learning rate is fixed, is scale
dependent). The objective is mean cross-entropy + ``weight_decay / 2 * ||W||^2``. Columns that
are copies of another after standardising (a grayscale image's three channels) are fitted
once: with the coefficient chosen on held-out data this only rescales the penalty
those features see, and it makes the pixel floor 3x cheaper. When the
kNN protocol has just read the same backbone with the same crops in this process, its
features are reused (``features_reused`` in result.json; the stage's device time is then
the fit's alone).
Backbones: a weights file, ``random``, or ``pixels`` (the floor).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ffcv_bt.config import Recipe
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.backbone_weights import sha256_of
from ffcv_bt.evaluation.knn import PIXELS, all_rows, features_key, frozen_splits
from ffcv_bt.params import float_list
from ffcv_bt.stage.mixed_precision import true_fp32
from ffcv_bt.stage.provenance import device_description
from ffcv_bt.stage.skeleton import run_stage

CLASSIFIER_FILE = "classifier.pt"
# Fits made in this process, by features and settings: a deterministic fit of the same
# features (the raw-pixel floor, the same for every seed) is made once.
_FIT_MEMO: dict[tuple, tuple[float, dict[float, float], Tensor, Tensor, float]] = {}


def feature_moments(train: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std of the train split (std 1 for constant features, which then
    stay at zero), for standardising every split."""
    std = train.std(dim=0)
    return train.mean(dim=0), torch.where(std > 1e-8, std, torch.ones_like(std))


def fit_logistic_regression(features: Tensor, labels: Tensor, num_classes: int,
                            weight_decay: float, iterations: int) -> tuple[Tensor, Tensor, float]:
    """Weights (C, D), bias (C,) and final objective of mean cross-entropy + weight_decay / 2
    * ||W||^2 (the bias is not decayed), fitted by full-batch L-BFGS from zero.

    Deterministic for fixed inputs (no sampling, zero start); computed in float32 with TF32
    off on ``features``' device.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"need (N, D) features and (N,) labels, got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    x = features.float()
    y = labels.to(x.device, torch.int64)
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9,
                                  line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        with true_fp32():
            return F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        final = float(objective())
    return weight.detach(), bias.detach(), final


def distinct_columns(train: Tensor, decimals: int = 2) -> Tensor:
    """Indices of the first of each set of columns of ``train`` equal when rounded to
    ``decimals`` decimals, in order. Standardised copies of one value differ by float
    rounding only (~1e-7), so they almost always round alike; a pair that does not is
    merely kept twice."""
    _, inverse = torch.unique(train.T.round(decimals=decimals), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), train.shape[1], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(train.shape[1]), reduce="amin")
    return first.sort().values


def held_out_split(n: int, fraction: float) -> tuple[Tensor, Tensor]:
    """A fixed (seed 0) split of ``n`` rows into fit and held-out indices."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    cut = n - max(1, round(fraction * n))
    return order[:cut].sort().values, order[cut:].sort().values


def choose_weight_decay(features: Tensor, labels: Tensor, num_classes: int,
                        decays: list[float], iterations: int,
                        held_out: float) -> tuple[float, dict[float, float]]:
    """The coefficient of ``decays`` whose fit on the fit split scores the best held-out
    top-1 (ties: the larger coefficient), and every coefficient's held-out top-1."""
    fit, held = held_out_split(features.shape[0], held_out)
    scores = {}
    for decay in decays:
        weight, bias, _ = fit_logistic_regression(features[fit], labels[fit], num_classes,
                                                  decay, iterations)
        with true_fp32():
            scores[decay] = top_k_accuracy(features[held] @ weight.T + bias, labels[held])[0]
    best = max(scores.values())
    return max(d for d, s in scores.items() if s == best), scores


def top_k_accuracy(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent); ties rank by class index."""
    ranking = scores.sort(dim=1, descending=True, stable=True).indices[:, :min(5, scores.shape[1])]
    hits = ranking.eq(labels.to(ranking.device, torch.int64)[:, None])
    n = scores.shape[0]
    return (100.0 * float(hits[:, :1].any(dim=1).sum()) / n,
            100.0 * float(hits.any(dim=1).sum()) / n)


def evaluate_logreg(recipe: Recipe, weights: str, out_dir: str | Path,
                    dist: DistInfo) -> dict[str, Any]:
    """Run (or skip, if finished) the logistic-regression protocol on ``weights`` (a path,
    ``random`` or ``pixels``); write and return result.json."""
    return run_stage(out_dir, lambda: _logreg_stage(recipe, weights, Path(out_dir), dist), dist)


def _logreg_stage(recipe: Recipe, weights: str, out_dir: Path, dist: DistInfo) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = recipe.logreg
    data_dir = Path(recipe.data.dir)
    manifest, clock, train_x, train_y, val_x, val_y, reused = frozen_splits(recipe, settings,
                                                                            weights, dist)
    train_x, train_y = all_rows(train_x, train_y, dist)  # the fit needs every rank's rows
    val_x, val_y = all_rows(val_x, val_y, dist)
    compute_on = dist.device if dist.device.type == "cuda" else torch.device("cpu")
    mean, std = feature_moments(train_x.to(compute_on))
    train_x, val_x = (train_x.to(compute_on) - mean) / std, (val_x.to(compute_on) - mean) / std
    columns = distinct_columns(train_x)
    train_x, val_x = train_x[:, columns], val_x[:, columns]
    classes = len(manifest.classes)
    decays = float_list(settings["weight_decays"])
    fit_key = (features_key(recipe, settings, weights, data_dir, "train",
                            manifest.num_images("train"), dist),
               tuple(decays), settings["held_out"], settings["iterations"])
    if fit_key not in _FIT_MEMO:  # the same features fit the same way: the pixel floor per seed
        decay, scores = choose_weight_decay(train_x, train_y, classes, decays,
                                            settings["iterations"], settings["held_out"])
        _FIT_MEMO[fit_key] = (decay, scores, *fit_logistic_regression(
            train_x, train_y, classes, decay, settings["iterations"]))
    decay, scores, weight, bias, objective = _FIT_MEMO[fit_key]
    with true_fp32():
        top1, top5 = top_k_accuracy(val_x @ weight.T + bias, val_y)
        train_top1, _ = top_k_accuracy(train_x @ weight.T + bias, train_y)
    clock.stop()
    if dist.is_main:  # the classifier: logits = ((x - mean) / std)[:, columns] @ W.T + b
        torch.save({"weight": weight.cpu(), "bias": bias.cpu(), "mean": mean.cpu(),
                    "std": std.cpu(), "columns": columns.cpu(), "weight_decay": decay},
                   out_dir / CLASSIFIER_FILE)
    kind = weights if weights in ("random", PIXELS) else "pretrained"
    return {
        "protocol": "logreg", "backbone": kind, "top1": top1, "top5": top5,
        "best_top1": top1, "best_epoch": 0, "train_top1": train_top1, "objective": objective,
        "weight_decay": decay, "held_out_top1": {f"{d:g}": s for d, s in scores.items()},
        "device_seconds": clock.seconds, "device_hours": clock.device_hours,
        "checkpoint": weights,
        "checkpoint_sha256": None if kind != "pretrained" else sha256_of(weights),
        "features_reused": reused,  # extracted by an earlier protocol in this process
        "settings": {**settings, "train_images": int(train_x.shape[0]),
                     "val_images": int(val_x.shape[0]), "feature_dim": int(mean.numel()),
                     "distinct_features": int(columns.numel())},
        "protocol_file": recipe.protocol_file, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **device_description(dist.device),
    }
