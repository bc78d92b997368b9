"""LDF-style label decoupling as an option for the CE term (docs/baselines.md, "LDF label
decoupling"; Wei et al., "Label Decoupling Framework for Salient Object Detection", CVPR 2020,
§3.1; code weijun88/LDF, the ``split_map`` script that writes ``body-origin`` / ``detail-origin``).

LDF splits a binary mask into a *body* map, concentrated at the object centre, and a *detail*
map, concentrated at the object edge. Its published code does, on the 0/255 uint8 mask::

    body = cv2.blur(mask, ksize=(5, 5))                      # 5x5 box blur
    body = cv2.distanceTransform(body, cv2.DIST_L2, 5)         # distance to the nearest 0 pixel
    body = body ** 0.5
    body[body > 0] = floor(body[body > 0] / max * 255)
    detail = mask - body

Note that ``cv2.distanceTransform`` treats every *nonzero* pixel as foreground, so the blur is
not a soft weighting: blurring a 0/255 mask and keeping the nonzero pixels (255 / 25 rounds to
10 > 0) is a dilation by a 5x5 square, which also closes holes and gaps narrower than 5 pixels.
So in LDF the blur happens *before* the distance transform and is thresholded at > 0. We follow
that: ``support = box_sum_5x5(mask) > 0``; ``dist = EDT(support)``; ``body = sqrt(dist) / max``.
Differences from the published code, all deliberate:

- the exact Euclidean distance transform (``scipy.ndimage.distance_transform_edt``) instead of
  OpenCV's 5x5-mask approximation, and no ``floor(... * 255)`` quantisation;
- the body is restricted to the mask (LDF's body keeps a faint 2-pixel halo outside the mask,
  where its detail ``mask - body`` is negative and is clipped to 0 when saved as uint8); the max
  is taken over the mask pixels, so body is exactly 1 at the deepest mask pixel, and
  ``body + detail == mask`` with both in [0, 1];
- distances are to zero pixels *inside the array*: the image (crop) border is not an object
  boundary, as in OpenCV. A support with no zero pixel at all (a class covering the whole crop
  after the dilation) has no boundary: its body is the mask and its detail is 0.

Because of the dilation the mask's edge pixels are at distance >= 3 from the dilated support's
edge, so the body does not reach 0 at the mask edge (e.g. sqrt(3 / 13) ~ 0.48 for a 21x21 square);
``blur=1`` (or 0) disables the blur and gives the plain EDT (edge pixels at distance 1).

The project's use (a project design, not the LDF authors'): the segmentation branch's balanced CE
on reliable pseudo-label pixels may weight each pixel by ``body_weight * body + detail_weight *
detail`` computed per image and per class from that class's reliable mask. The weights of each
class are rescaled to mean 1 over its reliable pixels, so the bg/fg balance of the balanced CE is
unchanged and only the interior-vs-boundary balance shifts (``detail_weight > body_weight``
emphasises boundaries). Weights are data, not a function of the network: no gradient flows
through them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt, uniform_filter

from trainables.data.dataset import IGNORE_INDEX

LDF_BLUR = 5
WEIGHT_FLOOR = 1e-3  # relative to max(body_weight, detail_weight); see ``decoupled_weights``


def body_detail(mask: np.ndarray, blur: int = LDF_BLUR) -> tuple[np.ndarray, np.ndarray]:
    """Body and detail maps (float32, same shape) of an (H, W) boolean ``mask`` (module docstring).

    ``blur`` is the box-blur size (LDF: 5); the blurred mask is thresholded at > 0 before the
    Euclidean distance transform, as in LDF's code. ``blur`` <= 1 disables it. An empty mask gives
    zeros, zeros. Outside the mask both maps are 0; inside, body is in (0, 1] and detail = 1 - body.

    Example (no blur: the EDT of a 1x5 row is 0 1 2 1 0, sqrt and divide by sqrt(2)):
        >>> body, detail = body_detail(np.array([[0, 1, 1, 1, 0]], dtype=bool), blur=1)
        >>> [round(float(v), 4) for v in body[0]]
        [0.0, 0.7071, 1.0, 0.7071, 0.0]
        >>> [round(float(v), 4) for v in detail[0]]
        [0.0, 0.2929, 0.0, 0.2929, 0.0]
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"body_detail expects an (H, W) mask, got shape {mask.shape}")
    zeros = np.zeros(mask.shape, dtype=np.float32)
    if not mask.any():
        return zeros, zeros.copy()
    if blur > 1:
        # box mean of the 0/1 mask; > 0 iff at least one mask pixel lies in the window (a dilation);
        # half a pixel's share as threshold guards against rounding residue of the running sum
        support = uniform_filter(mask.astype(np.float64), size=int(blur), mode="reflect") > 0.5 / blur ** 2
    else:
        support = mask
    if support.all():  # no zero pixel to measure a distance to: no boundary, all body
        body = mask.astype(np.float32)
        return body, zeros
    body = np.sqrt(distance_transform_edt(support))
    body = np.where(mask, body / body[mask].max(), 0.0).astype(np.float32)
    detail = (mask.astype(np.float32) - body).astype(np.float32)
    return body, detail


def decoupled_weights(pseudo: torch.Tensor, body_weight: float = 1.0, detail_weight: float = 1.0,
                      include_background: bool = True, blur: int = LDF_BLUR) -> torch.Tensor:
    """Per-pixel CE weights (B, H, W) float32 from (B, H, W) int64 pseudo labels (255 ignored).

    For each image and each class present, ``w = body_weight * body + detail_weight * detail``
    over that class's pixels (``body_detail`` of its mask), then ``w`` is divided by its mean over
    those pixels, so each class keeps mean weight 1. Inside a mask ``detail = 1 - body``, so the raw
    weight is ``detail_weight + (body_weight - detail_weight) * body``; it is 0 only when one of the
    two weights is 0 (e.g. ``body_weight=0`` at the deepest pixel, or a whole 1-pixel region). Raw
    weights are therefore floored at ``WEIGHT_FLOOR * max(body_weight, detail_weight)`` before the
    normalisation: such pixels keep a small positive weight, and a class whose raw weights are all
    0 gets uniform weight 1. Ignored pixels get 0; with ``include_background=False`` background
    pixels get 1 (the plain balanced CE for them). The result is on ``pseudo``'s device, without grad.

    Example (no blur; row 0 1 1 1 0 of class 1, then an ignored pixel):
        >>> w = decoupled_weights(torch.tensor([[[0, 1, 1, 1, 0, 255]]]), 0.0, 1.0, blur=1)
        >>> [round(v, 3) for v in w[0, 0].tolist()]  # fg mean is 1, centre pixel at the floor
        [1.0, 1.497, 0.005, 1.497, 1.0, 0.0]
    """
    if body_weight < 0 or detail_weight < 0 or max(body_weight, detail_weight) <= 0:
        raise ValueError(f"decoupled_weights needs weights >= 0, not both 0 (got {body_weight}, {detail_weight})")
    if pseudo.ndim != 3:
        raise ValueError(f"decoupled_weights expects (B, H, W) labels, got shape {tuple(pseudo.shape)}")
    floor = WEIGHT_FLOOR * max(body_weight, detail_weight)
    labels = pseudo.detach().cpu().numpy()
    out = np.zeros(labels.shape, dtype=np.float32)
    for b, lab in enumerate(labels):
        for c in np.unique(lab):
            if c == IGNORE_INDEX:
                continue
            mask = lab == c
            if c == 0 and not include_background:
                out[b][mask] = 1.0
                continue
            body, detail = body_detail(mask, blur=blur)
            raw = np.maximum(body_weight * body[mask] + detail_weight * detail[mask], floor)
            out[b][mask] = raw / raw.mean()
    return torch.from_numpy(out).to(pseudo.device)


def weighted_balanced_ce_loss(seg_logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``trainables.losses.balanced_ce_loss`` with per-pixel weights: the background part and the
    foreground part are each a weighted mean ``sum(w * ce) / sum(w)`` over its own reliable pixels.

    ``weight`` (B, H, W) >= 0 is treated as data (detached). A part with zero total weight (no
    pixel, or all its weights 0) contributes 0 (never NaN); if both do, the loss is 0 and still
    backpropagates (a zero gradient). With unit weights this is exactly ``balanced_ce_loss``.

    Example (uniform logits: CE = log 2 everywhere, so any weights give log 2 per part):
        >>> logits = torch.zeros(1, 2, 1, 3)
        >>> w = torch.tensor([[[3.0, 1.0, 5.0]]])
        >>> round(weighted_balanced_ce_loss(logits, torch.tensor([[[0, 1, 255]]]), w).item(), 4)
        1.3863
    """
    ce = F.cross_entropy(seg_logits, target.clamp_max(seg_logits.shape[1] - 1)
                         .masked_fill(target == ignore_index, 0), reduction="none")
    weight = weight.detach().to(ce.dtype)
    bg = target == 0
    fg = (target != 0) & (target != ignore_index)
    loss = seg_logits.sum() * 0.0  # keeps the graph: zero total weight gives 0 with a zero gradient
    for part in (bg, fg):
        w = weight * part
        total = w.sum()
        if total > 0:
            loss = loss + (ce * w).sum() / total
    return loss
