"""Evaluation: per-class IoU of the seg head's argmax, the optional test-time dense CRF, and CAM
mIoU, on a hand-made dataset with a stub network whose outputs are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.data.dataset import SegmentationDataset, Split
from trainables.methods.single_stage import SingleStageSettings, evaluate


def _dataset() -> SegmentationDataset:
    """Two 32x32 images: a bright square (class 1) and a bright disc (class 2) on a dark floor."""
    images, masks = [], []
    yy, xx = np.mgrid[:32, :32]
    for shape in ("square", "disc"):
        m = np.zeros((32, 32), np.uint8)
        if shape == "square":
            m[8:24, 6:22] = 1
        else:
            m[(yy - 16) ** 2 + (xx - 16) ** 2 <= 81] = 2
        img = np.full((32, 32, 3), 20, np.uint8)
        img[m > 0] = (230, 200, 40)
        images.append(img)
        masks.append(m)
    labels = np.array([[1, 0], [0, 1]], np.float32)
    split = Split(ids=["a", "b"], images=images, masks=masks, labels=labels)
    return SegmentationDataset("toy", ["background", "square", "disc"], train=split, val=split)


class CoarseOracle(nn.Module):
    """Seg logits = ground truth block-averaged to stride 8 (blurry edges once upsampled),
    CAMs = the foreground channels of the same maps."""

    def __init__(self, masks: list[np.ndarray], num_classes: int):
        super().__init__()
        gt = torch.from_numpy(np.stack(masks)).long()
        onehot = F.one_hot(gt, num_classes).permute(0, 3, 1, 2).float()
        self.register_buffer("coarse", F.avg_pool2d(onehot, 8) * 4.0)

    def forward(self, x):
        seg = self.coarse[: len(x)]
        return {"seg": seg, "cam_raw": seg[:, 1:], "logits": seg[:, 1:].mean(dim=(2, 3))}


def _cfg(**eval_overrides) -> dict:
    return SingleStageSettings.resolve({"eval": dict(eval_overrides)})


def test_evaluate_reports_per_class_iou_of_the_argmax():
    ds = _dataset()
    model = CoarseOracle(ds.val.masks, ds.num_classes)
    m = evaluate(model, ds, _cfg(), torch.device("cpu"))
    # Recompute by hand: upsample the coarse logits, argmax, count.
    seg = F.interpolate(model.coarse, size=(32, 32), mode="bilinear", align_corners=False).argmax(1).numpy()
    gt = np.stack(ds.val.masks)
    ious = [((seg == c) & (gt == c)).sum() / ((seg == c) | (gt == c)).sum() for c in range(3)]
    assert m["val/miou"] == pytest.approx(np.mean(ious))
    assert m["val/iou/square"] == pytest.approx(ious[1])
    assert "val/miou_nocrf" not in m
    # The model's own CAMs, evaluated as the CAM methods are (threshold chosen on train).
    assert 0.0 <= m["train/cam_threshold"] <= 0.6 and m["val/cam_miou"] > 0.5 and m["train/cam_miou"] > 0.5


def test_test_time_crf_snaps_blurry_predictions_to_image_edges():
    ds = _dataset()
    model = CoarseOracle(ds.val.masks, ds.num_classes)
    raw = evaluate(model, ds, _cfg(), torch.device("cpu"))
    refined = evaluate(model, ds, _cfg(crf=True), torch.device("cpu"))
    assert refined["val/miou_nocrf"] == pytest.approx(raw["val/miou"])
    # Objects are uniformly coloured against a dark floor: the bilateral term recovers the edges.
    assert refined["val/miou"] > raw["val/miou"] + 0.05
    assert refined["val/miou"] > 0.95
    assert refined["val/cam_miou"] == pytest.approx(raw["val/cam_miou"])  # CAMs are never CRF'd


def test_segment_probs_averages_scales_and_mirrors():
    import torch
    import torch.nn.functional as F

    from trainables.methods.single_stage import segment_probs

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 12)
    weight = torch.randn(4, 3, 1, 3)  # a 1x3 kernel: not mirror-symmetric, so flips matter

    def model(z):
        return {"seg": F.conv2d(z, weight, padding=(0, 1))}

    def probs(z):
        return torch.softmax(F.interpolate(model(z)["seg"], size=(8, 12), mode="bilinear", align_corners=False), 1)

    torch.testing.assert_close(segment_probs(model, x), probs(x))
    mirrored = probs(x.flip(-1)).flip(-1)
    assert not torch.allclose(mirrored, probs(x), atol=1e-3)
    torch.testing.assert_close(segment_probs(model, x, flip=True), (probs(x) + mirrored) / 2)
    half = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    torch.testing.assert_close(segment_probs(model, x, scales=[1.0, 0.5]), (probs(x) + probs(half)) / 2)
    both = segment_probs(model, x, scales=[1.0, 0.5], flip=True)
    torch.testing.assert_close(both.sum(1), torch.ones(2, 8, 12))


def test_evaluate_uses_the_flip_passes():
    # The oracle ignores its input, so its mirrored pass is wrong for the off-centre square: the
    # averaged prediction must lose IoU on it, which shows the flip passes reach the metric.
    ds = _dataset()
    model = CoarseOracle(ds.val.masks, ds.num_classes)
    raw = evaluate(model, ds, _cfg(), torch.device("cpu"))
    flipped = evaluate(model, ds, _cfg(flip=True), torch.device("cpu"))
    assert flipped["val/iou/square"] < raw["val/iou/square"] - 0.05
    assert flipped["val/iou/disc"] == pytest.approx(raw["val/iou/disc"], abs=0.02)  # centred disc
