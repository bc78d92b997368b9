"""PAR: pixel-adaptive refinement of score maps on the device, a batch at once (docs/single_stage.md §2).

AFA (Ru et al., CVPR 2022, §3.3) and ToCo (CVPR 2023) refine CAMs with PAR, a local filter
derived from PAMR (Araslanov & Roth, CVPR 2020): every pixel is repeatedly replaced by a
weighted average of its 8 neighbours at each dilation d, with weights from colour similarity
and a small position prior. It is a handful of shifted multiply-adds, so a batch runs on the
trial's GPU inside the training step, where the dense CRF needs a CPU core per image.

For a pixel i and its neighbour j (8 per dilation, replicate-padded at the border), with colour
I (per channel c) and distance d_ij (d, or d sqrt 2 on the diagonals)::

    k_col(i, j) = -mean_c (|I_jc - I_ic| / (sigma_ic w_col))^2     sigma_ic: std of I_jc over j
    k_pos(j)    = -(d_ij / (sigma_d w_col))^2                       sigma_d: std of d_ij over j
    A(i, j)     = [softmax_j k_col + w_pos softmax_j k_pos] / (1 + w_pos)
    P <- A P, ``iterations`` times

Choices, each documented here and tested (tests/test_par.py):

- The colour term is scaled by the local standard deviation, so it does not matter whether the
  image is uint8 RGB or the normalised network input: PAR is invariant to a per-channel affine
  change of colour (up to the 1e-8 guard on sigma).
- AFA's code adds ``w_pos softmax(k_pos)`` without renormalising, so each row of its propagation
  matrix sums to 1 + w_pos and the scores grow by 1.01 per iteration. Here the rows sum to 1 (the
  division by 1 + w_pos): the output of probabilities is again probabilities, and argmax and
  the per-pixel normalised output are unchanged by the choice.
- ``scale`` < 1 filters at a lower resolution (ToCo works at half scale) and resizes the result
  back (bilinear); the input scores are resized the same way.

Example:
    >>> img = torch.zeros(1, 3, 4, 8); img[..., 4:] = 1.0           # two flat regions
    >>> p = torch.zeros(1, 2, 4, 8); p[:, 0, :, :4] = 1; p[:, 1, :, 4:] = 1
    >>> p[:, :, 1, 1] = torch.tensor([0.4, 0.6])                    # one doubtful pixel
    >>> par_refine(img, p, dilations=[1, 2], iterations=5)[0].argmax(0)[1].tolist()
    [0, 0, 0, 0, 1, 1, 1, 1]
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

# The 8 neighbours of a pixel, (dy, dx), at dilation 1.
_EIGHT = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of every neighbour: the 8 neighbours at each dilation, in order.

    Example:
        >>> neighbour_offsets([2])[:3]
        [(-2, -2), (-2, 0), (-2, 2)]
    """
    return [(dy * int(d), dx * int(d)) for d in dilations for dy, dx in _EIGHT]


def _shifted(x: torch.Tensor, offsets: list[tuple[int, int]]):
    """x (B, C, H, W) read at each offset (replicate padding): yields (B, C, H, W) views."""
    h, w = x.shape[-2:]
    m = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, [m, m, m, m], mode="replicate")
    for dy, dx in offsets:
        yield padded[..., m + dy : m + dy + h, m + dx : m + dx + w]


def par_affinity(image: torch.Tensor, dilations: Sequence[int], colour_weight: float = 0.3,
                 position_weight: float = 0.01) -> torch.Tensor:
    """(B, N, H, W) propagation weights of each pixel over its N = 8 len(dilations) neighbours
    (:func:`neighbour_offsets` order); they sum to 1 over N. ``image`` is (B, 3, H, W) float."""
    offsets = neighbour_offsets(dilations)
    n = len(offsets)
    img = image.float()
    b, _, h, w = img.shape
    # sigma_ic: the (unbiased, as torch.std in AFA) std of the neighbours' colours, per channel.
    total, total_sq = torch.zeros_like(img), torch.zeros_like(img)
    for nb in _shifted(img, offsets):
        total += nb
        total_sq.addcmul_(nb, nb)
    var = (total_sq - total * total / n).clamp_min_(0.0) / max(n - 1, 1)
    # k_col = -sum_c d_c^2 * inv_c with inv_c = 1 / (3 (sigma_c w_col)^2): the mean over channels folded in.
    inv = ((var.sqrt_() + 1e-8) * colour_weight).square_().mul_(img.shape[1]).reciprocal_()
    colour = img.new_empty(n, b, h, w)  # neighbour-major: each neighbour's plane is contiguous
    diff = torch.empty_like(img)
    for k, nb in enumerate(_shifted(img, offsets)):
        torch.sub(nb, img, out=diff).square_()
        torch.mul(diff[:, 0], inv[:, 0], out=colour[k])
        for c in range(1, diff.shape[1]):
            colour[k].addcmul_(diff[:, c], inv[:, c])
    # softmax over the neighbours of -colour (min subtracted: a flat neighbourhood stays finite)
    colour = colour.sub_(colour.amin(0)).neg_().exp_()
    colour = colour.div_(colour.sum(0))
    dist = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=img.dtype, device=img.device)
    pos = -(dist / ((dist.std() if n > 1 else dist.new_tensor(1.0)) + 1e-8) / colour_weight).square()
    pos = torch.softmax(pos, 0).view(n, 1, 1, 1)
    aff = colour.add_(pos, alpha=position_weight).div_(1.0 + position_weight)
    return aff.permute(1, 0, 2, 3)


def par_propagate(probs: torch.Tensor, affinity: torch.Tensor, dilations: Sequence[int],
                  iterations: int) -> torch.Tensor:
    """``iterations`` steps of P <- A P: probs (B, K, H, W), affinity (B, N, H, W)."""
    offsets = neighbour_offsets(dilations)
    p = probs.float()
    for _ in range(int(iterations)):
        out = torch.zeros_like(p)
        for k, nb in enumerate(_shifted(p, offsets)):
            out.addcmul_(affinity[:, k : k + 1], nb)
        p = out
    return p


def par_refine(image: torch.Tensor, probs: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
               iterations: int = 10, scale: float = 1.0, colour_weight: float = 0.3,
               position_weight: float = 0.01) -> torch.Tensor:
    """PAR over a batch: ``image`` (B, 3, H, W) float (any per-channel colour scale), ``probs``
    (B, K, H, W) per-pixel distributions (or scores: PAR is linear) -> (B, K, H, W) float32 at
    the input size, on the input's device. Channels are independent, so an all-zero channel (a
    class absent from an image, padded into a batch) stays zero."""
    size = tuple(probs.shape[-2:])
    img = image.float()
    if img.shape[-2:] != size:
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
    p = probs.float()
    if scale != 1.0:
        low = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        img = F.interpolate(img, size=low, mode="bilinear", align_corners=False)
        p = F.interpolate(p, size=low, mode="bilinear", align_corners=False)
    p = par_propagate(p, par_affinity(img, dilations, colour_weight, position_weight), dilations, iterations)
    if p.shape[-2:] != size:
        p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
    return p
