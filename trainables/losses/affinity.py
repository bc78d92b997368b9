"""Adaptive affinity loss (docs/single_stage.md §3; AALR, ACM MM 2021, on top of Adaptive Affinity Fields, Ke et
al., ECCV 2018, eq. 3-5).

Every pixel i is paired with its 8 neighbours j at distance ``d`` (the corners and edges of a
(2d+1)^2 square). A pair counts only when both pixels are inside the crop and carry a reliable
pseudo label (255 pairs are skipped). For each pair, the divergence is the binary KL summed over
classes, KL(p_j || p_i) = sum_c p_jc log(p_jc / p_ic) + (1 - p_jc) log((1 - p_jc) / (1 - p_ic)),
with probabilities clamped to [1e-4, 1] as in AAF. Then

    L = mean_{bg-bg pairs}(w KL) + mean_{obj-obj pairs}(w KL)
        + lambda_diff * mean_{different-label pairs} max(0, m w - KL)

with margin m [3], lambda_diff [2] and the pair weight w = max(conf_i, conf_j). The confidence
source is not published by AALR (this project's choice, a switch): the CRF probability of the
pixel's pseudo label (``crf``), the normalised CAM of its label (``cam``; background uses the
bg score), or the detached predicted probability of its label (``pred``). A same-label pair of
two different foreground classes cannot occur: those are different-label pairs.
Each mean is over its own pairs; an empty group contributes 0 (never NaN). A batch whose pairs
are all of one same-label group (only bg-bg, or only obj-obj, and no different-label pair) gives
0, as AALR's code does (``single_group="zero"``); ``"mean"`` gives that group's mean instead.
"""

from __future__ import annotations

import torch

from trainables.data.dataset import IGNORE_INDEX

EPS_LOW, EPS_HIGH = 1e-4, 1.0


def neighbour_offsets(distance: int) -> list[tuple[int, int]]:
    """The 8 (dy, dx) offsets at ``distance``."""
    d = int(distance)
    return [(dy, dx) for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0)]


def _shift_pairs(t: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, neighbour) views of the last two dims for offset (dy, dx), over the overlap."""
    h, w = t.shape[-2:]
    ys, yn = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xn = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    return t[..., ys, xs], t[..., yn, xn]


def binary_kl(p_from: torch.Tensor, p_to: torch.Tensor) -> torch.Tensor:
    """sum_c KL(Bernoulli(p_from_c) || Bernoulli(p_to_c)) over dim 1, probabilities clamped."""
    a = p_from.clamp(EPS_LOW, EPS_HIGH)
    b = p_to.clamp(EPS_LOW, EPS_HIGH)
    na = (1.0 - p_from).clamp(EPS_LOW, EPS_HIGH)
    nb = (1.0 - p_to).clamp(EPS_LOW, EPS_HIGH)
    return (a * (a.log() - b.log()) + na * (na.log() - nb.log())).sum(dim=1)


def affinity_loss(probs: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor | None = None, *,
                  distance: int = 4, margin: float = 3.0, diff_weight: float = 2.0,
                  single_group: str = "zero") -> torch.Tensor:
    """The adaptive affinity loss of a batch (module docstring).

    ``probs`` (B, C+1, H, W) softmax of the segmentation logits, ``labels`` (B, H, W) pseudo
    labels (0 background, 255 ignored), ``confidence`` (B, H, W) in [0, 1] or None (w = 1, the
    plain AAF loss). ``single_group``: ``zero`` or ``mean`` for a batch with one kind of pair.
    """
    if single_group not in ("zero", "mean"):
        raise ValueError(f"loss.affinity.single_group={single_group!r}: choose zero or mean")
    if confidence is None:
        confidence = torch.ones_like(labels, dtype=probs.dtype)
    confidence = confidence.to(probs.dtype).detach()
    zero = probs.sum() * 0.0  # keeps the graph: an empty batch gives 0 with a zero gradient
    sums = {"bg": zero, "obj": zero, "diff": zero}
    counts = {"bg": 0, "obj": 0, "diff": 0}
    for dy, dx in neighbour_offsets(distance):
        if abs(dy) >= labels.shape[-2] or abs(dx) >= labels.shape[-1]:
            continue
        p_c, p_n = _shift_pairs(probs, dy, dx)
        l_c, l_n = _shift_pairs(labels, dy, dx)
        w_c, w_n = _shift_pairs(confidence, dy, dx)
        valid = (l_c != IGNORE_INDEX) & (l_n != IGNORE_INDEX)
        kl = binary_kl(p_n, p_c)
        w = torch.maximum(w_c, w_n)
        same = valid & (l_c == l_n)
        groups = {"bg": same & (l_c == 0), "obj": same & (l_c != 0), "diff": valid & (l_c != l_n)}
        for name, mask in groups.items():
            n = int(mask.sum())
            if n == 0:
                continue
            value = w * kl if name != "diff" else (margin * w - kl).clamp_min(0.0)
            sums[name] = sums[name] + value[mask].sum()
            counts[name] += n
    if single_group == "zero" and counts["diff"] == 0 and (counts["bg"] == 0) != (counts["obj"] == 0):
        # AALR, Affinity_loss.py l.201-215: no edge pair and one kind of non-edge pair -> 0.
        return zero
    mean = {k: sums[k] / counts[k] if counts[k] else sums[k] for k in sums}
    return mean["bg"] + mean["obj"] + diff_weight * mean["diff"]


def pixel_confidence(source: str, labels: torch.Tensor, *, crf_confidence: torch.Tensor | None = None,
                     cams: torch.Tensor | None = None, bg_score: torch.Tensor | None = None,
                     probs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel confidence (B, H, W) of its pseudo label, from ``source``: ``crf`` (the CRF
    marginal the pseudo label was read from), ``cam`` (normalised CAM of the label's class,
    ``bg_score`` for background) or ``pred`` (detached softmax of the label's class). Ignored
    pixels get 0 (they are never paired anyway)."""
    safe = torch.where(labels == IGNORE_INDEX, torch.zeros_like(labels), labels)
    if source == "crf":
        if crf_confidence is None:
            raise ValueError("loss.affinity.confidence='crf' needs the CRF marginals (pseudo.crf: true)")
        conf = crf_confidence
    elif source == "cam":
        if cams is None or bg_score is None:
            raise ValueError("loss.affinity.confidence='cam' needs CAMs and the background score")
        stack = torch.cat([bg_score[:, None], cams], dim=1)
        conf = stack.gather(1, safe[:, None])[:, 0]
    elif source == "pred":
        if probs is None:
            raise ValueError("loss.affinity.confidence='pred' needs the predictions")
        conf = probs.detach().gather(1, safe[:, None])[:, 0]
    else:
        raise ValueError(f"loss.affinity.confidence={source!r}: choose crf, cam or pred")
    return torch.where(labels == IGNORE_INDEX, torch.zeros_like(conf), conf).detach()
