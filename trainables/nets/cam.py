"""The CAM network every classification method builds on (CAM, Zhou et al., CVPR 2016)."""

from __future__ import annotations

import torch
from torch import nn

from trainables.nets.backbones import build_backbone


class CamNet(nn.Module):
    """Backbone and a 1x1 classifier without bias: ``cam_raw`` (B, C, h, w) is the classifier
    applied densely, ``logits`` (B, C) its global average (= the classifier on GAP features,
    since it has no bias), ``pooled`` (B, F) the GAP features, ``features`` the backbone's.

    Parameter names (``backbone``, ``classifier``) match the single-stage network's, so the
    shared classification checkpoint loads into every method; layers a subclass adds are new
    (trained from scratch at ``train.new_layer_lr_mult`` x lr).
    """

    def __init__(self, model_cfg: dict, num_fg: int):
        super().__init__()
        self.backbone = build_backbone(model_cfg)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_fg, 1, bias=False)
        self.stride = self.backbone.stride
        self.channels_last = bool(model_cfg.get("channels_last", True))

    def head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        cam_raw = self.classifier(feats)
        return {"features": feats, "pooled": feats.mean(dim=(2, 3)), "cam_raw": cam_raw,
                "logits": cam_raw.mean(dim=(2, 3))}

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.backbone(self.prepare_input(x)))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters): new layers train at 10x lr."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]
