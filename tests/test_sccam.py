"""SC-CAM's network, rounds and sub-category targets (clustering is pinned in test_subcategory.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pydantic import ValidationError

from trainables.data.dataset import augment_batch
from trainables.data.registry import load_dataset
from trainables.methods.registry import METHODS
from trainables.methods.sccam import SccamSettings, SccamTrainer, SubcategoryNet, image_features
from trainables.settings.problems import first_problem

TINY = SccamSettings.resolve({"data": {"num_train": 24, "num_val": 4, "image_size": 32},
                              "model": {"backbone": "small_cnn", "width": 16}, "sccam": {"k": 3}})
CPU = torch.device("cpu")


def test_sub_logits_are_the_sub_classifier_on_gap_features():
    net = SubcategoryNet(TINY["model"], 6, k=3)
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert out["sub_logits"].shape == (2, 18) and out["logits"].shape == (2, 6)
    w = net.sub_classifier.weight[:, :, 0, 0]
    torch.testing.assert_close(out["sub_logits"], out["pooled"] @ w.T)


def test_begin_round_labels_every_image_once_per_present_class():
    ds = load_dataset(TINY["data"])
    net = SubcategoryNet(TINY["model"], ds.num_fg, k=3)
    trainer = SccamTrainer(TINY, ds, CPU)
    trainer.begin_round(0, net)
    state = trainer.state
    sub = state["sub_labels"]
    assert sub.shape == (24, 6 * 3) and sub.dtype == np.float32
    per_class = sub.reshape(24, 6, 3).sum(axis=2)
    np.testing.assert_array_equal(per_class, ds.train.labels)  # one slot c*K + k per present class
    assert state["sub_sizes"].sum(axis=1).tolist() == ds.train.labels.sum(axis=0).tolist()
    again = SccamTrainer(TINY, ds, CPU)
    again.begin_round(0, net)
    np.testing.assert_array_equal(again.state["sub_labels"], sub)  # deterministic under the seed
    feats = image_features(net, ds, TINY, torch.device("cpu"))
    assert feats.shape == (24, net.backbone.out_channels) and net.training


def test_step_uses_the_batch_rows_of_the_sub_labels():
    ds = load_dataset(TINY["data"])
    net = SubcategoryNet(TINY["model"], ds.num_fg, k=3)
    trainer = SccamTrainer(TINY, ds, CPU)
    trainer.begin_round(0, net)
    state = trainer.state
    rng = np.random.default_rng(0)
    batch = augment_batch(ds.train, np.array([5, 2, 7]), 32, (1.0, 1.0), False, rng)
    terms = trainer.terms(net, batch, 0.0, 0)
    out = net(batch.image)
    expected = torch.nn.functional.multilabel_soft_margin_loss(out["sub_logits"],
                                                               torch.from_numpy(state["sub_labels"][[5, 2, 7]]))
    assert terms["sub"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_every_round_restarts_from_the_start_weights_with_the_previous_rounds_features(monkeypatch):
    from trainables.loop import trial

    loads = []
    real_load = trial.load_start_weights
    monkeypatch.setattr(trial, "load_start_weights", lambda model, *a: (loads.append(1), real_load(model, *a)))
    starts = []
    real = SccamTrainer.begin_round

    def spy(self, r, previous):
        starts.append((r, {k: v.clone() for k, v in previous.state_dict().items() if k.startswith("classifier")}))
        real(self, r, previous)

    monkeypatch.setattr(SccamTrainer, "begin_round", spy)
    hist = METHODS["sccam"].train({**TINY, "train": {"epochs": 2, "batch_size": 8, "crop": 32},
                                   "pretrain": {"epochs": 1, "batch_size": 8}, "sccam": {"k": 3, "rounds": 2}})
    assert [r for r, _ in starts] == [0, 1] and [m["train/round"] for m in hist] == [1, 2]
    assert len(loads) == 2  # a fresh network loaded with the start weights for each round
    # Round 2's features come from the model that ended round 1, not the start weights.
    assert not torch.allclose(starts[0][1]["classifier.weight"], starts[1][1]["classifier.weight"])


@pytest.mark.parametrize("key,value", [("sccam.rounds", 9), ("sccam.rounds", 0), ("sccam.k", 0),
                                       ("sccam.feature_norm", "pca")])
def test_settings_name_the_bad_setting(key, value):
    with pytest.raises(ValidationError) as e:
        SccamSettings.resolve({key: value})
    assert first_problem(e.value).key == key
