"""Tests for trainables/losses/seam.py: SEAM's max_norm, PCM, ER and ECR losses (hand-made maps)."""

from __future__ import annotations

import pytest
import torch

from trainables.losses.seam import (
    PixelCorrelation,
    add_background,
    align_corners_for,
    downscale,
    ecr_loss,
    ecr_target,
    er_loss,
    max_norm,
    ohem_mean,
    pcm_input,
)

EPS = 1e-5


def pixels(*values: list[float]) -> torch.Tensor:
    """(1, C, 1, P) map from P per-pixel channel vectors."""
    t = torch.tensor(values)  # (P, C)
    return t.T.reshape(1, t.shape[1], 1, t.shape[0]).contiguous()


def test_max_norm_hand_values():
    p = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]], [[-2.0, 1.0], [3.0, 5.0]]]])
    out = max_norm(p)
    # channel 0: min 1, max 5; channel 1: ReLU first -> min 0, max 5
    ch0 = torch.tensor([[0.0, 1 - EPS], [2 - EPS, 4 - EPS]]) / (4 + EPS)
    ch1 = torch.tensor([[0.0, 1 - EPS], [3 - EPS, 5 - EPS]]) / (5 + EPS)
    torch.testing.assert_close(out[0], torch.stack([ch0, ch1]), atol=1e-7, rtol=0)


def test_add_background_two_classes():
    fg = torch.tensor([[[[0.2, 0.9], [0.0, 0.5]], [[0.6, 0.1], [0.0, 0.5]]]])
    out = add_background(fg)
    assert out.shape == (1, 3, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.4, 0.1], [1.0, 0.5]]))
    torch.testing.assert_close(out[:, 1:], fg)


def test_pcm_input_keeps_argmax_foreground_and_background():
    raw = torch.tensor([[[[2.0, -1.0], [1.0, 0.0]], [[1.0, 4.0], [3.0, 0.0]]]], requires_grad=True)
    out = pcm_input(raw)
    assert out.shape == (1, 3, 2, 2) and not out.requires_grad
    a, b = 1.0 / (2 + EPS), 1.0 / (4 + EPS)  # per-channel scales: division by max + eps
    expected = torch.tensor([
        [[1 - 2 * a, 1 - 4 * b], [1 - 3 * b, 1.0]],  # background = 1 - max foreground
        [[2 * a, 0.0], [0.0, 0.0]],  # class A wins only at (0, 0); (1, 1) is an all-zero tie
        [[0.0, 4 * b], [3 * b, 0.0]],  # class B wins at (0, 1) and (1, 0), its (0,0) 0.25 zeroed
    ])
    torch.testing.assert_close(out[0], expected, atol=1e-7, rtol=0)


def test_er_loss_hand_value_with_absent_class():
    cam_o = torch.zeros(1, 2, 2, 2)
    cam_t = torch.zeros(1, 2, 2, 2)  # class 1 absent: zero on both sides
    cam_o[0, 0] = torch.tensor([[1.0, 0.5], [0.0, 0.2]])
    cam_t[0, 0] = torch.tensor([[0.5, 0.5], [0.25, 0.0]])
    # |diff| sums to 0.5 + 0 + 0.25 + 0.2 = 0.95 over 2 channels x 4 pixels
    assert er_loss(cam_o, cam_t).item() == pytest.approx(0.95 / 8, abs=1e-7)
    with pytest.raises(ValueError, match="seam.er_loss"):
        er_loss(cam_o, cam_t[:, :1])


def test_ohem_mean_top_k_batch_and_minimum_k():
    one = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7]])
    assert ohem_mean(one, 0.4).item() == pytest.approx(0.8, abs=1e-7)  # k = 2
    two = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7], [0.0, 0.2, 0.0, 0.4, 0.0]]).reshape(2, 1, 1, 5)
    assert ohem_mean(two, 0.4).item() == pytest.approx((0.8 + 0.3) / 2, abs=1e-7)
    assert ohem_mean(two, 0.1).item() == pytest.approx((0.9 + 0.4) / 2, abs=1e-7)  # int(0.5)=0 -> k=1
    assert ohem_mean(two, 1.0).item() == pytest.approx((2.5 / 5 + 0.6 / 5) / 2, abs=1e-7)
    with pytest.raises(ValueError, match="seam.ohem_ratio"):
        ohem_mean(two, 0.0)


def test_ecr_target_both_modes_do_not_modify_input():
    x = pixels([0.3, 0.6, 0.7], [0.9, 0.1, 0.05])  # (1, 3, 1, 2), channel 0 = background
    before = x.clone()
    onehot = ecr_target(x, "onehot")
    torch.testing.assert_close(onehot, pixels([0.0, 0.0, 1.0], [1.0, 0.0, 0.0]), atol=0, rtol=0)
    kept = ecr_target(x, "max")
    torch.testing.assert_close(kept, pixels([0.3, 0.0, 0.7], [0.9, 0.1, 0.0]), atol=0, rtol=0)
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match=r"seam\.ecr_target.*'bogus'"):
        ecr_target(x, "bogus")


@pytest.mark.parametrize("mode, expected", [("onehot", 2.2 / 3), ("max", 1.7 / 3)])
def test_ecr_loss_hand_value_and_gradients(mode: str, expected: float):
    cam_t = pixels([0.2, 0.8, 0.5], [0.6, 0.4, 0.1]).requires_grad_()
    rev_o = pixels([0.1, 0.5, 0.3], [0.7, 0.2, 0.0]).requires_grad_()
    cam_o = pixels([0.9, 0.05, 0.1], [0.3, 0.2, 0.6]).requires_grad_()
    rev_t = pixels([0.5, 0.2, 0.0], [0.4, 0.1, 0.9]).requires_grad_()
    # 6 entries, ratio 0.5 -> k = 3. onehot: top3 of |target - rev| = (.5,.3,.3) and (.5,.4,.2);
    # max: (.3,.3,.2) and (.4,.3,.2)
    loss = ecr_loss(cam_t, rev_o, cam_o, rev_t, ratio=0.5, mode=mode)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert cam_t.grad is None and cam_o.grad is None
    for rev in (rev_o, rev_t):
        assert rev.grad is not None and torch.isfinite(rev.grad).all() and rev.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="seam.ecr_loss"):
        ecr_loss(cam_t, rev_o[:, :2], cam_o, rev_t)


def _pcm_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, 16, 16, generator=g)
    mids = [torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g)]
    cam = pcm_input(torch.randn(2, 2, 4, 4, generator=g))
    return cam, image, mids


def test_pcm_shape_and_affinity_columns_sum_to_one():
    torch.manual_seed(0)
    pcm = PixelCorrelation(mid_channels=(5, 6), proj_channels=(4, 7))
    assert pcm.fuse.out_channels == 3 + 4 + 7
    cam, image, mids = _pcm_inputs()  # mids at 8x8 and 4x4, image 16x16, CAM 4x4
    out = pcm(cam, image, mids)
    assert out.shape == (2, 3, 4, 4)
    aff = pcm.affinity(image, mids, (4, 4))
    assert aff.shape == (2, 16, 16) and (aff >= 0).all()
    torch.testing.assert_close(aff.sum(dim=1), torch.ones(2, 16), atol=1e-4, rtol=0)
    assert not torch.allclose(aff, torch.full_like(aff, 1 / 16), atol=1e-3)  # not trivially uniform
    with pytest.raises(ValueError, match="seam.pcm"):
        pcm(cam, image, mids[:1])


def test_pcm_identical_features_give_spatial_mean():
    torch.manual_seed(1)
    pcm = PixelCorrelation(mid_channels=(5, 6), proj_channels=(4, 4), out_channels=8)
    cam, _, _ = _pcm_inputs()
    image = torch.randn(2, 3, 1, 1).expand(2, 3, 16, 16)
    mids = [torch.rand(2, 5, 1, 1).expand(2, 5, 8, 8), torch.rand(2, 6, 1, 1).expand(2, 6, 4, 4)]
    out = pcm(cam, image, mids)
    expected = cam.mean(dim=(2, 3), keepdim=True).expand_as(cam)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_pcm_mid_features_detached_convs_trained():
    torch.manual_seed(2)
    pcm = PixelCorrelation(mid_channels=(5, 6), proj_channels=(4, 4))
    cam, image, mids = _pcm_inputs()
    mids = [m.requires_grad_() for m in mids]
    out = pcm(cam, image, mids)
    (out * torch.randn_like(out)).sum().backward()
    assert all(m.grad is None for m in mids)
    for conv in (*pcm.proj, pcm.fuse):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_downscale_size_and_values():
    x = torch.arange(70.0).reshape(1, 1, 10, 7).expand(2, 3, 10, 7)
    assert downscale(x, 0.3).shape == (2, 3, round(10 * 0.3), round(7 * 0.3))  # (3, 2)
    assert downscale(torch.ones(1, 2, 2, 2), 0.1).shape == (1, 2, 1, 1)
    torch.testing.assert_close(downscale(torch.full((1, 1, 6, 6), 0.5), 0.5), torch.full((1, 1, 3, 3), 0.5))
    with pytest.raises(ValueError, match="seam.downscale"):
        downscale(x, 0.0)


RAMP_2X2 = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # value = 2 * row + column
RAMP_4X4 = torch.arange(16.0).reshape(1, 1, 4, 4)  # value = 4 * row + column


def test_downscale_16x20_at_0_3_floors_in_code_mode_and_rounds_in_project_mode():
    x = torch.zeros(1, 1, 16, 20)
    assert downscale(x, 0.3).shape[-2:] == (5, 6)  # round(4.8) = 5, round(6.0) = 6
    assert downscale(x, 0.3, "project").shape[-2:] == (5, 6)
    assert downscale(x, 0.3, "code").shape[-2:] == (4, 6)  # floor(4.8) = 4, as F.interpolate(scale_factor=0.3)
    assert downscale(torch.zeros(1, 1, 2, 2), 0.1, "code").shape[-2:] == (1, 1)  # floor 0 -> at least 1


def test_downscale_code_mode_aligns_corners():
    # 4x4 -> 2x2. align_corners=True samples rows/columns 0 and 3: the corners 0, 3, 12, 15.
    # align_corners=False samples 0.5 and 2.5: 2x2 means, e.g. (0 + 1 + 4 + 5) / 4 = 2.5.
    torch.testing.assert_close(downscale(RAMP_4X4, 0.5, "code"), torch.tensor([[[[0.0, 3.0], [12.0, 15.0]]]]))
    torch.testing.assert_close(downscale(RAMP_4X4, 0.5), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    # 2x2 -> 4x4 (factor 2). align_corners=True: positions 0, 1/3, 2/3, 1, so row 0 is
    # 0, 1/3, 2/3, 1 and row 3 is 2, 7/3, 8/3, 3. align_corners=False: positions -1/4 (clamped
    # to 0), 1/4, 3/4, 5/4 (clamped to 1), so row 0 is 0, 0.25, 0.75, 1.
    up_code, up_project = downscale(RAMP_2X2, 2.0, "code"), downscale(RAMP_2X2, 2.0)
    torch.testing.assert_close(up_code[0, 0, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    torch.testing.assert_close(up_code[0, 0, 3], torch.tensor([2.0, 7 / 3, 8 / 3, 3.0]))
    torch.testing.assert_close(up_project[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_resample_mode_is_checked():
    assert align_corners_for("code") is True and align_corners_for("project") is False
    with pytest.raises(ValueError, match=r"seam\.resample.*'floor'"):
        downscale(RAMP_4X4, 0.5, "floor")


@pytest.mark.parametrize("resample, expected", [("code", [[0.0, 3.0], [12.0, 15.0]]),
                                                ("project", [[2.5, 4.5], [10.5, 12.5]])])
def test_pcm_resizes_the_image_to_the_cam_grid_per_resample_mode(resample: str, expected):
    pcm = PixelCorrelation(mid_channels=(5, 6), proj_channels=(4, 4), resample=resample)
    with torch.no_grad():
        pcm.fuse.weight.copy_(torch.eye(11)[:, :, None, None])  # features = the fused input itself
    image = RAMP_4X4.expand(1, 3, 4, 4)
    mids = [torch.zeros(1, 5, 2, 2), torch.zeros(1, 6, 2, 2)]
    # the image's 4x4 -> 2x2 resize, as in test_downscale_code_mode_aligns_corners
    f = pcm.features(image, mids, (2, 2))
    torch.testing.assert_close(f[0, :3], torch.tensor(expected).expand(3, 2, 2))
