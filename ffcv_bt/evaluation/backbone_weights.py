"""The backbone an evaluation starts from: a weights file of any of the accepted layouts,
checked against the architecture, or a random initialisation (the control).

The control is torchvision's standard initialisation (Kaiming-normal convolutions, BN
weights 1), WITHOUT the zero-initialised last BN of each residual branch that pretraining
starts from: with it, every block of an untrained network is the identity (or a strided
1x1 shortcut) and the pooled feature is nearly constant (across-image variance / squared
mean 0.003 on 500 demo val images, against 0.078 for the standard init), a control that
cannot win (tests/evaluation/test_baselines.py::test_random_control_features_are_informative).

Accepted files: our pretraining checkpoint (``checkpoint.pt``), our exported ``<arch>.pth``,
or a torchvision ResNet state dict (its ``fc.*`` entries dropped; ``module.`` prefixes from
DDP stripped), e.g. the released Barlow Twins ResNet-50 weights.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ffcv_bt.errors import BackboneLoadError
from ffcv_bt.method.model import build_backbone


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backbone_state_from_file(path: Path) -> dict[str, torch.Tensor]:
    """Backbone tensors from our pretraining checkpoint, our <arch>.pth, or a torchvision
    state dict (its ``fc.*`` entries are dropped)."""
    if not path.is_file():
        raise BackboneLoadError(f"{path}: backbone weights file not found (give a checkpoint, "
                                f"an <arch>.pth, a torchvision state dict, or 'random')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means corrupt
        raise BackboneLoadError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # full checkpoint
        state = {k[len("backbone."):]: v for k, v in state["model"].items()
                 if k.startswith("backbone.")}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneLoadError(f"{path}: expected a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_backbone(weights: str, arch: str, width: int = 64, small_stem: bool = False,
                  seed: int = 0) -> tuple[nn.Module, int]:
    """The backbone to evaluate: ``weights`` is a checkpoint path or ``"random"`` (standard
    initialisation, no zero-init residual: the fair control)."""
    torch.manual_seed(seed)
    backbone, feat_dim = build_backbone(arch, width=width, zero_init_residual=weights != "random",
                                        small_stem=small_stem)
    if weights == "random":
        return backbone, feat_dim
    path = Path(weights)
    state = backbone_state_from_file(path)
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs {arch} {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise BackboneLoadError(
            f"{path}: does not match {arch} (width {width}, small_stem {small_stem}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(shapes)} shape mismatches {shapes[:3]}; set model.arch, "
            f"model.width and model.small_stem to the file's architecture")
    backbone.load_state_dict(state)
    return backbone, feat_dim
