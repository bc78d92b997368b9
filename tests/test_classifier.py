"""The CAM methods' shared loop: rounds, start weights, resume, and one tiny trial of each method
end to end (CAM, SEAM, SC-CAM) through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.methods.classifier import CAM_METHOD_DEFAULTS, round_epochs, train_cam_method
from trainables.settings.tree import merge
from trainables.data.registry import load_dataset
from trainables.methods.registry import METHODS
from trainables.loop.pretrain import classification_pretrain
from trainables.methods.single_stage import Reporter
from trainables.loop.trial import load_start_weights

TINY = {"data": {"num_train": 16, "num_val": 6, "image_size": 32}, "model": {"width": 16},
        "pretrain": {"epochs": 1, "batch_size": 8}, "train": {"epochs": 1, "batch_size": 8, "crop": 32},
        "eval": {"batch_size": 8}}


def test_round_epochs_split_the_budget():
    assert round_epochs(6, 3) == [2, 2, 2] and round_epochs(7, 3) == [3, 2, 2] and round_epochs(4, 1) == [4]
    with pytest.raises(ValueError, match="rounds"):
        round_epochs(2, 3)


@pytest.mark.parametrize("method", ["cam", "seam", "sccam"])
def test_each_cam_method_runs_one_tiny_epoch_end_to_end(method):
    extra = {"sccam": {"k": 2, "rounds": 1}} if method == "sccam" else {"seam": {"scale": 0.5}} if method == "seam" else {}
    hist = METHODS[method].train(merge(TINY, extra))
    last = hist[-1]
    assert last["epoch"] == 1 and np.isfinite(last["train/loss/total"])
    # Masks from CAMs at a threshold chosen on train; val/miou is those masks' mIoU.
    assert 0.0 <= last["train/cam_threshold"] <= 0.8 and 0.0 < last["train/cam_miou"] <= 1.0
    assert last["val/miou"] == last["val/cam_miou"]
    assert "val/iou/background" in last
    expected = {"cam": {"cls"}, "seam": {"cls", "er", "ecr"}, "sccam": {"cls", "sub"}}[method]
    assert {k.split("/")[-1] for k in last if k.startswith("train/loss/")} == expected | {"total"}


def test_start_weights_are_the_shared_classification_checkpoint():
    cfg = merge(CAM_METHOD_DEFAULTS, TINY)
    ds = load_dataset(cfg["data"])
    from trainables.methods.seam import SeamNet

    net = SeamNet(cfg["model"], ds.num_fg)
    pcm_before = net.pcm.fuse.weight.detach().clone()
    load_start_weights(net, cfg, ds, torch.device("cpu"))
    state = classification_pretrain(cfg, ds, torch.device("cpu"))
    torch.testing.assert_close(net.classifier.weight, state["classifier.weight"])
    torch.testing.assert_close(net.backbone.body[0][0].weight, state["backbone.body.0.0.weight"])
    torch.testing.assert_close(net.pcm.fuse.weight, pcm_before)  # new layer: left as initialised


class StopAfter(Reporter):
    """Keeps the last checkpoint and raises after ``n`` reports (a killed trial)."""

    def __init__(self, n: int, saved=None):
        super().__init__()
        self.n, self.saved = n, saved

    def restore(self):
        return self.saved

    def report(self, metrics, state):
        super().report(metrics, state)
        if state is not None:
            self.saved = state
        if len(self.history) >= self.n:
            raise KeyboardInterrupt


def test_resume_inside_and_between_rounds_matches_an_uninterrupted_run():
    from trainables.methods import sccam

    cfg = merge(TINY, {"train": {"epochs": 3}, "sccam": {"k": 2, "rounds": 2}})  # rounds of 2 and 1 epochs
    full = sccam.train(cfg)
    for stop in (1, 2):  # inside round 1, then at the round boundary
        first = StopAfter(stop)
        with pytest.raises(KeyboardInterrupt):
            sccam.train(cfg, first)
        resumed = StopAfter(99, saved=first.saved)
        rest = train_cam_method(cfg, sccam.RECIPE, sccam.DEFAULTS, resumed)
        assert len(rest) == 3 - stop
        for a, b in zip(rest, full[stop:]):
            assert a["train/loss/total"] == pytest.approx(b["train/loss/total"], rel=1e-4)
            assert a["val/miou"] == pytest.approx(b["val/miou"], abs=1e-6)
    assert [m["train/round"] for m in full] == [1, 1, 2]
