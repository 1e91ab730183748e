"""Weighted k-nearest-neighbour classification on frozen features (a monitoring protocol).

The protocol of Wu et al. 2018 ("Unsupervised feature learning via non-parametric instance
discrimination"), as used by DINO's ``eval_knn`` (Caron et al. 2021): features are
L2-normalised, each query's k most cosine-similar training features vote for their labels
with weight ``exp(similarity / temperature)``, and the class scores are the summed votes.
Usual settings: k = 20, temperature = 0.07.

Distributed use: gather the features and labels of all ranks first (the caller's job);
``knn_predict`` then works on the full tensors on any device.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def knn_predict(train_features: Tensor, train_labels: Tensor, query_features: Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07,
                chunk_size: int = 256) -> Tensor:
    """Class scores (Q, C) of each query row: the sum of ``exp(cos / temperature)`` over its
    ``min(k, N)`` most similar training rows, per training label.

    Computed on ``train_features``' device in its dtype (at least float32). Queries are taken
    ``chunk_size`` at a time, so the similarity matrix in memory is ``chunk_size x N``.
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
    if train_features.shape[0] == 0:
        raise ValueError("knn_predict needs at least one training feature")
    device = train_features.device
    dtype = torch.promote_types(train_features.dtype, torch.float32)
    train = F.normalize(train_features.to(dtype), dim=1)
    labels = train_labels.to(device=device, dtype=torch.int64)
    k = min(k, train.shape[0])
    scores = torch.zeros(query_features.shape[0], num_classes, device=device, dtype=dtype)
    for start in range(0, query_features.shape[0], chunk_size):
        queries = F.normalize(query_features[start:start + chunk_size].to(device, dtype), dim=1)
        similarity, index = (queries @ train.T).topk(k, dim=1)
        votes = (similarity / temperature).exp()
        scores[start:start + queries.shape[0]].scatter_add_(1, labels[index], votes)
    return scores


def knn_accuracy(train_features: Tensor, train_labels: Tensor, query_features: Tensor,
                 query_labels: Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk_size: int = 256) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of :func:`knn_predict`'s scores.

    Classes with equal scores rank by class index (lowest first), so results are
    deterministic.
    """
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k,
                         temperature, chunk_size)
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
    restored afterwards) in fp32 with autocast off. Everything kept is copied out of the
    batch, since FFCV loaders reuse their buffers.
    """
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for images, targets in batches:
            with torch.autocast(device.type, enabled=False):
                out = backbone(images.to(device, non_blocking=True).float())
            features.append(out.reshape(out.shape[0], -1).to("cpu", torch.float32, copy=True))
            labels.append(targets.reshape(-1).to("cpu", torch.int64, copy=True))
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("extract_features got no batches")
    return torch.cat(features), torch.cat(labels)
