"""What the evaluation optimizers actually use: each protocol file's weight decay, momentum
and per-group learning rates (classifier, backbone) in the optimizer the protocol builds,
and the learning rate each group held at every epoch, against the protocol file."""
from __future__ import annotations

import math

import pytest
import yaml
from recipes import write_tiny_recipe

from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.trained import Evaluation

PROTOCOL_FILES = ("standard", "release2", "demo", "smoke")


def protocol_spec(name: str) -> dict:
    return yaml.safe_load((RULES_DIR / "protocols" / f"{name}.yaml").read_text())


def groups_by_role(evaluation: Evaluation) -> dict[str, dict]:
    head = {id(p) for p in evaluation.model.head.parameters()}
    backbone = {id(p) for p in evaluation.model.backbone.parameters()}
    roles = {}
    for group in evaluation.optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        role = "head" if ids == head else "backbone" if ids == backbone else None
        assert role, "every group holds exactly the head's or exactly the backbone's parameters"
        roles[role] = group
    return roles


@pytest.mark.parametrize("protocol", ["linear", "semi1", "semi10"])
@pytest.mark.parametrize("name", PROTOCOL_FILES)
def test_optimizer_is_built_from_the_protocol_file(name, protocol, tiny_dataset, tmp_path) -> None:
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), {"eval.protocol": name})
    spec = protocol_spec(name)
    evaluation = Evaluation(recipe, protocol, "random", tmp_path / "eval", DistInfo())
    roles = groups_by_role(evaluation)
    if protocol == "linear":
        p = spec["linear"]
        assert set(roles) == {"head"}  # the frozen backbone is not optimised
        expected = {"head": p["lr"]}
    else:
        p = spec["semi"]
        assert set(roles) == {"head", "backbone"}
        expected = {"head": p["lr_classifier"], "backbone": p["lr_backbone"]}
    for role, group in roles.items():
        assert group["lr"] == expected[role], role
        assert group["weight_decay"] == p["weight_decay"], role
        assert group["momentum"] == p["momentum"], role
    assert evaluation.settings.epochs == p["epochs"] and evaluation.settings.batch_size == p["batch_size"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("protocol", ["linear", "semi1"])
def test_learning_rate_each_group_held_at_every_epoch(protocol, tiny_dataset, tmp_path) -> None:
    """Distinct values for every setting (the smoke file's, changed) so a swap shows."""
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), {"eval.protocol": "smoke"})
    recipe = recipe.with_overrides({
        "linear.lr": 0.07, "linear.weight_decay": 3e-4, "linear.momentum": 0.8, "linear.epochs": 3,
        "semi.lr_classifier": 0.11, "semi.lr_backbone": 0.013, "semi.weight_decay": 2e-4,
        "semi.momentum": 0.7, "semi.epochs": 3})
    evaluation = Evaluation(recipe, protocol, "random", tmp_path / "eval", DistInfo())
    roles = groups_by_role(evaluation)
    seen: list[tuple[int, dict[str, float]]] = []
    step = evaluation.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append((evaluation.epoch, {r: (g["lr"], g["weight_decay"], g["momentum"])
                                        for r, g in roles.items()}))
        return step(*args, **kwargs)

    evaluation.optimizer.step = recording_step
    evaluation.run()
    p = recipe.linear if protocol == "linear" else recipe.semi
    base = {"head": p["lr"]} if protocol == "linear" else {"head": p["lr_classifier"],
                                                           "backbone": p["lr_backbone"]}
    assert sorted({epoch for epoch, _ in seen}) == [0, 1, 2]
    for epoch, held in seen:
        for role, (lr, weight_decay, momentum) in held.items():
            cosine = base[role] * 0.5 * (1 + math.cos(math.pi * epoch / 3))
            assert lr == pytest.approx(cosine, rel=1e-12), (epoch, role)
            assert (weight_decay, momentum) == (p["weight_decay"], p["momentum"])


@pytest.mark.timeout(300)
def test_non_finite_evaluation_loss_stops_the_stage(tiny_dataset, tmp_path, monkeypatch) -> None:
    """Read once per epoch (no host sync per step) and combined over ranks before raising."""
    import torch

    from ffcv_bt.errors import NonFiniteLoss

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), {"eval.protocol": "smoke"})
    evaluation = Evaluation(recipe, "linear", "random", tmp_path / "eval", DistInfo())
    calls = []
    forward = torch.nn.CrossEntropyLoss.forward

    def nan_on_second_batch(self, logits, labels):
        calls.append(1)
        loss = forward(self, logits, labels)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_on_second_batch)
    with pytest.raises(NonFiniteLoss, match="linear: non-finite loss at epoch 0"):
        evaluation.run()
    assert len(calls) == len(evaluation.train_loader)  # the epoch ran to its end first
    assert not (tmp_path / "eval" / "checkpoint.pt").exists()
