"""Tests for trainables/pseudo/cam.py: CAM normalisation, multi-scale CAMs, background score."""

from __future__ import annotations

import pytest
import torch

from trainables.pseudo.cam import background_score, multiscale_cams, normalise_cams


def test_normalise_cams_relu_absent_class_and_max():
    raw = torch.tensor([[
        [[2.0, -1.0], [1.0, 0.5]],   # class 0: present, max 2
        [[3.0, 3.0], [3.0, 3.0]],    # class 1: absent -> zeroed
        [[-1.0, 0.25], [-2.0, 1.0]],  # class 2: present, max 1 (negatives clipped)
    ]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    out = normalise_cams(raw, labels, (2, 2))
    assert out.shape == (1, 3, 2, 2)
    expected = torch.tensor([
        [[2.0, 0.0], [1.0, 0.5]],
        [[0.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.25], [0.0, 1.0]],
    ]) / torch.tensor([2.0, 1.0, 1.0]).view(3, 1, 1)
    torch.testing.assert_close(out[0], expected, atol=1e-4, rtol=0)
    assert out.min() >= 0.0
    assert out[0, 0].max().item() == pytest.approx(1.0, abs=1e-4)
    assert out[0, 0].max().item() <= 1.0
    assert out[0, 1].abs().sum().item() == 0.0


def test_normalise_cams_all_zero_class_stays_zero_not_nan():
    raw = torch.full((1, 2, 2, 2), -1.0)
    out = normalise_cams(raw, torch.tensor([[1.0, 1.0]]), (2, 2))
    assert torch.isfinite(out).all()
    assert out.abs().sum().item() == 0.0


def test_normalise_cams_upsamples_to_size():
    raw = torch.tensor([[[[0.0, 4.0], [4.0, 0.0]]]])  # B=1, C=1, 2x2
    out = normalise_cams(raw, torch.tensor([[1.0]]), (4, 6))
    assert out.shape == (1, 1, 4, 6)
    up = torch.nn.functional.interpolate(raw, size=(4, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, up / (up.max() + 1e-5))
    assert out.max().item() == pytest.approx(1.0, abs=1e-4)
    # bilinear, not nearest: intermediate values appear between the 0s and the 4s
    assert len(torch.unique(out)) > 2


def test_normalise_cams_labels_are_per_image():
    raw = torch.ones(2, 2, 1, 1)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = normalise_cams(raw, labels, (1, 1))[:, :, 0, 0]
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), atol=1e-4, rtol=0)


def test_background_score_hand_values():
    cams = torch.tensor([[[0.5, 0.1]], [[0.2, 0.7]]])  # (C=2, H=1, W=2)
    # max CAM per pixel: [0.5, 0.7] -> (1 - m)^2 = [0.25, 0.09]
    torch.testing.assert_close(background_score(cams, 2.0), torch.tensor([[0.25, 0.09]]))
    # alpha = 1: plain 1 - max
    torch.testing.assert_close(background_score(cams, 1.0), torch.tensor([[0.5, 0.3]]))
    # batched input (B, C, H, W) reduces over the class dimension, values above 1 clip to 0
    batched = torch.tensor([[[[1.5]], [[0.0]]]])
    assert background_score(batched, 4.0).shape == (1, 1, 1)
    assert background_score(batched, 4.0).item() == 0.0


def test_multiscale_cams_scale_1_equals_normalise_of_passed_cam():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 8, 8)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    cam_at_1 = torch.randn(2, 3, 4, 4, requires_grad=True)

    def never_called(x):
        raise AssertionError("cam_fn must not run at scale 1 when cam_at_1 is given")

    out = multiscale_cams(never_called, image, labels, [1], cam_at_1=cam_at_1)
    torch.testing.assert_close(out, normalise_cams(cam_at_1.detach(), labels, (8, 8)))
    assert not out.requires_grad  # the passed-in CAM is detached


def test_multiscale_cams_scale_1_without_passed_cam_runs_cam_fn():
    image = torch.zeros(1, 3, 4, 4)
    raw = torch.arange(16.0).view(1, 1, 4, 4)
    out = multiscale_cams(lambda x: raw, image, torch.tensor([[1.0]]), [1])
    torch.testing.assert_close(out, normalise_cams(raw, torch.tensor([[1.0]]), (4, 4)))


def test_multiscale_cams_sums_scales_before_normalising():
    image = torch.zeros(1, 3, 4, 4)
    labels = torch.tensor([[1.0, 1.0]])
    seen = []

    def cam_fn(x):
        seen.append(tuple(x.shape))
        assert not torch.is_grad_enabled()
        h, w = x.shape[-2:]
        cam = torch.zeros(1, 2, h, w)
        if h == 4:  # full scale: class 0 peaks at one pixel, class 1 is negative (ReLU -> 0)
            cam[0, 0, 1, 2] = 2.0
            cam[0, 1] = -5.0
        else:  # half scale: class 0 is a constant 1, class 1 a constant 3
            cam[0, 0] = 1.0
            cam[0, 1] = 3.0
        return cam

    out = multiscale_cams(cam_fn, image, labels, [1, 0.5])
    assert seen == [(1, 3, 4, 4), (1, 3, 2, 2)]
    assert out.shape == (1, 2, 4, 4)
    # class 0: summed map is 1 everywhere and 2 + 1 = 3 at the peak -> normalised 1/3 and 1.
    # (averaging per-scale normalised maps would give 1/2 and 1 instead.)
    expected0 = torch.full((4, 4), 1.0 / 3.0)
    expected0[1, 2] = 1.0
    torch.testing.assert_close(out[0, 0], expected0, atol=1e-4, rtol=0)
    # class 1: ReLU'd full-scale map is 0, the half-scale constant 3 upsampled -> 1 everywhere.
    torch.testing.assert_close(out[0, 1], torch.ones(4, 4), atol=1e-4, rtol=0)


def test_multiscale_cams_uses_passed_cam_at_1_and_cam_fn_elsewhere():
    image = torch.zeros(1, 3, 4, 4)
    labels = torch.tensor([[1.0]])
    cam_at_1 = torch.zeros(1, 1, 4, 4)
    cam_at_1[0, 0, 0, 0] = 1.0
    calls = []

    def cam_fn(x):
        calls.append(tuple(x.shape[-2:]))
        return torch.full((1, 1, x.shape[-2], x.shape[-1]), 1.0)

    out = multiscale_cams(cam_fn, image, labels, [1, 0.5], cam_at_1=cam_at_1)
    assert calls == [(2, 2)]
    expected = torch.full((4, 4), 0.5)
    expected[0, 0] = 1.0
    torch.testing.assert_close(out[0, 0], expected, atol=1e-4, rtol=0)
