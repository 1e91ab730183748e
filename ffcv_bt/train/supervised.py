"""The supervised ceiling: the same backbone trained with labels on the same images, for the
same epochs and resolutions as pretraining, so that a table can say what fraction of a
supervised network's accuracy self-supervision reaches at equal compute.

The recipe shape is ffcv-imagenet's (github.com/libffcv/ffcv-imagenet, ``train_imagenet.py``
and ``rn18_configs`` / ``rn50_configs``): SGD with momentum 0.9, cross-entropy with label
smoothing 0.1, no weight decay on BatchNorm (nor, here, on biases), a learning rate that
ramps linearly from 0 to its peak at ``lr_peak_epoch`` and back to 0 at the last epoch
(updated every step), random-resized crop + flip through an FFCV loader (this project's
evaluation train loader, one view), and the pretraining's progressive resolution epoch by
epoch. The backbone starts from torchvision's standard initialisation, as theirs.

It runs as one more trained stage (``ffcv_bt.evaluation.trained.Evaluation`` on the stage
skeleton: resume, checkpoints, DDP, the clock), writes ``<arch>.pth`` like pretraining, and its backbone is
then evaluated with the same protocols as the pretrained one (backbone ``supervised``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ffcv_bt.atomic_files import atomic_torch_save
from ffcv_bt.config import Recipe
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.trained import Evaluation
from ffcv_bt.method.schedules import BASE_LR, resolution_of_recipe
from ffcv_bt.stage.skeleton import run_stage


def triangular_lr(epoch: float, peak_epoch: float, epochs: int, peak_lr: float) -> float:
    """ffcv-imagenet's "cyclic" schedule: 0 -> ``peak_lr`` at ``peak_epoch`` -> 0 at ``epochs``."""
    return float(np.interp(epoch, [0.0, peak_epoch, float(epochs)], [0.0, peak_lr, 0.0]))


def no_decay(param: torch.Tensor) -> bool:
    """BatchNorm weights and every bias: no weight decay (ffcv-imagenet's ``bn_wd: 0``)."""
    return param.ndim <= 1


class SupervisedTraining(Evaluation):
    """Backbone (standard init) + linear head trained with labels on the whole train split."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, dist: DistInfo) -> None:
        super().__init__(recipe, "supervised", "random", out_dir, dist)

    def create_optimizer(self) -> torch.optim.SGD:
        s = self.settings
        decay, plain = [], []
        for param in self.model.parameters():
            (plain if no_decay(param) else decay).append(param)
        groups = [{"params": decay, "weight_decay": s.weight_decay, BASE_LR: s.lr_classifier},
                  {"params": plain, "weight_decay": 0.0, BASE_LR: s.lr_classifier}]
        return torch.optim.SGD(groups, lr=s.lr_classifier, momentum=s.momentum)

    def learning_rate(self, base_lr: float, batch: int, steps: int) -> float:
        """The triangular rate, updated every step."""
        s = self.settings
        return triangular_lr(self.epoch + batch / steps, s.lr_peak_epoch, s.epochs, base_lr)

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.settings.label_smoothing)

    def begin_epoch(self) -> None:
        self.train_loader.set_resolution(resolution_of_recipe(self.epoch, self.recipe.resolution))
        super().begin_epoch()

    def result(self) -> dict[str, Any]:
        """The result of the classifier on val, and the backbone saved as ``<arch>.pth``."""
        path = self.backbone_path(self.out_dir, self.recipe)
        if self.dist.is_main:
            atomic_torch_save(path, self.model.backbone.state_dict())
        return {**super().result(), "backbone": "supervised", "checkpoint": str(path),
                "checkpoint_sha256": None}

    @staticmethod
    def backbone_path(out_dir: str | Path, recipe: Recipe) -> Path:
        return Path(out_dir) / f"{recipe.model.arch}.pth"


def train_supervised(recipe: Recipe, out_dir: str | Path, dist: DistInfo) -> dict[str, Any]:
    """Run (or resume, or skip if finished) the supervised stage; write and return result.json."""
    return run_stage(out_dir, lambda: SupervisedTraining(recipe, out_dir, dist).run(), dist)
