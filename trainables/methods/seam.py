"""SEAM (Wang et al., CVPR 2020; docs/baselines.md): a siamese pass over the crop and its rescale
A(I), equivariant regularisation between the two branches' CAMs, a pixel correlation module
(PCM) that revises each CAM by feature affinity, and equivariant cross regularisation between
one branch's revised CAM and the other's plain CAM, with online hard example mining.

Losses (public code train_SEAM.py; weights ``loss.<term>.weight``, 1 in the paper):
L = (L_cls(o) + L_cls(t)) / 2 + L_ER + L_ECR [+ L_rvmin]. The parts live in losses/seam.py.

Switches for the paper's ablation (Table 1): ``loss.ecr.weight: 0`` and ``seam.eval_cams: cam``
is ER alone; ``seam.ohem_ratio: 1.0`` is ER+PCM without OHEM; the defaults are the full method.
Choices where paper and code differ (documented, switchable):
- ``seam.ecr_target``: "onehot" (the spec: a binary one-hot of the other branch's arg-max) or
  "max" (the public code's ``max_onehot``, which keeps the arg-max's value).
- ``loss.rvmin``: the public code adds an "adaptive min pooling" term (the mean of the lowest
  quarter of each revised CAM's per-pixel foreground maximum) that the paper does not list; its
  author notes it shifts the best background threshold, not the best score. Off by default.
- Training starts from the shared classification checkpoint like every method here
  (``pretrain.enabled``), not from ImageNet weights as in the paper; the PCM is new.
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from trainables.losses.classification import classification_loss
from trainables.losses.seam import (PixelCorrelation, add_background, downscale, ecr_loss, er_loss, max_norm,
                                    pcm_input)
from trainables.methods.cam import CamMethodSettings, CamTrainer
from trainables.nets.cam import CamNet
from trainables.settings.sections import ClassificationLosses, LossTerm, Section


class SeamSection(Section):
    """SEAM's own settings."""

    scale: Annotated[float, Field(gt=0.0, le=2.0)] = 0.3
    """A(I): the bilinear rescale of the crop for branch t (0.3 in the paper)."""
    ohem_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """Fraction of the ECR's pixels kept by online hard example mining."""
    ecr_target: Literal["onehot", "max"] = "onehot"
    eval_cams: Literal["pcm", "cam"] = "pcm"
    """pcm: the revised CAMs (SEAM's inference); cam: the classifier's."""


class SeamLosses(ClassificationLosses):
    er: LossTerm = LossTerm()
    ecr: LossTerm = LossTerm()
    rvmin: LossTerm = LossTerm(weight=0.0)
    """The public code's adaptive min pooling term (off: weight 0)."""


class SeamSettings(CamMethodSettings):
    seam: SeamSection = SeamSection()
    loss: SeamLosses = SeamLosses()


class SeamNet(CamNet):
    """CAM network + PCM over the backbone's two mid-level features (ResNet-38's b4/b5 in SEAM).

    ``forward`` adds ``cam_rv`` (B, C+1, h, w): the PCM-revised CAM, background channel first.
    """

    def __init__(self, model_cfg: dict, num_fg: int):
        super().__init__(model_cfg, num_fg)
        self.pcm = PixelCorrelation(tuple(self.backbone.mid_channels))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.prepare_input(x)
        feats, mids = self.backbone.forward_with_mid(x)
        out = self.head(feats)
        out["cam_rv"] = self.pcm(pcm_input(out["cam_raw"]), x, mids)
        return out


def adaptive_min_pooling_loss(rev: torch.Tensor) -> torch.Tensor:
    """The public code's extra term: per image, the mean of the lowest quarter of the per-pixel
    foreground maxima of a label-masked revised CAM (B, C+1, h, w), ReLU'd."""
    fg_max = rev[:, 1:].amax(dim=1).flatten(1)
    k = max(1, fg_max.shape[1] // 4)
    return F.relu(fg_max.topk(k, dim=1, largest=False).values).mean()


def _at(m: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


class SeamTrainer(CamTrainer):
    """One siamese step: branch o on the crop, branch t on A(crop); every map is compared at
    branch t's input size, after max-normalisation and masking by the image's classes."""

    def build(self) -> SeamNet:
        return SeamNet(self.cfg["model"], self.ds.num_fg)

    def terms(self, net: Callable, batch, progress: float, epoch: int) -> dict[str, torch.Tensor]:
        s = self.cfg["seam"]
        x_o = batch.image.to(self.device)
        x_t = downscale(x_o, float(s["scale"]))
        out_o, out_t = net(x_o), net(x_t)
        labels = batch.labels.to(x_o.device)
        fg = labels[:, :, None, None]
        with_bg = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1)[:, :, None, None]
        size_o, size_t = tuple(x_o.shape[-2:]), tuple(x_t.shape[-2:])
        cam_o = downscale(max_norm(_at(out_o["cam_raw"], size_o)) * fg, float(s["scale"]))  # A(C_o)
        cam_t = max_norm(_at(out_t["cam_raw"], size_t)) * fg
        rev_o = downscale(max_norm(_at(out_o["cam_rv"], size_o)) * with_bg, float(s["scale"]))  # A(R_o)
        rev_t = max_norm(_at(out_t["cam_rv"], size_t)) * with_bg
        cam_o, rev_o = _at(cam_o, size_t), _at(rev_o, size_t)  # rounding can differ by a pixel
        terms = {
            "cls": (classification_loss(out_o["logits"], labels) + classification_loss(out_t["logits"], labels)) / 2,
            "er": er_loss(cam_o, cam_t),
            "ecr": ecr_loss(add_background(cam_t), rev_o, add_background(cam_o), rev_t,
                            ratio=float(s["ohem_ratio"]), mode=str(s["ecr_target"])),
        }
        rvmin = self.cfg["loss"]["rvmin"]
        if rvmin["enabled"] and rvmin["weight"] != 0.0:  # computed only when it counts
            terms["rvmin"] = (adaptive_min_pooling_loss(rev_o) + adaptive_min_pooling_loss(rev_t)) / 2
        return terms

    def cam_fn(self, net: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
        """The PCM's foreground channels, or the classifier's CAMs (``seam.eval_cams``)."""
        if self.cfg["seam"]["eval_cams"] == "pcm":
            return lambda z: net(z)["cam_rv"][:, 1:]
        return super().cam_fn(net)
