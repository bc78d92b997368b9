"""SC-CAM's network (dropout before pooling, xavier heads), rounds and sub-category targets
(clustering is pinned in test_subcategory.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pydantic import ValidationError

from trainables.data.dataset import augment_batch
from trainables.data.registry import load_dataset
from trainables.methods.registry import METHODS
from trainables.methods.sccam import SccamSettings, SccamTrainer, SubcategoryNet, image_features
from trainables.pseudo.subcategory import subcategory_labels
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


def test_feature_dropout_before_pooling_in_training_only():
    # network/resnet38_cls.py:46: Dropout2d(0.5) on the features before pooling, under both heads;
    # forward_two_cam (line 92) and eval mode use the undropped features
    torch.manual_seed(0)
    net = SubcategoryNet(TINY["model"], 6, k=3).eval()
    x = torch.randn(4, 3, 32, 32)
    feats = net.backbone(net.prepare_input(x))
    out = net(x)
    torch.testing.assert_close(out["features"], feats)
    torch.testing.assert_close(out["cam_raw"], net.classifier(feats))
    net.train()
    for m in net.backbone.modules():  # keep batch norm on its running statistics: only dropout differs
        m.eval()
    out = net(x)
    kept = out["features"].abs().sum(dim=(2, 3)) > 0  # (B, F): whole channels dropped or kept
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(out["features"], 2.0 * feats * kept[:, :, None, None])  # 1 / (1 - 0.5)
    torch.testing.assert_close(out["logits"], net.classifier(out["features"]).mean(dim=(2, 3)))
    torch.testing.assert_close(out["sub_logits"], out["pooled"] @ net.sub_classifier.weight[:, :, 0, 0].T)
    off = SubcategoryNet(TINY["model"], 6, k=3, feature_dropout=0.0).train()
    for m in off.backbone.modules():
        m.eval()
    torch.testing.assert_close(off(x)["features"], off.backbone(off.prepare_input(x)))


@pytest.mark.parametrize("init", [None, "torch"])
def test_heads_start_from_xavier_uniform(init):
    # network/resnet38_cls.py:36-37: xavier_uniform_ (gain 1) on both heads, which have no bias
    torch.manual_seed(0)
    net = SubcategoryNet(TINY["model"], 6, k=3, **({} if init is None else {"head_init": init}))
    fan_in = net.backbone.out_channels
    for head, fan_out in [(net.classifier, 6), (net.sub_classifier, 18)]:
        w = head.weight.detach().flatten()
        xavier = (6.0 / (fan_in + fan_out)) ** 0.5
        torch_bound = 1.0 / fan_in ** 0.5  # nn.Conv2d's default, kaiming_uniform_(a=sqrt(5))
        assert head.bias is None
        if init is None:  # the default
            assert w.abs().max() <= xavier and w.abs().max() > 0.9 * xavier > torch_bound
            assert w.var().item() == pytest.approx(xavier ** 2 / 3, rel=0.2)  # U(-a, a) has variance a^2/3
        else:
            assert w.abs().max() <= torch_bound


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
    # every round clusters with the trial seed, as the code's random_state=0 in every round
    direct = subcategory_labels(feats, ds.train.labels, 3, seed=int(TINY["train"]["seed"]))
    np.testing.assert_array_equal(sub, direct.labels)
    again.begin_round(2, net)
    np.testing.assert_array_equal(again.state["sub_labels"], sub)


def test_step_uses_the_batch_rows_of_the_sub_labels():
    ds = load_dataset(TINY["data"])
    net = SubcategoryNet(TINY["model"], ds.num_fg, k=3)
    trainer = SccamTrainer(TINY, ds, CPU)
    trainer.begin_round(0, net)
    state = trainer.state
    rng = np.random.default_rng(0)
    batch = augment_batch(ds.train, np.array([5, 2, 7]), 32, (1.0, 1.0), False, rng)
    net.eval()  # no dropout: both passes see the same features
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
                                       ("sccam.feature_norm", "pca"), ("sccam.kmeans_n_init", 0),
                                       ("sccam.kmeans_max_iter", 0), ("sccam.feature_dropout", 1.0),
                                       ("sccam.head_init", "kaiming")])
def test_settings_name_the_bad_setting(key, value):
    with pytest.raises(ValidationError) as e:
        SccamSettings.resolve({key: value})
    assert first_problem(e.value).key == key
