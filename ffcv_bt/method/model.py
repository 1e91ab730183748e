"""The Barlow Twins network: a torchvision ResNet backbone and an MLP projector.

The backbone keeps torchvision's module names, so its state dict loads into
``torchvision.models.resnet50()`` (missing only ``fc.*``) for evaluation or export.
``width`` scales every stage (width, 2w, 4w, 8w) for cheap CPU demos; ``small_stem``
replaces the 7x7/2 convolution and max-pool by a 3x3/1 convolution for 28-32 px images.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ffcv_bt.distributed.sync_bn import GlobalBatchNorm

# Block type and blocks per stage, as in torchvision.
ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


class ScalableResNet(ResNet):
    """torchvision's ResNet with a configurable first-stage width and stem, without ``fc``.

    Reuses torchvision's blocks, ``_make_layer`` and forward; only the constructor differs,
    because torchvision hard-codes 64 channels. ``fc`` is ``nn.Identity`` so the forward
    returns the pooled features (``8 * width * block.expansion`` of them).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 width: int = 64, small_stem: bool = False,
                 zero_init_residual: bool = True) -> None:
        nn.Module.__init__(self)
        # Attributes torchvision's _make_layer reads; base_width 64 keeps a Bottleneck's
        # inner width equal to its ``planes``.
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        if small_stem:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = 8 * width * block.expansion
        self._initialise(zero_init_residual)

    def _initialise(self, zero_init_residual: bool) -> None:
        """torchvision's initialisation; optionally zero the last BN gamma of every residual
        branch so each block starts as the identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)


def build_backbone(arch: str, width: int = 64, zero_init_residual: bool = True,
                   small_stem: bool = False) -> tuple[nn.Module, int]:
    """A ResNet without classifier and its feature dimension (2048 for resnet50 at width 64)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown backbone arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"backbone width must be a positive integer, got {width!r}")
    block, layers = ARCHITECTURES[arch]
    net = ScalableResNet(block, layers, width=width, small_stem=small_stem,
                         zero_init_residual=zero_init_residual)
    return net, net.feature_dim


def parse_projector_spec(spec: str) -> list[int]:
    """``"8192-8192-8192"`` -> ``[8192, 8192, 8192]``; ValueError naming the spec otherwise."""
    parts = str(spec).split("-")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"bad projector spec {spec!r}: expected positive integers joined by '-', "
                         "e.g. '8192-8192-8192'")
    return dims


class Projector(nn.Sequential):
    """MLP head: (Linear without bias, BN, ReLU) for every hidden layer, then a plain Linear.

    The final affine-free BatchNorm of the reference is applied in the objective, over the
    global batch (``ffcv_bt.method.objective.normalize_embeddings``).
    """

    def __init__(self, spec: str, in_dim: int) -> None:
        dims = [in_dim] + parse_projector_spec(spec)
        layers: list[nn.Module] = []
        for i in range(len(dims) - 2):
            layers += [nn.Linear(dims[i], dims[i + 1], bias=False),
                       nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
        super().__init__(*layers)
        self.out_dim = dims[-1]


class BarlowTwins(nn.Module):
    """Backbone + projector; ``forward(x1, x2)`` returns the raw embeddings of both views.

    The views go through the network separately, so each BatchNorm uses one view's batch
    statistics, as in the reference.
    """

    def __init__(self, arch: str = "resnet50", projector: str = "8192-8192-8192", width: int = 64,
                 small_stem: bool = False, zero_init_residual: bool = True) -> None:
        super().__init__()
        self.backbone, self.feature_dim = build_backbone(
            arch, width=width, zero_init_residual=zero_init_residual, small_stem=small_stem)
        self.projector = Projector(projector, self.feature_dim)
        self.embedding_dim = self.projector.out_dim

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        return self.projector(self.backbone(x1)), self.projector(self.backbone(x2))

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The backbone's state dict in torchvision's key format (no prefixes)."""
        return self.backbone.state_dict()


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Make every BatchNorm of ``model`` normalise over the batch of all ranks (for DDP).

    CUDA: torch's fused ``nn.SyncBatchNorm``. Other devices (CPU with gloo), where
    SyncBatchNorm refuses the input: ``GlobalBatchNorm``. ``device`` defaults to the device of
    the model's first parameter, so call this after moving the model. Parameters, buffers and
    state-dict keys are kept.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_batchnorm(model)


def _to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace each ``_BatchNorm`` (recursively) with a ``GlobalBatchNorm`` holding its state."""
    is_batchnorm = isinstance(module, nn.modules.batchnorm._BatchNorm)
    if is_batchnorm and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        floating = [t for t in module.state_dict().values() if t.is_floating_point()]
        if floating:
            new.to(device=floating[0].device, dtype=floating[0].dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        for p_new, p_old in zip(new.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_global_batchnorm(child))
    return module
