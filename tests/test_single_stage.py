"""The trainable as a plain call: loss terms switch on and off by config, and report each epoch."""

from __future__ import annotations

import math

import pytest

from trainables.single_stage import train

TINY = {
    "data": {"name": "synthetic", "num_train": 16, "num_val": 8, "image_size": 32, "seed": 3},
    "model": {"backbone": "small_cnn", "width": 8, "seg_hidden": 8},
    "pretrain": {"enabled": False},
    "train": {"epochs": 1, "batch_size": 8, "crop": 32, "optimizer": "adam", "lr": 1e-3, "num_threads": 1},
    "pseudo": {"crf_iterations": 2},
}


def test_dense_energy_term_is_reported_when_enabled():
    hist = train({**TINY, "loss.dense.enabled": True})
    last = hist[-1]
    assert last["train/loss/dense"] < 0 and math.isfinite(last["train/loss/dense"])
    assert "val/miou" in last and 0.0 <= last["val/miou"] <= 1.0


def test_dense_energy_term_is_absent_by_default():
    hist = train(TINY)
    assert "train/loss/dense" not in hist[-1]
    assert {"train/loss/cls", "train/loss/ce", "train/loss/total"} <= set(hist[-1])


def test_unknown_loss_term_names_the_key():
    with pytest.raises(ValueError, match=r"loss.nope: no such loss term"):
        train({**TINY, "loss.nope": {"enabled": True, "weight": 1.0}})


@pytest.mark.parametrize("source", ["crf", "cam", "pred"])
def test_affinity_term_runs_with_each_confidence_source(source):
    hist = train({**TINY, "loss.affinity.enabled": True, "loss.affinity.confidence": source,
                  "loss.affinity.distance": 2})
    value = hist[-1]["train/loss/affinity"]
    assert math.isfinite(value) and value >= 0.0
