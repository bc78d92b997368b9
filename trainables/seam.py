"""SEAM (Wang et al., CVPR 2020; baselines.md): a siamese pass over the crop and its rescale
A(I), equivariant regularisation between the two branches' CAMs, a pixel correlation module
(PCM) that revises each CAM by feature affinity, and equivariant cross regularisation between
one branch's revised CAM and the other's plain CAM, with online hard example mining.

Losses (public code train_SEAM.py; weights ``loss.<term>.weight``, 1 in the paper):
L = (L_cls(o) + L_cls(t)) / 2 + L_ER + L_ECR [+ L_rvmin]. The parts live in seam_losses.py.

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

from typing import Callable

import torch
import torch.nn.functional as F

from trainables import losses
from trainables.cam_eval import check_cam_eval
from trainables.classifier import CAM_METHOD_DEFAULTS, CamNet, CamRecipe, train_cam_method
from trainables.config import ConfigError, merge
from trainables.data import TrainBatch
from trainables.seam_losses import (ECR_TARGET_MODES, PixelCorrelation, add_background, downscale, ecr_loss, er_loss,
                                    max_norm, pcm_input)
from trainables.trial import prepare_study

DEFAULTS: dict = merge(CAM_METHOD_DEFAULTS, {
    # scale: A(I) = bilinear rescale of the crop (0.3 in the paper); eval_cams: "pcm" (the
    # revised CAMs, SEAM's inference) or "cam" (the classifier's).
    "seam": {"scale": 0.3, "ohem_ratio": 0.2, "ecr_target": "onehot", "eval_cams": "pcm"},
    "loss": {"er": {"weight": 1.0}, "ecr": {"weight": 1.0}, "rvmin": {"weight": 0.0}},
})


class SeamNet(CamNet):
    """CAM network + PCM over the backbone's two mid-level features (ResNet-38's b4/b5 in SEAM).

    ``forward`` adds ``cam_rv`` (B, C+1, h, w): the PCM-revised CAM, background channel first.
    """

    new_layer_prefixes = ("pcm.",)

    def __init__(self, model_cfg: dict, num_fg: int):
        super().__init__(model_cfg, num_fg)
        self.pcm = PixelCorrelation(tuple(self.backbone.mid_channels))
        self.finish_init()

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


def check(cfg: dict) -> None:
    """Settings SEAM cannot run with, before any trial starts."""
    check_cam_eval(cfg)
    s = cfg["seam"]
    if s["ecr_target"] not in ECR_TARGET_MODES:
        raise ConfigError("seam.ecr_target", s["ecr_target"], f"choose one of {', '.join(ECR_TARGET_MODES)}")
    if s["eval_cams"] not in ("pcm", "cam"):
        raise ConfigError("seam.eval_cams", s["eval_cams"], "choose pcm or cam")
    if not 0 < float(s["scale"]) <= 2:
        raise ConfigError("seam.scale", s["scale"], "must be in (0, 2]")
    if not 0 < float(s["ohem_ratio"]) <= 1:
        raise ConfigError("seam.ohem_ratio", s["ohem_ratio"], "must be in (0, 1]")


def seam_terms(net: Callable, batch: TrainBatch, cfg: dict, state: dict) -> dict[str, torch.Tensor]:
    """One siamese step: branch o on the crop, branch t on A(crop); every map is compared at
    branch t's input size, after max-normalisation and masking by the image's classes."""
    s = cfg["seam"]
    x_o = batch.image.to(state["device"])
    x_t = downscale(x_o, float(s["scale"]))
    out_o, out_t = net(x_o), net(x_t)
    labels = batch.labels.to(x_o.device)
    fg = labels[:, :, None, None]
    with_bg = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1)[:, :, None, None]
    size_o, size_t = tuple(x_o.shape[-2:]), tuple(x_t.shape[-2:])

    def at(m: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False)

    cam_o = downscale(max_norm(at(out_o["cam_raw"], size_o)) * fg, float(s["scale"]))  # A(C_o)
    cam_t = max_norm(at(out_t["cam_raw"], size_t)) * fg
    rev_o = downscale(max_norm(at(out_o["cam_rv"], size_o)) * with_bg, float(s["scale"]))  # A(R_o)
    rev_t = max_norm(at(out_t["cam_rv"], size_t)) * with_bg
    cam_o, rev_o = at(cam_o, size_t), at(rev_o, size_t)  # rounding can differ by a pixel
    terms = {
        "cls": (losses.classification_loss(out_o["logits"], labels)
                + losses.classification_loss(out_t["logits"], labels)) / 2,
        "er": er_loss(cam_o, cam_t),
        "ecr": ecr_loss(add_background(cam_t), rev_o, add_background(cam_o), rev_t,
                        ratio=float(s["ohem_ratio"]), mode=str(s["ecr_target"])),
    }
    if float(cfg["loss"]["rvmin"]["weight"]) != 0.0:
        terms["rvmin"] = (adaptive_min_pooling_loss(rev_o) + adaptive_min_pooling_loss(rev_t)) / 2
    return terms


def seam_cam_fn(net: Callable, cfg: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """The CAMs SEAM is evaluated by: the PCM's foreground channels, or the classifier's."""
    if cfg["seam"]["eval_cams"] == "pcm":
        return lambda z: net(z)["cam_rv"][:, 1:]
    if cfg["seam"]["eval_cams"] == "cam":
        return lambda z: net(z)["cam_raw"]
    raise ValueError(f"seam.eval_cams={cfg['seam']['eval_cams']!r}: choose pcm or cam")


RECIPE = CamRecipe(build=lambda cfg, num_fg: SeamNet(cfg["model"], num_fg), terms=seam_terms, cam_fn=seam_cam_fn)


def train(config: dict, reporter=None) -> list[dict]:
    """One SEAM trial (see :func:`trainables.classifier.train_cam_method`)."""
    return train_cam_method(config, RECIPE, DEFAULTS, reporter)


def prepare(config: dict, log: Callable[[str], None] = print):
    """Data and the shared classification checkpoint, once per study."""
    return prepare_study(config, DEFAULTS, log)
