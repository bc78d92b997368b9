"""Backbones by name (a registry, as in timm). Each returns a module mapping (B, 3, H, W) images
to (B, F, H/s, W/s) features with ``out_channels`` = F and ``stride`` = s.

- ``small_cnn``: a few conv blocks, stride 4; trains from scratch on CPU in minutes.
- ``resnet50`` / ``resnet101``: torchvision ResNets with the last two stages dilated (output
  stride 8, as WSSS backbones use) and weights from a local file; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn


class BackboneError(ValueError):
    """A backbone cannot be built as configured (unknown name, missing or mismatched weights)."""

    def __init__(self, key: str, value: object, message: str):
        super().__init__(f"{key}={value!r}: {message}")
        self.key, self.value, self.message = key, value, message


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Five 3x3 conv blocks, output stride 4, with a dilated last block for context."""

    stride = 4

    def __init__(self, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(3, width // 2),
            _conv_bn(width // 2, width, stride=2),
            _conv_bn(width, width),
            _conv_bn(width, width * 2, stride=2),
            _conv_bn(width * 2, width * 2, dilation=2),
            _conv_bn(width * 2, width * 2, dilation=4),
        )
        self.out_channels = width * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet without its pooling and fc layers, output stride 8."""

    stride = 8

    def __init__(self, depth: int, weights: str | None):
        super().__init__()
        import torchvision

        build = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
        net = build(weights=None, replace_stride_with_dilation=[False, True, True])
        if weights:
            load_backbone_weights(net, weights, key="model.weights")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_channels = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


def load_backbone_weights(net: nn.Module, path: str, key: str) -> None:
    """Load an ImageNet state dict from a local file into ``net`` (its fc layer may be absent).

    Raises :class:`BackboneError` naming ``key`` when the file is missing or shapes mismatch.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackboneError(key, path, "weights file not found (weights are never downloaded)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = net.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise BackboneError(key, path, f"shape mismatch at {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    missing = [k for k in own if k not in state and not k.startswith("fc.")]
    if missing:
        raise BackboneError(key, path, f"{len(missing)} backbone tensors missing from the file, e.g. {missing[0]}")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


BACKBONES: dict[str, Callable[[dict], nn.Module]] = {
    "small_cnn": lambda cfg: SmallCNN(width=int(cfg.get("width", 64))),
    "resnet50": lambda cfg: TorchvisionResNet(50, cfg.get("weights")),
    "resnet101": lambda cfg: TorchvisionResNet(101, cfg.get("weights")),
}


def build_backbone(cfg: dict) -> nn.Module:
    """Build the backbone named ``cfg['backbone']``.

    Example:
        >>> build_backbone({"backbone": "small_cnn", "width": 16}).out_channels
        32
    """
    name = cfg["backbone"]
    if name not in BACKBONES:
        raise BackboneError("model.backbone", name, f"unknown backbone; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](cfg)
