"""Tests for trainables/losses/classification.py: balanced cross-entropy and the classification loss."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.losses.classification import balanced_ce_loss, classification_loss

IGN = 255


def _ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one pixel by hand: log(sum exp) - logit[target]."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_balanced_ce_hand_case_two_classes():
    # Pixel logits (class 0, class 1) and targets:
    #   p0: (2, 0) bg -> CE = log(1 + e^-2)
    #   p1: (0, 1) bg -> CE = log(1 + e^1)
    #   p2: (0, 3) fg -> CE = log(1 + e^-3)
    #   p3: (5, -5) ignored
    # L = (CE0 + CE1) / 2 + CE2 (each part averaged over its own pixels)
    logits = torch.tensor([[2.0, 0.0, 0.0, 5.0], [0.0, 1.0, 3.0, -5.0]]).view(1, 2, 1, 4)
    target = torch.tensor([[[0, 0, 1, IGN]]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2 + math.log(1 + math.exp(-3))
    assert balanced_ce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # differs from the plain mean over the three reliable pixels
    plain = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1)) + math.log(1 + math.exp(-3))) / 3
    assert abs(expected - plain) > 0.1


def test_balanced_ce_hand_case_several_foreground_classes():
    # 3 classes, batch of 2; fg pixels of classes 1 and 2 are averaged together.
    px = [
        ([1.0, 0.0, -1.0], 0),
        ([0.5, 2.0, 0.0], 1),
        ([0.0, 0.0, 0.0], 2),
        ([3.0, 1.0, 2.0], IGN),
        ([0.2, -0.3, 1.5], 2),
        ([-1.0, 0.0, 4.0], 0),
    ]
    logits = torch.tensor([p for p, _ in px]).T.reshape(3, 2, 1, 3).permute(1, 0, 2, 3)
    target = torch.tensor([t for _, t in px]).view(2, 1, 3)
    # sanity of the layout: pixel j of image i is px[3 * i + j]
    assert logits[1, :, 0, 1].tolist() == pytest.approx(px[4][0])
    bg = [_ce(p, t) for p, t in px if t == 0]
    fg = [_ce(p, t) for p, t in px if t not in (0, IGN)]
    assert len(bg) == 2 and len(fg) == 3
    expected = sum(bg) / 2 + sum(fg) / 3
    assert balanced_ce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_ce_only_background_or_only_foreground():
    # pixel 0: logits (1, 0), pixel 1: logits (-1, 2)
    logits = torch.tensor([[1.0, -1.0], [0.0, 2.0]]).view(1, 2, 1, 2)
    only_bg = torch.tensor([[[0, IGN]]])
    assert balanced_ce_loss(logits, only_bg).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    only_fg = torch.tensor([[[IGN, 1]]])
    assert balanced_ce_loss(logits, only_fg).item() == pytest.approx(math.log(1 + math.exp(-3)), rel=1e-6)


def test_balanced_ce_all_ignore_is_zero_with_zero_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGN)
    loss = balanced_ce_loss(logits, target)
    assert loss.item() == 0.0
    assert torch.isfinite(loss)
    if loss.requires_grad:
        loss.backward()
        assert logits.grad is None or (logits.grad == 0).all()


def test_balanced_ce_gradient_only_from_reliable_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 3, requires_grad=True)
    target = torch.tensor([[[0, IGN, 2], [IGN, 1, IGN]]])
    balanced_ce_loss(logits, target).backward()
    grad = logits.grad[0].abs().sum(dim=0)  # (H, W)
    reliable = target[0] != IGN
    assert (grad[~reliable] == 0).all()
    assert (grad[reliable] > 0).all()


def test_balanced_ce_custom_ignore_index():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    target = torch.tensor([[[0, -1]]])
    assert balanced_ce_loss(logits, target, ignore_index=-1).item() == pytest.approx(
        math.log(1 + math.exp(-2)), rel=1e-6)


def _softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def test_classification_loss_hand_case():
    # multilabel soft margin: mean over classes and images of
    #   y * softplus(-x) + (1 - y) * softplus(x)      (= -[y log s(x) + (1-y) log(1 - s(x))])
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    img0 = (_softplus(-2.0) + _softplus(-1.0) + _softplus(-0.0)) / 3
    img1 = (_softplus(0.5) + _softplus(-3.0) + _softplus(-2.0)) / 3
    expected = (img0 + img1) / 2
    assert classification_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(logits, labels).item() == pytest.approx(
        torch.nn.MultiLabelSoftMarginLoss()(logits, labels).item(), rel=1e-6)
