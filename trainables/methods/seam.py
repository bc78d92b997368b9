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
  author notes it shifts the best background threshold, not the best score. Off by default. As in
  train_SEAM.py it reads the raw revised CAMs (PCM outputs upsampled to the branch's input size,
  before max-normalisation, label-masked), each branch at its own size.
- ``seam.resample``: "project" (default) or "code". The code resizes bilinearly with
  align_corners=True and floors the size of a resize by a factor (a 16x20 map at 0.3 becomes
  4x6); "project" uses align_corners=False and rounds (5x6). Both are fair conventions; they
  move ER by up to about 0.04 and ECR by up to about 0.16 on small maps. "project" is the
  default because every earlier SEAM result here was trained with it, so they stay
  reproducible, and because align_corners=False is PyTorch's default and the convention of the
  rest of this harness (the public inference script, infer_SEAM.py, also upsamples with
  align_corners=False). "code" reproduces train_SEAM.py's rescale A, its upsampling of the CAMs
  to the input size and the PCM's resize of the image.
- Training starts from the shared classification checkpoint like every method here
  (``pretrain.enabled``), not from ImageNet weights as in the paper; the PCM is new.
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from trainables.losses.classification import classification_loss
from trainables.losses.seam import (PixelCorrelation, add_background, align_corners_for, downscale, ecr_loss,
                                    er_loss, max_norm, pcm_input)
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
    resample: Literal["code", "project"] = "project"
    """Bilinear resizes (A, CAM upsampling, the PCM's image resize): "project" rounds sizes with
    align_corners=False (the default, as all earlier results); "code" floors them with
    align_corners=True, as train_SEAM.py does."""


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
    ``resample`` (``seam.resample``) sets how the PCM resizes its inputs to the CAM grid.
    """

    def __init__(self, model_cfg: dict, num_fg: int, resample: str = "project"):
        super().__init__(model_cfg, num_fg)
        self.pcm = PixelCorrelation(tuple(self.backbone.mid_channels), resample=resample)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.prepare_input(x)
        feats, mids = self.backbone.forward_with_mid(x)
        out = self.head(feats)
        out["cam_rv"] = self.pcm(pcm_input(out["cam_raw"]), x, mids)
        return out


def adaptive_min_pooling_loss(rev: torch.Tensor) -> torch.Tensor:
    """The public code's extra term: per image, the mean of the lowest quarter of the per-pixel
    foreground maxima of a label-masked revised CAM (B, C+1, h, w), ReLU'd. train_SEAM.py feeds
    it the raw PCM output at the branch's input size, before max-normalisation."""
    fg_max = rev[:, 1:].amax(dim=1).flatten(1)
    k = max(1, fg_max.shape[1] // 4)
    return F.relu(fg_max.topk(k, dim=1, largest=False).values).mean()


def _at(m: torch.Tensor, size, resample: str = "project") -> torch.Tensor:
    """Bilinear resize to ``size``, align_corners per ``seam.resample`` (network/resnet38_SEAM.py
    upsamples its CAMs to the input size with align_corners=True)."""
    return F.interpolate(m, size=size, mode="bilinear", align_corners=align_corners_for(resample))


def _branch_maps(out: dict, size, fg: torch.Tensor, with_bg: torch.Tensor, resample: str):
    """One branch's maps at its input ``size`` (train_SEAM.py's cam1/cam_rv1 or cam2/cam_rv2):
    the max-normalised CAM masked by the classes, the max-normalised revised CAM masked by the
    classes and background, and the raw revised CAM (before max_norm, unmasked)."""
    rev = _at(out["cam_rv"], size, resample)
    return max_norm(_at(out["cam_raw"], size, resample)) * fg, max_norm(rev) * with_bg, rev


class SeamTrainer(CamTrainer):
    """One siamese step: branch o on the crop, branch t on A(crop); ER and ECR compare maps at
    branch t's input size, after max-normalisation and masking by the image's classes; the rvmin
    term reads each branch's raw revised CAM at that branch's own input size."""

    def build(self) -> SeamNet:
        return SeamNet(self.cfg["model"], self.ds.num_fg, str(self.cfg["seam"]["resample"]))

    def terms(self, net: Callable, batch, progress: float, epoch: int) -> dict[str, torch.Tensor]:
        s = self.cfg["seam"]
        scale, how = float(s["scale"]), str(s["resample"])
        x_o = batch.image.to(self.device)
        x_t = downscale(x_o, scale, how)
        out_o, out_t = net(x_o), net(x_t)
        labels = batch.labels.to(x_o.device)
        fg = labels[:, :, None, None]
        with_bg = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1)[:, :, None, None]
        cam_o, rev_o, raw_o = _branch_maps(out_o, tuple(x_o.shape[-2:]), fg, with_bg, how)
        cam_t, rev_t, raw_t = _branch_maps(out_t, tuple(x_t.shape[-2:]), fg, with_bg, how)
        # A(C_o), A(R_o): the size rule that made x_t, so they land on branch t's grid exactly
        cam_o, rev_o = downscale(cam_o, scale, how), downscale(rev_o, scale, how)
        terms = {
            "cls": (classification_loss(out_o["logits"], labels) + classification_loss(out_t["logits"], labels)) / 2,
            "er": er_loss(cam_o, cam_t),
            "ecr": ecr_loss(add_background(cam_t), rev_o, add_background(cam_o), rev_t,
                            ratio=float(s["ohem_ratio"]), mode=str(s["ecr_target"])),
        }
        rvmin = self.cfg["loss"]["rvmin"]
        if rvmin["enabled"] and rvmin["weight"] != 0.0:  # computed only when it counts
            # train_SEAM.py: raw revised CAMs (no max_norm), label-masked, each at its branch's size
            mins = [adaptive_min_pooling_loss(raw * with_bg) for raw in (raw_o, raw_t)]
            terms["rvmin"] = (mins[0] + mins[1]) / 2
        return terms

    def cam_fn(self, net: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
        """The PCM's foreground channels, or the classifier's CAMs (``seam.eval_cams``)."""
        if self.cfg["seam"]["eval_cams"] == "pcm":
            return lambda z: net(z)["cam_rv"][:, 1:]
        return super().cam_fn(net)
