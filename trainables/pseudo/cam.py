"""Class activation maps (docs/single_stage.md §1): ReLU of the dense classifier, upsampled to the crop,
restricted to the image's classes and max-normalised; the background score (1 - max CAM)^alpha."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def normalise_cams(cam_raw: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) raw CAMs -> (B, C, H, W) in [0, 1].

    ReLU, bilinear upsampling to ``size``, absent classes zeroed by the image label, each map
    divided by its spatial max + 1e-5 (docs/single_stage.md §1).

    Example:
        >>> raw = torch.tensor([[[[2.0, -1.0]], [[1.0, 1.0]]]])  # B=1, C=2, 1x2
        >>> normalise_cams(raw, torch.tensor([[1.0, 0.0]]), (1, 2))[0, :, 0].tolist()  # 2 / (2 + 1e-5)
        [[0.99999499..., 0.0], [0.0, 0.0]]
    """
    cams = F.relu(cam_raw)
    if tuple(cams.shape[-2:]) != tuple(size):
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    cams = cams * labels[:, :, None, None]
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)


def multiscale_cams(
    cam_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    labels: torch.Tensor,
    scales: Sequence[float],
    cam_at_1: torch.Tensor | None = None,
    flip: bool = False,
) -> torch.Tensor:
    """Normalised CAMs averaged over input scales (RRM uses {1, 0.5, 1.5, 2}, §1) and, with
    ``flip``, their horizontal mirrors (SEAM's and SC-CAM's inference).

    ``cam_fn`` maps an image batch to raw CAMs. The scale-1 raw CAM may be passed in (it comes
    from the training forward pass); other passes run without gradient. ReLU'd maps are summed
    at crop size and normalised once, so every pass weighs the same.
    """
    size = tuple(image.shape[-2:])
    total = None
    for s in scales:
        for mirrored in (False, True) if flip else (False,):
            if s == 1 and cam_at_1 is not None and not mirrored:
                raw = cam_at_1.detach()
            else:
                with torch.no_grad():
                    x = image if s == 1 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
                    raw = cam_fn(x.flip(-1)).flip(-1) if mirrored else cam_fn(x)
            up = F.interpolate(F.relu(raw), size=size, mode="bilinear", align_corners=False)
            total = up if total is None else total + up
    return normalise_cams(total, labels, size)


def background_score(cams: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - max_c CAM_c) ** alpha over the class dimension (dim -3): (..., H, W).

    Example:
        >>> background_score(torch.tensor([[[0.5]], [[0.2]]]), 2.0).item()
        0.25
    """
    return (1.0 - cams.amax(dim=-3)).clamp_min(0.0) ** alpha
