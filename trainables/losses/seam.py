"""SEAM losses and pixel correlation module (Wang et al., "Self-supervised Equivariant Attention
Mechanism for Weakly Supervised Semantic Segmentation", CVPR 2020).

Two branches see the original image (o) and a rescaled copy (t = A(image), ``downscale``).
- Equivariant regularisation (paper §3.2, "Equivariant Regularization"): L_ER = |A(C_o) - C_t|_1
  on the max-normalised, label-masked foreground CAMs (``er_loss``).
- Pixel correlation module (§3.3, "Pixel Correlation Module"): a CAM is revised by a
  self-attention whose affinity is the ReLU'd cosine similarity of low-level features
  (``PixelCorrelation``).
- Equivariant cross regularisation (§3.4, "Loss Design of SEAM"): each branch's revised CAM is
  pulled towards a detached target from the other branch's plain CAM, with online hard example
  mining (``ecr_loss``, ``ohem_mean``). (Equation numbers unchecked, so sections are cited.)

Bilinear resizes follow one of two conventions (``RESAMPLE_MODES``, the setting ``seam.resample``):
"project" (align_corners=False, sizes rounded) or "code", the public code's (train_SEAM.py and
network/resnet38_SEAM.py resize with align_corners=True; a resize by a factor is floored).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ECR_TARGET_MODES = ("onehot", "max")
RESAMPLE_MODES = ("code", "project")


def align_corners_for(resample: str) -> bool:
    """The ``align_corners`` flag of a bilinear resize under ``seam.resample``: True for "code"
    (every resize in train_SEAM.py and network/resnet38_SEAM.py), False for "project".

    Example:
        >>> align_corners_for("code"), align_corners_for("project")
        (True, False)
    """
    if resample not in RESAMPLE_MODES:
        raise ValueError(f"seam.resample: unknown mode {resample!r}; expected one of {RESAMPLE_MODES}")
    return resample == "code"


def max_norm(p: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-channel min-max normalisation of a (B, C, H, W) map to [0, 1) after a ReLU.

    Example:
        >>> [round(v, 4) for v in max_norm(torch.tensor([[[[1.0, 3.0]]]]))[0, 0, 0].tolist()]
        [0.0, 1.0]
    """
    p = F.relu(p)
    lo = p.amin(dim=(2, 3), keepdim=True)
    hi = p.amax(dim=(2, 3), keepdim=True)
    return F.relu(p - lo - eps) / (hi - lo + eps)


def add_background(cams_fg: Tensor) -> Tensor:
    """(B, C, H, W) foreground maps in [0, 1] -> (B, C+1, H, W), channel 0 = 1 - max_c."""
    bg = 1.0 - cams_fg.amax(dim=1, keepdim=True)
    return torch.cat([bg, cams_fg], dim=1)


def _keep_argmax_foreground(cam: Tensor) -> Tensor:
    """Copy of a (B, C+1, h, w) map whose foreground keeps only its per-pixel arg-max channel
    (first index on ties); the background channel 0 is left as it is. Never edits ``cam``."""
    fg = cam[:, 1:]
    keep = torch.zeros_like(fg).scatter_(1, fg.argmax(dim=1, keepdim=True), 1.0)
    return torch.cat([cam[:, :1], fg * keep], dim=1)


def pcm_input(cam_raw: Tensor) -> Tensor:
    """The CAM fed to the PCM (§3.3): (B, C, h, w) raw -> detached (B, C+1, h, w).

    ReLU, division by the spatial max + 1e-5, background = 1 - max foreground, and only the
    arg-max foreground channel kept at each pixel. Labels are not applied here.
    """
    cam = F.relu(cam_raw.detach())
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
    return _keep_argmax_foreground(add_background(cam))


class PixelCorrelation(nn.Module):
    """PCM (§3.3): revised CAM_j = sum_i CAM_i A_ij, A_ij = ReLU(cos(f_i, f_j)) / sum_i(...).

    f = 1x1 conv (no bias) of [image, ReLU(proj_1(mid_1)), ReLU(proj_2(mid_2))] at CAM size; the
    mid-level features are detached, so the PCM trains only its own convolutions. Inputs are
    brought to the CAM size bilinearly with ``align_corners_for(resample)`` (resnet38_SEAM.py
    resizes the image with align_corners=True; its mid-level features already have the CAM size).
    """

    def __init__(
        self,
        mid_channels: tuple[int, int],
        proj_channels: tuple[int, int] = (64, 128),
        out_channels: int | None = None,
        resample: str = "project",
    ) -> None:
        super().__init__()
        self.align_corners = align_corners_for(resample)
        in_fused = 3 + sum(proj_channels)
        self.proj = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 1, bias=False) for c_in, c_out in zip(mid_channels, proj_channels)
        )
        self.fuse = nn.Conv2d(in_fused, in_fused if out_channels is None else out_channels, 1, bias=False)
        for conv in self.proj:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4.0)

    def features(self, image: Tensor, mids: list[Tensor], size: tuple[int, int]) -> Tensor:
        """(B, out_channels, h, w) unnormalised PCM features; every input is resized to ``size``."""
        if len(mids) != len(self.proj):
            raise ValueError(f"seam.pcm: expected {len(self.proj)} mid-level features, got {len(mids)}")
        parts = [F.interpolate(image, size=size, mode="bilinear", align_corners=self.align_corners)]
        for conv, mid in zip(self.proj, mids):
            mid = F.interpolate(mid.detach(), size=size, mode="bilinear", align_corners=self.align_corners)
            parts.append(F.relu(conv(mid)))
        return self.fuse(torch.cat(parts, dim=1))

    def affinity(self, image: Tensor, mids: list[Tensor], size: tuple[int, int]) -> Tensor:
        """(B, hw, hw) affinity A[b, i, j], normalised so that every column j sums to 1."""
        f = self.features(image, mids, size).flatten(2)  # (B, D, hw)
        f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
        aff = F.relu(f.transpose(1, 2) @ f)
        return aff / (aff.sum(dim=1, keepdim=True) + 1e-5)

    def forward(self, cam: Tensor, image: Tensor, mids: list[Tensor]) -> Tensor:
        """cam (B, C+1, h, w) from ``pcm_input`` -> revised CAM (B, C+1, h, w)."""
        b, c, h, w = cam.shape
        aff = self.affinity(image, mids, (h, w))
        return (cam.reshape(b, c, h * w) @ aff).reshape(b, c, h, w)


def downscale(x: Tensor, factor: float, resample: str = "project") -> Tensor:
    """The transform A of SEAM: a bilinear resize by ``factor`` to an explicit size (at least 1),
    so that both branches land on one grid.

    "project": size round(H * factor) (Python's round: halves go to the even integer),
    align_corners=False. "code": train_SEAM.py's ``F.interpolate(x, scale_factor=0.3,
    align_corners=True)``, whose size PyTorch floors: floor(H * factor), align_corners=True.

    Example:
        >>> x = torch.zeros(1, 1, 16, 20)
        >>> tuple(downscale(x, 0.3).shape[-2:]), tuple(downscale(x, 0.3, "code").shape[-2:])
        ((5, 6), (4, 6))
    """
    if factor <= 0:
        raise ValueError(f"seam.downscale: factor must be > 0, got {factor!r}")
    align = align_corners_for(resample)
    to_int = math.floor if align else round  # floor: how F.interpolate sizes from scale_factor
    size = tuple(max(1, int(to_int(float(n) * factor))) for n in x.shape[-2:])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align)


def er_loss(cam_o_down: Tensor, cam_t: Tensor) -> Tensor:
    """L_ER (§3.2): mean |A(C_o) - C_t| over all foreground channels and pixels.

    Both (B, C, h, w), max-normalised and label-masked; absent classes count in the mean as
    zeros, as in the public implementation.
    """
    if cam_o_down.shape != cam_t.shape:
        raise ValueError(f"seam.er_loss: shapes differ, {tuple(cam_o_down.shape)} vs {tuple(cam_t.shape)}")
    return (cam_o_down - cam_t).abs().mean()


def ohem_mean(errors: Tensor, ratio: float) -> Tensor:
    """Online hard example mining: per image (dim 0) the mean of the k largest entries,
    k = max(1, int(n * ratio)) with n the per-image element count; then the batch mean.

    Example:
        >>> round(ohem_mean(torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7]]), 0.4).item(), 4)  # k = 2
        0.8
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"seam.ohem_ratio: must be in (0, 1], got {ratio!r}")
    flat = errors.reshape(errors.shape[0], -1)
    k = max(1, int(flat.shape[1] * ratio))
    return flat.topk(k, dim=1).values.mean(dim=1).mean()


def ecr_target(cam_with_bg: Tensor, mode: str) -> Tensor:
    """Target of the ECR loss from a (B, C+1, h, w) map (channel 0 = background), a new tensor.

    ``"onehot"``: binary one-hot of the per-pixel arg-max over all C+1 channels (first on ties).
    ``"max"``: the public code's variant: background value kept, the arg-max foreground
    channel's value kept, other foreground channels zeroed (the input is not modified).
    """
    if mode == "onehot":
        idx = cam_with_bg.argmax(dim=1, keepdim=True)
        return torch.zeros_like(cam_with_bg).scatter_(1, idx, 1.0)
    if mode == "max":
        return _keep_argmax_foreground(cam_with_bg)
    raise ValueError(f"seam.ecr_target: unknown mode {mode!r}; expected one of {ECR_TARGET_MODES}")


def ecr_loss(
    cam_t: Tensor,
    rev_o_down: Tensor,
    cam_o_down: Tensor,
    rev_t: Tensor,
    ratio: float = 0.2,
    mode: str = "onehot",
) -> Tensor:
    """L_ECR (§3.4): OHEM(|sg target(C_t) - A(R_o)|) + OHEM(|sg target(A(C_o)) - R_t|).

    All (B, C+1, h, w): cam_* are max-normalised, label-masked CAMs with the derived background
    channel, rev_* the max-normalised, label-masked PCM outputs. Targets are detached, so the
    gradient reaches only the revised CAMs.
    """
    shapes = {tuple(t.shape) for t in (cam_t, rev_o_down, cam_o_down, rev_t)}
    if len(shapes) != 1:
        raise ValueError(f"seam.ecr_loss: inputs must share one shape, got {sorted(shapes)}")
    target_t = ecr_target(cam_t.detach(), mode)
    target_o = ecr_target(cam_o_down.detach(), mode)
    return ohem_mean((target_t - rev_o_down).abs(), ratio) + ohem_mean((target_o - rev_t).abs(), ratio)
