"""The reference recipe's exact optimisation step, reproduced by ours.

The released Barlow Twins code (facebookresearch/barlowtwins, main.py; Zbontar et al. 2021,
arXiv 2103.03230) all-reduces the cross-correlation matrix outside autograd and lets DDP
average gradients, so on its 16 GPUs every parameter gradient is dL/dtheta / 16. Ours is
exactly dL/dtheta at any number of GPUs. LARS's trust ratio cancels a gradient scale for
weights, but not for biases/BN (plain SGD step) nor for the weight-decay share (added before
the trust ratio), hence ``loss.scale_loss = 1/16`` in rules/base.yaml.

Here the reference step is emulated from scratch, with its constants written out (lambd,
LARS settings, the learning-rate function of ``adjust_learning_rate``), fed the gradient of
the unscaled loss divided by 16 (what each of its 16 GPUs steps with), and compared with our
objective, optimizer and schedule built from rules/1000ep.yaml, on a model small enough for
a CPU, in float64, for 3 steps at three places of the schedule.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.model import BarlowTwins
from ffcv_bt.objective import barlow_twins_loss
from ffcv_bt.optim import LARS, param_groups_for_lars, set_learning_rates
from ffcv_bt.schedules import lr_at

REFERENCE_GPUS = 16                      # the release README: 16 V100, ~7 days
# Only the model's size changes: both ndim > 1 weights and ndim == 1 biases/BN remain.
TINY_MODEL = {"model.arch": "resnet18", "model.width": "2", "model.small_stem": "true",
              "model.projector": "32-32-32"}
IMAGE_SIZE = 8
STEPS_PER_EPOCH = 1_281_167 // 2048       # ImageNet train images / global batch
STEPS_PER_PLACE = 3


# ----------------------------------------------------------------- the reference, emulated
def reference_learning_rates(step: int, steps_per_epoch: int) -> tuple[float, float]:
    """``adjust_learning_rate`` of the release at 1000 epochs, batch 2048: (weights, biases)."""
    max_steps = 1000 * steps_per_epoch
    warmup_steps = 10 * steps_per_epoch
    base_lr = 2048 / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    return lr * 0.2, lr * 0.0048


def reference_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The release's loss on one process holding the whole batch: affine-free BatchNorm,
    c = bn(z1)^T bn(z2) / N, on-diagonal plus 0.0051 x off-diagonal squares."""
    n, d = z1.shape
    bn = nn.BatchNorm1d(d, affine=False).to(z1)
    c = bn(z1).T @ bn(z2) / n
    off = ~torch.eye(d, dtype=torch.bool)
    return (torch.diagonal(c) - 1).pow(2).sum() + 0.0051 * c[off].pow(2).sum()


class ReferenceLARS:
    """The release's LARS (momentum 0.9, eta 0.001, weight decay 1e-6), with its
    ``exclude_bias_and_norm`` filter (ndim == 1) on both weight decay and adaptation."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.weights = [p for p in params if p.ndim != 1]
        self.biases = [p for p in params if p.ndim == 1]
        self.mu: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, grads: dict[int, torch.Tensor], lr_weights: float, lr_biases: float) -> None:
        for group, lr in ((self.weights, lr_weights), (self.biases, lr_biases)):
            for p in group:
                dp = grads[id(p)]
                if p.ndim != 1:
                    dp = dp + 1e-6 * p
                    p_norm, dp_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0,
                                    torch.where(dp_norm > 0, 0.001 * p_norm / dp_norm, one), one)
                    dp = dp * q
                mu = self.mu.get(id(p))
                mu = dp.clone() if mu is None else 0.9 * mu + dp
                self.mu[id(p)] = mu
                p -= lr * mu


# --------------------------------------------------------------------------- the comparison
def views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    shape = (2048, 3, IMAGE_SIZE, IMAGE_SIZE)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64))


def run_place(recipe, start: int, scale_loss: float,
              lr_biases: float | None = None) -> tuple[float, float]:
    """3 steps from ``start`` with ours and with the emulated reference, from the same
    weights; returns the worst relative difference of (parameters, parameter updates)."""
    m, o, loss_cfg = recipe["model"], dict(recipe["optim"]), recipe["loss"]
    if lr_biases is not None:
        o["lr_biases"] = lr_biases
    torch.manual_seed(0)
    ours = BarlowTwins(m["arch"], m["projector"], m["width"], m["small_stem"],
                       m["zero_init_residual"]).double()
    theirs = copy.deepcopy(ours)
    initial = [p.detach().clone() for p in ours.parameters()]
    optimizer = LARS(param_groups_for_lars(ours), lr=0.0, weight_decay=o["weight_decay"],
                     momentum=o["momentum"], eta=o["eta"])
    reference = ReferenceLARS(list(theirs.parameters()))
    lrs = []
    for step in range(start, start + STEPS_PER_PLACE):
        x1, x2 = views(step)

        mult = lr_at(step, STEPS_PER_EPOCH, o["epochs"], o["batch_size"], o["warmup_epochs"],
                     o["final_lr_ratio"])
        set_learning_rates(optimizer, mult, o["lr_weights"], o["lr_biases"])
        loss = barlow_twins_loss(*ours(x1, x2), lambd=loss_cfg["lambd"], scale_loss=scale_loss,
                                 formulation=loss_cfg["formulation"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        lr_w, lr_b = reference_learning_rates(step, STEPS_PER_EPOCH)
        params = list(theirs.parameters())
        grads = torch.autograd.grad(reference_loss(*theirs(x1, x2)), params)
        reference.step({id(p): g / REFERENCE_GPUS for p, g in zip(params, grads)}, lr_w, lr_b)
        lrs.append(lr_w)
    assert lrs[0] != lrs[1] != lrs[2], "the learning rate must change between the steps"

    worst_param = worst_update = 0.0
    for p0, a, b in zip(initial, ours.parameters(), theirs.parameters()):
        a, b = a.detach(), b.detach()
        if b.abs().max() > 0:
            worst_param = max(worst_param, float((a - b).abs().max() / b.abs().max()))
        update_a, update_b = a - p0, b - p0
        if update_b.norm() > 0:
            worst_update = max(worst_update, float((update_a - update_b).norm() / update_b.norm()))
        else:
            assert update_a.norm() == 0
    return worst_param, worst_update


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(RULES_DIR / "1000ep.yaml", TINY_MODEL)


PLACES = {"warmup": 1000, "middle": 1000 * STEPS_PER_EPOCH // 2,
          "end": 1000 * STEPS_PER_EPOCH - STEPS_PER_PLACE}


@pytest.mark.parametrize("place", PLACES)
def test_recipe_reproduces_the_16_gpu_reference_step(recipe, place, record_property):
    assert recipe["loss"]["scale_loss"] == 1 / REFERENCE_GPUS
    worst_param, worst_update = run_place(recipe, PLACES[place], recipe["loss"]["scale_loss"])
    print(f"\n{place}: scale_loss 1/16: worst relative difference parameters {worst_param:.3g}, "
          f"updates {worst_update:.3g}")
    record_property("worst_relative_difference", {"parameters": worst_param,
                                                  "updates": worst_update})
    assert worst_param <= 1e-9
    assert worst_update <= 1e-9


@pytest.mark.parametrize("lr_biases", [0.0048, 0.0048 / 16])
def test_unscaled_loss_departs_from_the_reference(recipe, lr_biases, record_property):
    """With scale_loss 1 the bias/BN steps are 16x too large and the weight decay 16x too
    weak relative to the gradient; dividing lr_biases by 16 fixes only the former."""
    worst_param, worst_update = run_place(recipe, PLACES["middle"], 1.0, lr_biases)
    print(f"\nmiddle: scale_loss 1, lr_biases {lr_biases:.3g}: worst relative difference "
          f"parameters {worst_param:.3g}, updates {worst_update:.3g}")
    record_property("worst_relative_difference", {"parameters": worst_param,
                                                  "updates": worst_update})
    assert worst_param > 1e-7
    assert worst_update > 1e-4
