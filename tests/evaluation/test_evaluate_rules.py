"""The evaluation protocols' rules, each against an independent computation: top-5 is top-5
(not top-1), and the semi-supervised backbone and classifier get their own learning rates,
each on its per-epoch cosine."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recipes import write_tiny_recipe
from torch import nn

from ffcv_bt.config import load_recipe
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.trained import Evaluation, topk_correct
from ffcv_bt.method.schedules import cosine_epoch_lr

CPU = DistInfo()


def count_topk_by_sorting(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Samples whose label is among the k largest logits, by a full descending argsort."""
    hits = 0
    for row, label in zip(logits, labels):
        ranking = np.argsort(-row, kind="stable")
        hits += int(label in ranking[:k])
    return hits


def logits_where_top1_and_top5_differ(n: int = 300, classes: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes))  # continuous: no ties
    labels = rng.integers(0, classes, size=n)
    top1 = count_topk_by_sorting(logits, labels, 1)
    top5 = count_topk_by_sorting(logits, labels, 5)
    assert top5 > top1 + n // 10  # a case that tells them apart
    return logits, labels, top1, top5


def test_topk_correct_against_argsort() -> None:
    logits, labels, top1, top5 = logits_where_top1_and_top5_differ()
    got = topk_correct(torch.from_numpy(logits), torch.from_numpy(labels), ks=(1, 5))
    assert got == [top1, top5]
    assert topk_correct(torch.from_numpy(logits), torch.from_numpy(labels), ks=(5, 1)) == [top5, top1]


class PassThrough(nn.Module):
    """A "model" whose output is its input: the val batches carry the logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def semi_evaluation(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    folder = tmp_path_factory.mktemp("rules")
    recipe = load_recipe(write_tiny_recipe(folder, tiny_dataset))
    return Evaluation(recipe, "semi10", "random", folder / "semi10", CPU)


def test_validation_reports_top1_and_top5(semi_evaluation: Evaluation) -> None:
    logits, labels, top1, top5 = logits_where_top1_and_top5_differ()
    ev = semi_evaluation
    model, loader = ev.model, ev.val_loader
    try:
        ev.model = PassThrough()
        ev.val_loader = [(torch.from_numpy(logits[i:i + 64]).float(), torch.from_numpy(labels[i:i + 64]))
                         for i in range(0, len(labels), 64)]
        got1, got5 = ev.validate()
    finally:
        ev.model, ev.val_loader = model, loader
    assert got1 == pytest.approx(100 * top1 / len(labels), rel=1e-12)
    assert got5 == pytest.approx(100 * top5 / len(labels), rel=1e-12)


class NoBatches:
    """A train loader with no batches: ``train_epoch`` then only sets the learning rates."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def test_semi_supervised_learning_rates_per_group_and_epoch(semi_evaluation: Evaluation) -> None:
    ev = semi_evaluation
    s = ev.settings
    assert s.lr_backbone != s.lr_classifier and s.lr_backbone > 0  # the rules tell them apart
    ids = lambda params: {id(p) for p in params}
    backbone, head = ids(ev.model.backbone.parameters()), ids(ev.model.head.parameters())
    groups = ev.optimizer.param_groups
    assert len(groups) == 2
    by_role = {}
    for group in groups:
        params = ids(group["params"])
        role = "backbone" if params == backbone else "head" if params == head else None
        assert role is not None, "a parameter group mixes backbone and head parameters"
        by_role[role] = group
    assert set(by_role) == {"backbone", "head"}
    assert ev.optimizer.defaults["weight_decay"] == s.weight_decay
    loader, epoch = ev.train_loader, ev.epoch
    try:
        ev.train_loader = NoBatches()
        for e in range(s.epochs):
            ev.epoch = e
            ev.train_epoch()
            assert by_role["backbone"]["lr"] == pytest.approx(
                cosine_epoch_lr(e, s.epochs, s.lr_backbone), rel=1e-15, abs=0)
            assert by_role["head"]["lr"] == pytest.approx(
                cosine_epoch_lr(e, s.epochs, s.lr_classifier), rel=1e-15, abs=0)
    finally:
        ev.train_loader, ev.epoch = loader, epoch
    lrs = [cosine_epoch_lr(e, s.epochs, 1.0) for e in range(s.epochs)]
    assert len(set(lrs)) == s.epochs  # the schedule moved between the epochs checked
