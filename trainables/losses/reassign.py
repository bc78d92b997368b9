"""Label reassign loss L_lr (docs/single_stage.md §3; after AALR, ACM MM 2021).

AALR publishes no formula for its label reassign step, so everything below is THIS PROJECT'S
OWN DESIGN (docs/single_stage.md §3 "L_lr"), not a reproduction of the paper:

1. An embedding head on the segmentation features gives ``embed`` (B, D, H, W) at the label
   resolution. Embeddings are L2-normalised over D before any use.
2. Per image b and class k (K = C+1, 0 = background), the prototype is the mean of the
   normalised embeddings of the reliable pixels (pseudo label != 255) labelled k, L2-normalised
   again. Prototypes are computed from DETACHED embeddings: they are targets, not trained
   through. ``has[b, k]`` is False where image b has no reliable pixel of class k.
3. Reassignment (no gradient). A class k is a candidate in image b when it has a prototype and
   is present (image-level label; background always present). For a reliable pixel with
   label y and cosine similarities s_k to the prototypes:
   - embedding rule: if max_{k != y, candidate} (s_k - s_y) > tau, relabel to that argmax k
     (only when y itself has a prototype);
   - prediction rule (when ``probs`` is given, and only if the embedding rule did not fire):
     if the detached prediction's argmax k != y is a present class with probability
     > ``pred_confidence``, relabel to k (k need not have a prototype).
   Ignored pixels stay 255.
4. Loss: over reliable pixels whose (reassigned) label is a candidate class of its image,
   cross-entropy of the logits s_k / temperature over that image's candidate classes (the
   others masked with -inf before the softmax), target = the label. Mean over those pixels;
   0 (graph kept, zero gradient) when there are none. Gradient flows to ``embed`` only.
5. The warm-up (reassignment switched on after a fraction of training) is the trainer's job:
   it passes ``reassign=False`` before it, and the loss then pulls towards the original labels.

Example:
    >>> embed = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 2.0]]]])  # 1x2x1x4
    >>> pseudo = torch.tensor([[[0, 0, 1, 1]]])
    >>> protos, has = class_prototypes(embed, pseudo, 2)
    >>> protos[0].tolist(), has[0].tolist()
    ([[1.0, 0.0], [0.0, 1.0]], [True, True])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.data.dataset import IGNORE_INDEX

NORM_EPS = 1e-12


def _reliable(pseudo: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reliable mask, labels with ignored pixels set to 0); labels must be in [0, K) or 255."""
    reliable = pseudo != IGNORE_INDEX
    bad = reliable & ((pseudo < 0) | (pseudo >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"pseudo labels must be in [0, {num_classes}) or {IGNORE_INDEX}")
    return reliable, torch.where(reliable, pseudo, torch.zeros_like(pseudo)).long()


def _present_mask(present: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K) bool of the present classes, background (column 0) always present."""
    if present.dim() != 2 or present.shape[1] != num_classes:
        raise ValueError(f"present must be (B, {num_classes}) with column 0 the background, "
                         f"got {tuple(present.shape)}")
    mask = present.detach() > 0
    mask[:, 0] = True
    return mask


def _similarities(embed: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (B, H, W, K) of the normalised embeddings to the prototypes."""
    e = F.normalize(embed, dim=1, eps=NORM_EPS)
    return torch.einsum("bdhw,bkd->bhwk", e, protos.to(e.dtype))


def class_prototypes(embed: torch.Tensor, pseudo: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image class prototypes (B, K, D) from the detached embeddings of the reliable
    pixels, and ``has`` (B, K) bool (False: no reliable pixel of that class; proto is zeros).

    Example:
        >>> embed = torch.tensor([[[[3.0, 0.0, 9.0]], [[0.0, 2.0, 9.0]]]])  # pixel 2 is ignored
        >>> protos, has = class_prototypes(embed, torch.tensor([[[0, 0, 255]]]), 3)
        >>> [[round(v, 4) for v in p] for p in protos[0].tolist()], has.tolist()
        ([[0.7071, 0.7071], [0.0, 0.0], [0.0, 0.0]], [[True, False, False]])
    """
    b, d = embed.shape[:2]
    reliable, labels = _reliable(pseudo, num_classes)
    e = F.normalize(embed.detach(), dim=1, eps=NORM_EPS).reshape(b, d, -1)  # (B, D, HW)
    onehot = F.one_hot(labels.reshape(b, -1), num_classes).to(e.dtype)  # (B, HW, K)
    onehot = onehot * reliable.reshape(b, -1, 1).to(e.dtype)
    sums = torch.bmm(e, onehot).transpose(1, 2)  # (B, K, D)
    has = onehot.sum(dim=1) > 0
    return F.normalize(sums, dim=2, eps=NORM_EPS), has


@torch.no_grad()
def reassign_labels(embed: torch.Tensor, pseudo: torch.Tensor, present: torch.Tensor, protos: torch.Tensor,
                    has: torch.Tensor, tau: float, probs: torch.Tensor | None = None,
                    pred_confidence: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Reassigned labels (B, H, W) int64 and the bool mask of changed pixels (module docstring,
    step 3). No gradient.

    Example:
        >>> protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> has = torch.tensor([[True, True]])
        >>> embed = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 1.0, 1.0]]]])
        >>> pseudo = torch.tensor([[[0, 0, 255]]])
        >>> new, changed = reassign_labels(embed, pseudo, torch.tensor([[1.0, 1.0]]), protos, has, tau=0.5)
        >>> new.tolist(), changed.tolist()
        ([[[0, 1, 255]]], [[[False, True, False]]])
    """
    num_classes = protos.shape[1]
    reliable, labels = _reliable(pseudo, num_classes)
    candidate = has.bool() & _present_mask(present, num_classes)  # (B, K)
    sims = _similarities(embed.detach(), protos.detach())  # (B, H, W, K)
    own = sims.gather(-1, labels[..., None])  # s_y
    other = F.one_hot(labels, num_classes).bool().logical_not() & candidate[:, None, None, :]
    gap = (sims - own).masked_fill(~other, float("-inf"))
    best_gap, best_k = gap.max(dim=-1)
    own_has = has.bool().gather(1, labels.reshape(labels.shape[0], -1)).reshape(labels.shape)
    by_embed = reliable & own_has & (best_gap > tau)
    new = torch.where(by_embed, best_k, labels)
    changed = by_embed
    if probs is not None:
        conf, pred = probs.detach().max(dim=1)  # (B, H, W)
        present_mask = _present_mask(present, num_classes)
        pred_present = present_mask.gather(1, pred.reshape(pred.shape[0], -1)).reshape(pred.shape)
        by_pred = reliable & ~by_embed & (pred != labels) & pred_present & (conf > pred_confidence)
        new = torch.where(by_pred, pred, new)
        changed = changed | by_pred
    new = torch.where(reliable, new, torch.full_like(new, IGNORE_INDEX))
    return new.long(), changed


def prototype_contrastive_loss(embed: torch.Tensor, pseudo: torch.Tensor, protos: torch.Tensor, has: torch.Tensor,
                               present: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Prototype contrastive loss (module docstring, step 4); gradient to ``embed`` only.

    Example (a pixel equal to one of two orthogonal prototypes: log(1 + exp(-1/t))):
        >>> protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> embed = torch.tensor([[[[2.0]], [[0.0]]]])
        >>> loss = prototype_contrastive_loss(embed, torch.tensor([[[0]]]), protos, torch.tensor([[True, True]]),
        ...                                   torch.tensor([[1.0, 1.0]]), temperature=0.5)
        >>> round(loss.item(), 4)
        0.1269
    """
    num_classes = protos.shape[1]
    reliable, labels = _reliable(pseudo, num_classes)
    candidate = has.bool() & _present_mask(present, num_classes)  # (B, K)
    own_ok = candidate.gather(1, labels.reshape(labels.shape[0], -1)).reshape(labels.shape)
    sel = reliable & own_ok
    if not bool(sel.any()):
        return embed.sum() * 0.0
    # Select the pixels first: every selected row has a finite target logit, so the -inf
    # entries can never make a row all -inf (no NaN in forward or backward).
    sims = _similarities(embed, protos.detach())[sel]  # (N, K)
    allowed = candidate[:, None, None, :].expand(*labels.shape, num_classes)[sel]
    logits = (sims / temperature).masked_fill(~allowed, float("-inf"))
    return F.cross_entropy(logits, labels[sel])


def label_reassign_loss(embed: torch.Tensor, pseudo: torch.Tensor, present: torch.Tensor,
                        probs: torch.Tensor | None = None, *, tau: float = 0.2, reassign: bool = True,
                        pred_confidence: float = 0.95,
                        temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_lr: (loss, new_pseudo, changed). Prototypes from ``pseudo``; if ``reassign``, labels
    are reassigned (else new_pseudo is a clone of ``pseudo`` and nothing changed); the
    contrastive loss pulls each pixel towards the prototype of its resulting label.

    Example:
        >>> embed = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 1.0, 1.0]]]])
        >>> # bg prototype (0.71, 0.71), fg (0, 1): pixel 1 gains 1 - 0.71 = 0.29 > tau = 0.2
        >>> loss, new, changed = label_reassign_loss(embed, torch.tensor([[[0, 0, 1]]]), torch.tensor([[1.0, 1.0]]))
        >>> new.tolist(), changed.sum().item()
        ([[[0, 1, 1]]], 1)
    """
    num_classes = present.shape[1]
    protos, has = class_prototypes(embed, pseudo, num_classes)
    if reassign:
        new, changed = reassign_labels(embed, pseudo, present, protos, has, tau, probs=probs,
                                       pred_confidence=pred_confidence)
    else:
        new, changed = pseudo.clone().long(), torch.zeros_like(pseudo, dtype=torch.bool)
    # Choice: the prototypes stay those of the ORIGINAL reliable pixels, not recomputed from the
    # reassigned labels. Recomputing would let the reassigned pixels drag their new class's
    # prototype towards themselves (self-confirming) and cost a second pass; the original
    # prototypes are the class evidence the reassignment was judged against. A pixel reassigned
    # (by the prediction rule) to a class with no prototype is left out of the loss.
    loss = prototype_contrastive_loss(embed, new, protos, has, present, temperature=temperature)
    return loss, new, changed
