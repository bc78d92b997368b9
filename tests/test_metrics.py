"""Tests for trainables/evaluation/metrics.py: confusion matrix, IoU, CAM threshold sweep, pseudo-label counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.evaluation.metrics import (
    CamThresholdSweep,
    cam_masks,
    confusion_matrix,
    mean_iou,
    per_class_iou,
    pseudo_label_quality,
)

IGN = 255


def test_confusion_matrix_and_iou_hand_case():
    # GT   = 0 0 0 1 / 1 2 2 255      (the 255 pixel is ignored, whatever is predicted there)
    # pred = 0 0 1 1 / 2 2 2 0
    # rows = GT, columns = prediction:
    #   GT 0 -> pred 0, 0, 1  => [2, 1, 0]
    #   GT 1 -> pred 1, 2     => [0, 1, 1]
    #   GT 2 -> pred 2, 2     => [0, 0, 2]
    # IoU_0 = TP 2 / (row 3 + col 2 - 2) = 2/3
    # IoU_1 = TP 1 / (row 2 + col 2 - 1) = 1/3
    # IoU_2 = TP 2 / (row 2 + col 3 - 2) = 2/3
    # mIoU  = (2/3 + 1/3 + 2/3) / 3 = 5/9
    gt = np.array([[0, 0, 0, 1], [1, 2, 2, IGN]])
    pred = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    conf = confusion_matrix(pred, gt, 3)
    assert conf.dtype == np.int64
    assert conf.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 2]]
    np.testing.assert_allclose(per_class_iou(conf), [2 / 3, 1 / 3, 2 / 3])
    assert mean_iou(conf) == pytest.approx(5 / 9)


def test_confusion_matrix_accepts_torch_tensors():
    gt = torch.tensor([[0, 0, 0, 1], [1, 2, 2, IGN]], dtype=torch.uint8)
    pred = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    assert confusion_matrix(pred, gt, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 2]]


def test_confusion_matrix_skips_ignore_and_out_of_range_targets():
    gt = np.array([0, 1, IGN, 7, -1])
    pred = np.array([0, 1, 1, 1, 1])
    assert confusion_matrix(pred, gt, 2).tolist() == [[1, 0], [0, 1]]
    # a custom ignore index
    assert confusion_matrix(np.array([0, 1]), np.array([0, 1]), 2, ignore_index=1).tolist() == [[1, 0], [0, 0]]


def _brute_force_iou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[float]:
    out = []
    for c in range(num_classes):
        inter = union = 0
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            if g == IGN:
                continue
            if p == c and g == c:
                inter += 1
            if p == c or g == c:
                union += 1
        out.append(inter / union if union else math.nan)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_per_class_iou_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_classes = 6  # values are drawn from 0..4, so class 5 is absent everywhere (NaN)
    gt = rng.integers(0, 5, size=(3, 9, 7))
    gt[rng.random(gt.shape) < 0.2] = IGN
    pred = rng.integers(0, 5, size=gt.shape)
    expected = _brute_force_iou(pred, gt, num_classes)
    got = per_class_iou(confusion_matrix(pred, gt, num_classes))
    np.testing.assert_allclose(got, expected, equal_nan=True)
    assert math.isnan(got[5])
    assert mean_iou(confusion_matrix(pred, gt, num_classes)) == pytest.approx(np.mean(expected[:5]))


def test_absent_class_is_nan_and_left_out_of_the_mean():
    # GT [0 0 1 1], pred [0 1 1 1]; class 2 appears nowhere.
    # IoU_0 = 1 / (2 + 1 - 1) = 1/2 ; IoU_1 = 2 / (2 + 3 - 2) = 2/3 ; mean = (1/2 + 2/3) / 2 = 7/12
    conf = confusion_matrix(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 3)
    iou = per_class_iou(conf)
    assert iou[0] == pytest.approx(1 / 2)
    assert iou[1] == pytest.approx(2 / 3)
    assert math.isnan(iou[2])
    assert mean_iou(conf) == pytest.approx(7 / 12)


def test_predicted_but_absent_class_scores_zero():
    # GT [0 0 0 0], pred [0 0 2 2]: IoU_0 = 2/4, class 1 nowhere (NaN), class 2 predicted only -> 0.
    conf = confusion_matrix(np.array([0, 0, 2, 2]), np.array([0, 0, 0, 0]), 3)
    iou = per_class_iou(conf)
    assert iou[0] == pytest.approx(0.5)
    assert math.isnan(iou[1])
    assert iou[2] == 0.0
    assert mean_iou(conf) == pytest.approx(0.25)


def test_mean_iou_of_empty_matrix_is_zero():
    assert mean_iou(np.zeros((3, 3), dtype=np.int64)) == 0.0
    assert mean_iou(confusion_matrix(np.array([1, 2]), np.array([IGN, IGN]), 3)) == 0.0


def _tiny_cams() -> torch.Tensor:
    # B=1, C_fg=2, 1x4 pixels.
    cams = torch.zeros(1, 2, 1, 4)
    cams[0, 0, 0] = torch.tensor([0.9, 0.3, 0.1, 0.0])
    cams[0, 1, 0] = torch.tensor([0.2, 0.6, 0.05, 0.0])
    return cams


def test_cam_masks_hand_case():
    # best fg score per pixel: [0.9, 0.6, 0.1, 0.0], its class: [1, 2, 1, (1)]
    masks = cam_masks(_tiny_cams(), [0.0, 0.25, 0.6, 0.7])
    assert masks.shape == (4, 1, 1, 4)
    assert masks[:, 0, 0].tolist() == [
        [1, 2, 1, 0],  # t = 0: every positive score beats it; the all-zero pixel ties -> background
        [1, 2, 0, 0],  # t = 0.25
        [1, 0, 0, 0],  # t = 0.6: a tie (0.6 vs 0.6) goes to the background
        [1, 0, 0, 0],  # t = 0.7
    ]


def test_cam_threshold_sweep_finds_known_best_threshold():
    # GT [1 0 0 0]: only t = 0.7 reproduces it exactly.
    #   t = 0.0  -> pred [1 2 1 0]: IoU_0 = 1/3, IoU_1 = 1/2, IoU_2 = 0    -> 5/18
    #   t = 0.25 -> pred [1 2 0 0]: IoU_0 = 2/3, IoU_1 = 1,   IoU_2 = 0    -> 5/9
    #   t = 0.7  -> pred [1 0 0 0]: IoU_0 = 1,   IoU_1 = 1,   IoU_2 = NaN  -> 1
    sweep = CamThresholdSweep(num_classes=3, thresholds=[0.0, 0.25, 0.7])
    target = torch.tensor([[[1, 0, 0, 0]]])
    sweep.update(_tiny_cams(), target)
    best, t, iou = sweep.best()
    assert t == 0.7
    assert best == pytest.approx(1.0)
    np.testing.assert_allclose(iou, [1.0, 1.0, np.nan], equal_nan=True)
    assert [mean_iou(c) for c in sweep.conf] == pytest.approx([5 / 18, 5 / 9, 1.0])
    # a second batch accumulates into the same matrices
    before = sweep.conf.copy()
    sweep.update(_tiny_cams(), target)
    np.testing.assert_array_equal(sweep.conf, 2 * before)


def test_cam_threshold_sweep_default_thresholds():
    sweep = CamThresholdSweep(num_classes=2)
    assert sweep.thresholds == pytest.approx([round(0.05 * i, 2) for i in range(13)])
    assert sweep.conf.shape == (13, 2, 2)


def test_pseudo_label_quality_counts():
    pseudo = torch.tensor([0, 1, IGN, 2, 1, IGN, 0])
    gt = torch.tensor([0, 2, 1, IGN, 1, IGN, 0])
    # known GT: pixels 0, 1, 2, 4, 6 -> 5
    # reliable (pseudo != 255) with known GT: pixels 0, 1, 4, 6 -> 4 (pixel 3 has no GT)
    # correct among them: 0 (0 == 0), 4 (1 == 1), 6 (0 == 0) -> 3; pixel 1 is wrong (1 vs 2)
    assert pseudo_label_quality(pseudo, gt) == (4, 3, 5)


def test_pseudo_label_quality_all_ignored():
    pseudo = torch.full((2, 3), IGN)
    gt = torch.tensor([[0, 1, 2], [IGN, IGN, 1]])
    assert pseudo_label_quality(pseudo, gt) == (0, 0, 4)


def test_cam_threshold_sweep_equals_masking_once_per_threshold():
    # Random CAMs with exact ties at thresholds (0.3 and 0.0) and ignored pixels: the one-pass
    # count must give, for every threshold, the confusion matrix of cam_masks at that threshold.
    torch.manual_seed(0)
    cams = torch.rand(3, 4, 9, 7)
    cams[0, :, :2] = 0.0
    cams[1, :, 0] = 0.3
    gt = torch.randint(0, 5, (3, 9, 7))
    gt[2, :3] = IGN
    thresholds = [0.0, 0.1, 0.3, 0.5, 0.8]
    sweep = CamThresholdSweep(5, thresholds)
    sweep.update(cams, gt)
    sweep.update(cams, gt)
    expected = np.stack([confusion_matrix(m, gt, 5) for m in cam_masks(cams, thresholds)])
    np.testing.assert_array_equal(sweep.conf, 2 * expected)
