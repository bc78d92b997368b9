"""Adaptive affinity loss: a KL pair, a hinge pair and an ignored pair by hand, the 8-neighbour
pattern, confidence weighting, the confidence sources, and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.losses.affinity import affinity_loss, binary_kl, neighbour_offsets, pixel_confidence


def _pair(labels, p0=(0.9, 0.1), p1=(0.6, 0.4)):
    probs = torch.tensor([[list(p0), list(p1)]], dtype=torch.float64).permute(0, 2, 1)[:, :, None, :]  # 1x2x1x2
    return probs, torch.tensor([[labels]])


# KL(p1 || p0) and KL(p0 || p1), binary KL summed over the two classes, by hand:
KL_10 = 2 * (0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1))  # 0.622478
KL_01 = 2 * (0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4))  # 0.452578


def test_binary_kl_by_hand():
    probs, _ = _pair([1, 1])
    assert float(binary_kl(probs[..., 1:], probs[..., :1])) == pytest.approx(KL_10)
    assert KL_10 == pytest.approx(0.622478, abs=1e-6) and KL_01 == pytest.approx(0.452578, abs=1e-6)


def test_same_label_pair_is_the_mean_kl_of_both_directions():
    # One kind of pair only: AALR's code gives 0 (see below); "mean" shows the group's value.
    probs, labels = _pair([1, 1])
    loss = affinity_loss(probs, labels, distance=1, single_group="mean")
    assert float(loss) == pytest.approx((KL_10 + KL_01) / 2)
    # Background pairs form their own mean, added to the object one.
    loss_bg = affinity_loss(probs, torch.tensor([[[0, 0]]]), distance=1, single_group="mean")
    assert float(loss_bg) == pytest.approx((KL_10 + KL_01) / 2)
    # Both kinds in one batch: the two means add up, whatever the switch.
    both = torch.cat([probs, probs], dim=0)
    for mode in ("zero", "mean"):
        loss = affinity_loss(both, torch.tensor([[[1, 1]], [[0, 0]]]), distance=1, single_group=mode)
        assert float(loss) == pytest.approx(KL_10 + KL_01)


@pytest.mark.parametrize("labels", [[1, 1], [0, 0]])
def test_a_batch_with_one_kind_of_pair_only_gives_zero_as_aalr(labels):
    # AALR (Affinity_loss.py l.201-215): no different-label pair and only bg-bg (or only obj-obj)
    # pairs -> loss 0, with a zero gradient.
    logits = torch.tensor([[[[2.2, 0.4]], [[0.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
    loss = affinity_loss(torch.softmax(logits, 1), torch.tensor([labels]), distance=1)
    assert float(loss.detach()) == 0.0
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.count_nonzero(g) == 0
    # With a different-label pair beside them the group keeps its mean (AALR l.122-137): pixels
    # p0, p1, p0 labelled l, l, 2; the pair (0, 1) is pulled, the pair (1, 2) pushed.
    probs, _ = _pair(labels)
    probs3 = torch.cat([probs, probs[..., :1]], dim=-1)
    got = affinity_loss(probs3, torch.tensor([[labels + [2]]]), distance=1, margin=3.0, diff_weight=2.0)
    assert float(got) == pytest.approx((KL_10 + KL_01) / 2 + 2.0 * (3 - (KL_10 + KL_01) / 2))
    with pytest.raises(ValueError, match="loss.affinity.single_group='none'"):
        affinity_loss(probs, torch.tensor([labels]), distance=1, single_group="none")


def test_different_label_pair_is_a_weighted_hinge():
    probs, labels = _pair([0, 1])
    loss = affinity_loss(probs, labels, distance=1, margin=3.0, diff_weight=2.0)
    assert float(loss) == pytest.approx(2.0 * ((3 - KL_10) + (3 - KL_01)) / 2)
    # w = max(conf) = 0.5 scales the margin: max(0, 1.5 - KL)
    conf = torch.tensor([[[0.2, 0.5]]], dtype=torch.float64)
    loss = affinity_loss(probs, labels, conf, distance=1, margin=3.0, diff_weight=2.0)
    assert float(loss) == pytest.approx(2.0 * ((1.5 - KL_10) + (1.5 - KL_01)) / 2)
    # KL above the margin: no push, no gradient.
    logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]], dtype=torch.float64, requires_grad=True)
    loss = affinity_loss(torch.softmax(logits, 1), labels, distance=1, margin=3.0)
    assert float(loss.detach()) == 0.0
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.count_nonzero(g) == 0


def test_same_label_pull_is_confidence_weighted():
    probs, labels = _pair([2, 2])
    conf = torch.tensor([[[0.3, 0.8]]], dtype=torch.float64)
    loss = affinity_loss(probs, labels, conf, distance=1, single_group="mean")
    assert float(loss) == pytest.approx(0.8 * (KL_10 + KL_01) / 2)


def test_pairs_with_an_ignored_pixel_are_skipped():
    logits = torch.randn(1, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    loss = affinity_loss(torch.softmax(logits, 1), torch.tensor([[[1, 255]]]), distance=1)
    assert float(loss.detach()) == 0.0  # no valid pair: 0, not NaN
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.count_nonzero(g) == 0


def test_eight_neighbours_at_distance():
    assert sorted(neighbour_offsets(4)) == sorted([(-4, -4), (-4, 0), (-4, 4), (0, -4), (0, 4), (4, -4), (4, 0), (4, 4)])
    # A 3x3 map with distance 1: the centre pairs with all 8, each edge pixel with 5 or 3.
    labels = torch.full((1, 3, 3), 255)
    labels[0, 1, 1] = 1
    labels[0, 0, 0] = 1
    probs, _ = _pair([1, 1])
    p = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    p[..., :, :] = probs[..., :1]  # every pixel p0 ...
    p[0, :, 0, 0] = probs[0, :, 0, 1]  # ... but the corner p1: the corner-centre pair is diagonal
    assert float(affinity_loss(p, labels, distance=1, single_group="mean")) == pytest.approx((KL_10 + KL_01) / 2)
    assert float(affinity_loss(p, labels, distance=2)) == 0.0  # no labelled pair at distance 2


def test_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 6))
    labels[:, 0] = 255
    conf = torch.rand(2, 6, 6, dtype=torch.float64)
    fn = lambda lg: affinity_loss(torch.softmax(lg, 1), labels, conf, distance=2, margin=3.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-6)


def test_confidence_sources():
    labels = torch.tensor([[[0, 2, 255]]])
    cams = torch.tensor([[[[0.1, 0.2, 0.3]], [[0.4, 0.9, 0.6]]]])
    bg = torch.tensor([[[0.7, 0.05, 0.0]]])
    assert pixel_confidence("cam", labels, cams=cams, bg_score=bg).tolist() == [[[pytest.approx(0.7), pytest.approx(0.9), 0.0]]]
    probs = torch.tensor([[[[0.6, 0.1, 0.3]], [[0.3, 0.1, 0.3]], [[0.1, 0.8, 0.4]]]])
    assert pixel_confidence("pred", labels, probs=probs).tolist() == [[[pytest.approx(0.6), pytest.approx(0.8), 0.0]]]
    crf = torch.tensor([[[0.95, 0.85, 0.5]]])
    assert pixel_confidence("crf", labels, crf_confidence=crf).tolist() == [[[pytest.approx(0.95), pytest.approx(0.85), 0.0]]]
    with pytest.raises(ValueError, match="loss.affinity.confidence='edge'"):
        pixel_confidence("edge", labels)
