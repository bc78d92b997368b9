"""Fair CAM evaluation: the background threshold is chosen on train and applied to val unchanged;
hand-made data where train and val would pick different thresholds shows which one is used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.pseudo.cam import multiscale_cams
from trainables.evaluation.cam_eval import (as_segmentation_metrics, refined_cam_masks, evaluate_cams, threshold_grid,
                                 train_subset)
from trainables.methods.cam import CamMethodSettings
from trainables.methods.registry import METHODS
from trainables.settings.problems import first_problem
from trainables.data.dataset import IMAGENET_MEAN, IMAGENET_STD, SegmentationDataset, Split
from trainables.settings.sections import RefinerSettings


def red_channel_cam(x: torch.Tensor) -> torch.Tensor:
    """A stub network whose single CAM is the image's red channel in [0, 1]."""
    return x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]


def _split(halo_is_object: bool) -> Split:
    """One 8x8 image: a core of CAM 1.0 (object), a halo of CAM 0.3 (object only if asked),
    the rest 0."""
    red = np.zeros((8, 8), np.float32)
    red[2:6, 2:6] = 0.3
    red[3:5, 3:5] = 1.0
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = np.round(red * 255)
    mask = np.zeros((8, 8), np.uint8)
    mask[(red >= 0.99) | ((red > 0.2) & halo_is_object)] = 1
    return Split(ids=["a"], images=[img], labels=np.array([[1.0]], np.float32), masks=[mask])


def _cfg(**eval_overrides) -> dict:
    return CamMethodSettings.resolve({"eval": {"cam_threshold_step": 0.05, **eval_overrides}})


def test_threshold_is_chosen_on_train_and_applied_to_val():
    # Train says the halo is background (best t >= 0.3); val says it is object (best t < 0.3).
    ds = SegmentationDataset("toy", ["background", "thing"], train=_split(False), val=_split(True))
    m = evaluate_cams(red_channel_cam, ds, _cfg(), torch.device("cpu"))
    assert m["train/cam_threshold"] == pytest.approx(0.3)  # the lowest t that drops the halo
    assert m["train/cam_miou"] == pytest.approx(1.0)
    # Val at t = 0.3: the 4 core pixels are found, the 12 halo pixels missed.
    # background IoU = 48 / 60, object IoU = 4 / 16.
    assert m["val/cam_miou"] == pytest.approx((48 / 60 + 4 / 16) / 2, abs=1e-6)
    assert m["val/cam_iou/thing"] == pytest.approx(0.25, abs=1e-6)
    # Chosen on val it would have been perfect: the metric would then overstate the method.
    assert m["val/cam_miou"] < 0.6


def test_without_train_masks_the_configured_threshold_is_used():
    train = _split(False)
    train.masks = None
    ds = SegmentationDataset("toy", ["background", "thing"], train=train, val=_split(True))
    m = evaluate_cams(red_channel_cam, ds, _cfg(cam_threshold=0.1), torch.device("cpu"))
    assert "train/cam_miou" not in m and m["train/cam_threshold"] == 0.1
    assert m["val/cam_miou"] == pytest.approx(1.0)


def test_a_fixed_threshold_when_asked():
    ds = SegmentationDataset("toy", ["background", "thing"], train=_split(False), val=_split(True))
    m = evaluate_cams(red_channel_cam, ds, _cfg(cam_threshold_source="fixed", cam_threshold=0.1), torch.device("cpu"))
    assert "train/cam_miou" not in m and m["train/cam_threshold"] == 0.1 and m["val/cam_miou"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cam_threshold_source"):
        evaluate_cams(red_channel_cam, ds, _cfg(cam_threshold_source="val"), torch.device("cpu"))


def test_segmentation_metrics_come_from_the_crf_masks_when_it_ran():
    cam = {"val/cam_miou": 0.5, "val/cam_iou/a": 0.4, "val/cam_crf_miou": 0.6, "val/cam_crf_iou/a": 0.7,
           "train/cam_miou": 0.55}
    out = as_segmentation_metrics(cam)
    assert out["val/miou"] == 0.6 and out["val/miou_nocrf"] == 0.5 and out["val/iou/a"] == 0.7
    plain = as_segmentation_metrics({"val/cam_miou": 0.5, "val/cam_iou/a": 0.4})
    assert plain["val/miou"] == 0.5 and plain["val/iou/a"] == 0.4 and "val/miou_nocrf" not in plain


@pytest.mark.parametrize("refiner", ["densecrf", "par"])
def test_refined_cam_masks_use_only_present_classes_and_map_them_back(refiner):
    rgb = np.zeros((2, 6, 6, 3), np.uint8)
    rgb[:, :, 3:] = 255
    cams = torch.zeros(2, 3, 6, 6)
    cams[0, 2, :, 3:] = 0.9  # image 0: class index 2 (label 3) on the bright half
    cams[:, 0] = 0.8  # class 0 is absent from both image labels: must never appear
    cams[1, 1, :, :3] = 0.9  # image 1: class index 1 (label 2) on the dark half
    labels = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    masks = refined_cam_masks(rgb, cams, labels, 0.3, RefinerSettings(refiner=refiner, par_scale=1.0))
    assert masks.shape == (2, 6, 6)
    assert (masks[0, :, 3:] == 3).all() and (masks[0, :, :3] == 0).all()
    assert (masks[1, :, :3] == 2).all() and (masks[1, :, 3:] == 0).all()


@pytest.mark.parametrize("refiner", ["densecrf", "par"])
def test_refiner_changes_val_metrics_through_evaluate_cams(refiner):
    ds = SegmentationDataset("toy", ["background", "thing"], train=_split(False), val=_split(True))
    cfg = _cfg(crf=True)
    cfg["eval"]["refiner"] = refiner
    m = evaluate_cams(red_channel_cam, ds, cfg, torch.device("cpu"))
    assert "val/cam_crf_miou" in m and "val/cam_crf_iou/thing" in m
    assert 0.0 <= m["val/cam_crf_miou"] <= 1.0


def test_crf_changes_val_metrics_through_evaluate_cams():
    ds = SegmentationDataset("toy", ["background", "thing"], train=_split(False), val=_split(True))
    m = evaluate_cams(red_channel_cam, ds, _cfg(crf=True), torch.device("cpu"))
    assert "val/cam_crf_miou" in m and "val/cam_crf_iou/thing" in m
    assert 0.0 <= m["val/cam_crf_miou"] <= 1.0


def test_threshold_grid_and_train_subset():
    assert threshold_grid(0.02, 0.6)[-1] == pytest.approx(0.6) and len(threshold_grid(0.02, 0.6)) == 31
    with pytest.raises(ValueError, match="cam_threshold_step"):
        threshold_grid(0.0, 0.6)
    assert train_subset(100, 0) is None and train_subset(10, 50) is None
    a = train_subset(100, 20)
    assert len(a) == 20 and len(set(a)) == 20 and (np.diff(a) > 0).all()
    assert (a == train_subset(100, 20)).all()


def test_multiscale_cams_flip_averages_the_mirrored_pass():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 6)
    weight = torch.randn(2, 3, 1, 3)

    def cam_fn(z):
        return torch.nn.functional.conv2d(z, weight, padding=(0, 1))

    labels = torch.ones(1, 2)
    raw = torch.relu(cam_fn(x)) + torch.relu(cam_fn(x.flip(-1))).flip(-1)
    expected = raw / (raw.amax(dim=(2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(multiscale_cams(cam_fn, x, labels, [1.0], flip=True), expected)
    assert not torch.allclose(multiscale_cams(cam_fn, x, labels, [1.0]), expected, atol=1e-3)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_checks_the_cam_evaluation_settings(method):
    from pydantic import ValidationError

    m = METHODS[method]
    m.resolve(m.defaults)
    for key, value in [("eval.cam_threshold_source", "val"), ("eval.cam_threshold_step", 0.0),
                       ("eval.cam_threshold", 1.5)]:
        with pytest.raises(ValidationError) as e:
            m.resolve({key: value})
        assert first_problem(e.value).key == key
