"""Loss terms of the single-stage model (docs/single_stage.md §3). Each is a small function of tensors; the
trainer combines them as L = L_cls + sum_k w_k * L_k with a switch per term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.data.dataset import IGNORE_INDEX


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_cls: multilabel soft-margin loss on the GAP logits (docs/single_stage.md §3)."""
    return F.multilabel_soft_margin_loss(logits, labels)


def balanced_ce_loss(seg_logits: torch.Tensor, target: torch.Tensor,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """L_ce: cross-entropy on reliable background pixels plus cross-entropy on reliable
    foreground pixels, each averaged over its own pixels (docs/single_stage.md §3, RRM ``compute_joint_loss``).

    A part with no pixel contributes 0 (never NaN).

    Example:
        >>> logits = torch.zeros(1, 2, 1, 3)  # uniform: CE = log 2 at every pixel
        >>> round(balanced_ce_loss(logits, torch.tensor([[[0, 1, 255]]])).item(), 4)
        1.3863
    """
    ce = F.cross_entropy(seg_logits, target.clamp_max(seg_logits.shape[1] - 1)
                         .masked_fill(target == ignore_index, 0), reduction="none")
    bg = target == 0
    fg = (target != 0) & (target != ignore_index)
    loss = seg_logits.new_zeros(())
    for part in (bg, fg):
        n = part.sum()
        if n > 0:
            loss = loss + (ce * part).sum() / n
    return loss
