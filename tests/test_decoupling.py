"""Tests for trainables/losses/decoupling.py: LDF body/detail maps, decoupled CE weights and the
weighted balanced cross-entropy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from trainables.losses.decoupling import body_detail, decoupled_weights, weighted_balanced_ce_loss
from trainables.losses.classification import balanced_ce_loss

IGN = 255


def _square(size: int = 41, lo: int = 10, hi: int = 30) -> np.ndarray:
    """(size, size) mask with a filled square on rows/cols lo..hi inclusive."""
    m = np.zeros((size, size), dtype=bool)
    m[lo:hi + 1, lo:hi + 1] = True
    return m


def _ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one pixel by hand: log(sum exp) - logit[target]."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


# ---------------------------------------------------------------- body_detail


@pytest.mark.parametrize("blur", [5, 1])
def test_square_body_peaks_at_centre_and_falls_to_edge(blur):
    mask = _square()
    body, detail = body_detail(mask, blur=blur)
    assert body.dtype == np.float32 and detail.dtype == np.float32
    assert body.shape == mask.shape == detail.shape
    assert body[20, 20] == pytest.approx(1.0) and body.max() == pytest.approx(1.0)
    # along the middle row, from the centre (col 20) to the edge (col 30): strictly decreasing
    row = body[20, 20:31]
    assert np.all(np.diff(row) < 0)
    assert np.all(body[~mask] == 0) and np.all(detail[~mask] == 0)
    assert np.all(body[mask] > 0)
    assert np.all(detail[mask] >= 0) and detail[20, 30] > detail[20, 25] > detail[20, 20] == pytest.approx(0.0)
    np.testing.assert_allclose(body + detail, mask.astype(np.float32), atol=1e-6)


def test_square_edge_values_by_hand():
    mask = _square()  # 21x21 square, rows/cols 10..30 of a 41x41 image
    # no blur: the centre (20, 20) is 11 px from the nearest zero (row 9), an edge pixel 1 px
    body, _ = body_detail(mask, blur=1)
    assert body[20, 30] == pytest.approx(math.sqrt(1 / 11), rel=1e-6)
    assert body[10, 10] == pytest.approx(math.sqrt(1 / 11), rel=1e-6)
    assert body[20, 25] == pytest.approx(math.sqrt(6 / 11), rel=1e-6)
    # LDF blur 5x5 (> 0) dilates the support by 2 px: rows 8..32, nearest zero at row 7 / 33;
    # centre at distance 13, the mask's edge pixels (and corners) at distance 3
    body, detail = body_detail(mask)
    assert body[20, 30] == pytest.approx(math.sqrt(3 / 13), rel=1e-6)
    assert body[10, 10] == pytest.approx(math.sqrt(3 / 13), rel=1e-6)
    assert detail[20, 30] == pytest.approx(1 - math.sqrt(3 / 13), rel=1e-6)


def test_one_row_hand_case_with_blur():
    # mask 0 0 0 1 1 1 0 0 0; the 5x5 box sum is > 0 on columns 1..7 (dilation by 2), so the EDT
    # of the support is 0 1 2 3 4 3 2 1 0; on the mask: 3 4 3 -> sqrt / sqrt(4) = sqrt3/2, 1, sqrt3/2
    mask = np.array([[0, 0, 0, 1, 1, 1, 0, 0, 0]], dtype=bool)
    body, detail = body_detail(mask)
    r = math.sqrt(3) / 2
    np.testing.assert_allclose(body[0], [0, 0, 0, r, 1, r, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(detail[0], [0, 0, 0, 1 - r, 0, 1 - r, 0, 0, 0], atol=1e-6)


def test_3x3_block_without_blur_by_hand():
    # EDT of a 3x3 block: 2 at the centre, 1 on its 8 border pixels -> body 1 and sqrt(1/2)
    mask = np.zeros((7, 7), dtype=bool)
    mask[2:5, 2:5] = True
    body, detail = body_detail(mask, blur=0)
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = math.sqrt(0.5)
    expected[3, 3] = 1.0
    np.testing.assert_allclose(body, expected, atol=1e-6)
    np.testing.assert_allclose(detail, mask - expected, atol=1e-6)


def test_blur_closes_a_one_pixel_hole_like_ldf():
    # a 1-pixel hole in a square is a boundary for the plain EDT but is closed by the 5x5 blur
    mask = _square()
    mask[20, 20] = False
    plain, _ = body_detail(mask, blur=1)
    ldf, _ = body_detail(mask)
    assert plain[20, 21] == pytest.approx(math.sqrt(1 / plain_max_dist(mask)), rel=1e-6)
    assert ldf[20, 21] > 0.99  # next to the closed hole = near the deepest point
    assert plain[20, 21] < 0.45
    assert ldf[20, 20] == 0.0  # the hole itself stays outside the mask


def plain_max_dist(mask: np.ndarray) -> float:
    """Largest EDT over the mask (helper for the hole test), computed by brute force."""
    ys, xs = np.nonzero(mask)
    zy, zx = np.nonzero(~mask)
    d = np.sqrt((ys[:, None] - zy[None]) ** 2 + (xs[:, None] - zx[None]) ** 2).min(axis=1)
    return float(d.max())


@pytest.mark.parametrize("blur", [5, 1])
def test_empty_mask_gives_zeros_without_warnings(blur):
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        body, detail = body_detail(np.zeros((6, 8), dtype=bool), blur=blur)
    assert body.shape == (6, 8) and not body.any() and not detail.any()
    assert body.dtype == np.float32 and detail.dtype == np.float32


@pytest.mark.parametrize("blur", [5, 1])
def test_full_and_nearly_full_masks_are_finite(blur):
    full = np.ones((5, 5), dtype=bool)
    body, detail = body_detail(full, blur=blur)  # no zero pixel: all body
    assert np.all(body == 1) and np.all(detail == 0)
    one = np.zeros((5, 5), dtype=bool)
    one[0, 0] = True  # with blur the support covers 3x3 of the 5x5 image
    body, detail = body_detail(one, blur=blur)
    assert body[0, 0] == pytest.approx(1.0) and detail[0, 0] == pytest.approx(0.0)
    assert np.isfinite(body).all() and body.sum() == pytest.approx(1.0)


# ---------------------------------------------------------------- decoupled_weights


def _scene() -> torch.Tensor:
    """(2, 24, 24) labels: image 0 has class 3 (square) and class 5 (bar) on background with an
    ignored band; image 1 has class 1 only on background."""
    lab = torch.zeros(2, 24, 24, dtype=torch.int64)
    lab[0, 3:14, 3:14] = 3
    lab[0, 16:20, 2:22] = 5
    lab[0, :, 22:] = IGN
    lab[1, 5:19, 6:20] = 1
    lab[1, 0, :] = IGN
    return lab


@pytest.mark.parametrize("bw,dw", [(1.0, 1.0), (1.0, 3.0), (2.0, 0.5), (0.0, 1.0), (1.0, 0.0)])
def test_weights_have_unit_mean_per_class_and_zero_on_ignored(bw, dw):
    lab = _scene()
    w = decoupled_weights(lab, bw, dw)
    assert w.shape == lab.shape and w.dtype == torch.float32 and w.device == lab.device
    assert torch.all(w[lab == IGN] == 0)
    assert torch.all(w[lab != IGN] > 0) and torch.isfinite(w).all()
    for b in range(2):
        for c in lab[b].unique().tolist():
            if c == IGN:
                continue
            assert w[b][lab[b] == c].mean().item() == pytest.approx(1.0, rel=1e-5)


def test_equal_weights_are_uniform():
    # body + detail == mask, so body_weight == detail_weight gives raw weight 1 everywhere
    lab = _scene()
    w = decoupled_weights(lab, 2.0, 2.0)
    torch.testing.assert_close(w, (lab != IGN).float())


def test_detail_heavy_weights_favour_the_boundary_and_the_reverse():
    lab = torch.zeros(1, 41, 41, dtype=torch.int64)
    lab[0, 10:31, 10:31] = 2
    edge, centre = (0, 20, 30), (0, 20, 20)
    w = decoupled_weights(lab, body_weight=1.0, detail_weight=3.0)
    assert w[edge] > w[centre]
    w = decoupled_weights(lab, body_weight=3.0, detail_weight=1.0)
    assert w[edge] < w[centre]


def test_weights_hand_case_no_blur():
    # class 1 on 0 1 1 1 0: body sqrt(1/2), 1, sqrt(1/2); detail 1 - body.
    # body_weight 1, detail_weight 3: raw = 3 - 2 * body -> 3 - sqrt2, 1, 3 - sqrt2; mean-normalised.
    # Background pixels 0 and 4 are each 1 px from a zero: body 1 -> raw 1 -> weight 1.
    lab = torch.tensor([[[0, 1, 1, 1, 0, IGN]]])
    w = decoupled_weights(lab, 1.0, 3.0, blur=1)[0, 0].tolist()
    e = 3 - math.sqrt(2)
    mean = (2 * e + 1) / 3
    assert w == pytest.approx([1.0, e / mean, 1 / mean, e / mean, 1.0, 0.0], rel=1e-6)


def test_zero_raw_weight_gets_the_floor_and_single_pixel_regions_get_one():
    lab = torch.zeros(1, 9, 9, dtype=torch.int64)
    lab[0, 4, 4] = 7  # one pixel: body 1, detail 0
    w = decoupled_weights(lab, body_weight=0.0, detail_weight=1.0)
    assert w[0, 4, 4].item() == pytest.approx(1.0)  # all raw weights 0 -> floor -> uniform 1
    lab[0, 1:8, 1:8] = 7  # 7x7 block (blur off): the centre has body 1 -> raw 0 -> floor
    w = decoupled_weights(lab, body_weight=0.0, detail_weight=1.0, blur=1)
    assert 0 < w[0, 4, 4].item() < 0.01
    assert torch.isfinite(w).all()


def test_include_background_false_gives_bg_weight_one():
    lab = _scene()
    w = decoupled_weights(lab, 1.0, 3.0, include_background=False)
    assert torch.all(w[lab == 0] == 1)
    assert w[0][lab[0] == 3].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert not torch.all(w[0][lab[0] == 3] == 1)
    w_bg = decoupled_weights(lab, 1.0, 3.0, include_background=True)
    assert not torch.all(w_bg[lab == 0] == 1)


def test_invalid_weights_raise():
    lab = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError):
        decoupled_weights(lab, 0.0, 0.0)
    with pytest.raises(ValueError):
        decoupled_weights(lab, -1.0, 1.0)
    with pytest.raises(ValueError):
        decoupled_weights(lab[0], 1.0, 1.0)


# ---------------------------------------------------------------- weighted_balanced_ce_loss


def test_unit_weights_equal_balanced_ce_exactly():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 21, 9, 11, generator=g)
    target = torch.randint(0, 21, (2, 9, 11), generator=g)
    target[torch.rand(2, 9, 11, generator=g) < 0.3] = IGN
    target[0, :3] = 0
    ones = torch.ones(2, 9, 11)
    assert weighted_balanced_ce_loss(logits, target, ones).item() == balanced_ce_loss(logits, target).item()
    # equal constant weights change nothing either (weights cancel inside each part)
    got = weighted_balanced_ce_loss(logits, target, torch.full((2, 9, 11), 2.5)).item()
    assert got == pytest.approx(balanced_ce_loss(logits, target).item(), rel=1e-6)


def test_weighted_hand_case():
    # p0: (2, 0)  bg, weight 2      -> bg part = CE0 (one pixel)
    # p1: (0, 1)  fg, weight 3      -> CE1 = log(1 + e^-1)
    # p2: (0, -1) fg, weight 1      -> CE2 = log(1 + e^1)
    # p3: (5, -5) ignored, weight 100 (must not count)
    # L = CE0 + (3 * CE1 + 1 * CE2) / 4
    logits = torch.tensor([[2.0, 0.0, 0.0, 5.0], [0.0, 1.0, -1.0, -5.0]]).view(1, 2, 1, 4)
    target = torch.tensor([[[0, 1, 1, IGN]]])
    weight = torch.tensor([[[2.0, 3.0, 1.0, 100.0]]])
    ce0, ce1, ce2 = _ce([2.0, 0.0], 0), _ce([0.0, 1.0], 1), _ce([0.0, -1.0], 1)
    assert ce1 == pytest.approx(math.log(1 + math.exp(-1)))
    expected = ce0 + (3 * ce1 + ce2) / 4
    assert weighted_balanced_ce_loss(logits, target, weight).item() == pytest.approx(expected, rel=1e-6)
    # differs from the unweighted balanced CE: ce0 + (ce1 + ce2) / 2
    assert abs(expected - (ce0 + (ce1 + ce2) / 2)) > 0.1


def test_zero_total_weight_gives_zero_not_nan_and_finite_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 1], [2, IGN]]])
    loss = weighted_balanced_ce_loss(logits, target, torch.zeros(1, 2, 2))
    assert loss.item() == 0.0
    loss.backward()  # keeps the graph: a zero gradient, not an error
    assert torch.all(logits.grad == 0)
    # only the fg part has weight: the loss is the fg weighted mean alone
    logits2 = logits.detach().clone().requires_grad_(True)
    weight = torch.tensor([[[0.0, 1.0], [3.0, 0.0]]])
    loss = weighted_balanced_ce_loss(logits2, target, weight)
    lg = logits.detach()[0].permute(1, 2, 0)
    expected = (_ce(lg[0, 1].tolist(), 1) + 3 * _ce(lg[1, 0].tolist(), 2)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits2.grad).all() and logits2.grad.abs().sum() > 0
    assert torch.all(logits2.grad[0, :, 0, 0] == 0) and torch.all(logits2.grad[0, :, 1, 1] == 0)


def test_decoupled_weights_keep_bg_fg_balance_when_ce_is_constant():
    # uniform logits: CE = log C at every pixel; any mean-1 weights give log C per part
    lab = _scene()
    logits = torch.zeros(2, 6, 24, 24, requires_grad=True)
    w = decoupled_weights(lab, 1.0, 4.0)
    loss = weighted_balanced_ce_loss(logits, lab, w)
    assert loss.item() == pytest.approx(balanced_ce_loss(logits, lab).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
