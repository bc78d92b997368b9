"""The single-stage network (spec diagram): a shared backbone, a classification head whose 1x1
weights give CAMs, and a segmentation head over C+1 classes (background included)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from trainables.nets.backbones import build_backbone


class SingleStageNet(nn.Module):
    """Backbone -> (CAM head, segmentation head).

    ``forward`` returns a dict with ``cam_raw`` (B, C, h, w): the classifier applied densely,
    before ReLU; ``logits`` (B, C): its global average (= classifier on pooled features, §1);
    ``seg`` (B, C+1, h, w) segmentation logits; ``features`` (B, F, h, w); with ``embed_dim`` > 0
    also ``embed`` (B, embed_dim, h, w), a 1x1 projection of the segmentation head's hidden
    features (the label reassign loss's embedding head, docs/single_stage.md §3).

    ``cls_dropout`` > 0: in training, ``logits`` come from the features after channel dropout
    (RRM's ``dropout7`` before ``fc8``, network/RRM.py l.35); ``cam_raw`` never sees it.
    """

    def __init__(self, model_cfg: dict, num_fg: int, embed_dim: int = 0, cls_dropout: float = 0.0):
        super().__init__()
        self.backbone = build_backbone(model_cfg)
        f = self.backbone.out_channels
        # §1: 1x1 conv without bias, so GAP(CAM) equals the classifier on GAP(features).
        self.classifier = nn.Conv2d(f, num_fg, 1, bias=False)
        hidden = int(model_cfg.get("seg_hidden", 128))
        # A small dilated head, in the spirit of RRM's DeepLab-style segmentation branch.
        self.seg_head = nn.Sequential(
            nn.Conv2d(f, hidden, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(float(model_cfg.get("seg_dropout", 0.1))),
            nn.Conv2d(hidden, num_fg + 1, 1),
        )
        # Outside the model config, so the shared classification checkpoint (keyed on it) serves
        # runs with and without the head; the head is new and not in that checkpoint.
        self.embed_head = nn.Conv2d(hidden, embed_dim, 1) if embed_dim > 0 else None
        self.new_layer_prefixes = ("embed_head.",)  # not in the classification checkpoint
        # No parameters, so outside the model config too: one checkpoint serves either setting.
        self.cls_dropout = nn.Dropout2d(cls_dropout) if cls_dropout > 0 else None
        self.stride = self.backbone.stride
        # NHWC ("channels last") runs the depthwise and 1x1 convolutions about 1.5x faster on
        # CPU (measured on Lite0) and suits tensor cores on GPU; results are the same.
        self.channels_last = bool(model_cfg.get("channels_last", True))
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(x)
        cam_raw = self.classifier(feats)
        hidden = self.seg_head[:3](feats)  # conv, BN, ReLU: the segmentation features
        if self.cls_dropout is not None and self.training:
            # RRM: dropout, average pool, then the classifier (network/RRM.py l.35-41); without a
            # bias that equals the mean of the dense output, the logits used otherwise (§1).
            logits = self.classifier(self.cls_dropout(feats).mean(dim=(2, 3), keepdim=True)).flatten(1)
        else:
            logits = cam_raw.mean(dim=(2, 3))
        out = {
            "features": feats,
            "cam_raw": cam_raw,
            "logits": logits,
            "seg": self.seg_head[3:](hidden),
        }
        if self.embed_head is not None:
            out["embed"] = self.embed_head(hidden)
        return out

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters): RRM trains new layers at 10x lr (§4)."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave BatchNorm running statistics untouched (momentum 0) while
    still normalising with batch statistics in train mode: for the extra no-grad passes that
    only compute CAMs (other scales, pseudo labels a step ahead), so a batch is not counted twice."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
