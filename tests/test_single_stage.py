"""The trainable as a plain call: loss terms switch on and off by config, and report each epoch."""

from __future__ import annotations

import math

import pytest

from trainables.methods.registry import METHODS

train = METHODS["aal"].train

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
    from pydantic import ValidationError

    from trainables.settings.problems import first_problem

    with pytest.raises(ValidationError) as e:
        train({**TINY, "loss.nope": {"enabled": True, "weight": 1.0}})
    assert first_problem(e.value).key == "loss.nope"


@pytest.mark.parametrize("source", ["crf", "cam", "pred"])
def test_affinity_term_runs_with_each_confidence_source(source):
    hist = train({**TINY, "loss.affinity.enabled": True, "loss.affinity.confidence": source,
                  "loss.affinity.distance": 2})
    value = hist[-1]["train/loss/affinity"]
    assert math.isfinite(value) and value >= 0.0


def test_pool_without_overlap_trains_exactly_as_in_process():
    # Same batches, same CAMs, the same labels computed in two worker processes: same run.
    serial = train({**TINY, "train.epochs": 2, "pseudo.workers": 0})
    pooled = train({**TINY, "train.epochs": 2, "pseudo.workers": 2, "pseudo.overlap": False})
    for a, b in zip(serial, pooled):
        for key in ("train/loss/total", "train/pseudo/precision", "train/pseudo/coverage", "val/miou"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert pooled[-1]["time/pseudo_wait_s"] >= 0.0


def test_overlap_labels_the_next_batch_from_the_current_weights():
    # One step stale: the run differs from the serial one, but trains and reports pseudo labels.
    hist = train({**TINY, "train.epochs": 2, "pseudo.workers": 1, "pseudo.overlap": True})
    serial = train({**TINY, "train.epochs": 2, "pseudo.workers": 0})
    assert math.isfinite(hist[-1]["train/loss/total"])
    assert 0.0 < hist[-1]["train/pseudo/coverage"] <= 1.0
    assert hist[-1]["train/loss/total"] != serial[-1]["train/loss/total"]


def test_workers_must_be_a_count_or_auto():
    from pydantic import ValidationError

    from trainables.settings.problems import first_problem

    with pytest.raises(ValidationError) as e:
        train({**TINY, "pseudo.workers": -1})
    err = first_problem(e.value)
    assert err.key == "pseudo.workers" and err.value == -1 and "'auto' or greater than or equal to 0" in err.message


def test_frozen_bn_stats_normalises_with_the_batch_but_keeps_running_statistics():
    import torch
    from torch import nn

    from trainables.nets.segmentation import frozen_bn_stats

    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    x = torch.randn(2, 3, 5, 5) * 3 + 1
    before = net[1].running_mean.clone()
    with frozen_bn_stats(net), torch.no_grad():
        y = net(x)
    assert torch.equal(net[1].running_mean, before) and net[1].momentum == 0.1
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # batch statistics were used
    net(x)
    assert not torch.equal(net[1].running_mean, before)


def test_reassign_term_trains_the_embedding_and_relabels_after_warmup():
    hist = train({**TINY, "train.epochs": 2, "loss.reassign.enabled": True, "loss.reassign.warmup": 0.5,
                  "loss.reassign.tau": 0.0})
    first, last = hist
    assert math.isfinite(first["train/loss/reassign"]) and first["train/loss/reassign"] > 0
    assert "train/reassign/changed" not in first  # warm-up: the loss runs, nothing is relabelled
    assert 0.0 < last["train/reassign/changed"] <= 1.0  # tau 0: any nearer prototype relabels
    for key in ("train/reassign/precision_before", "train/reassign/precision_after"):
        assert 0.0 <= last[key] <= 1.0


def test_reassign_with_pretrained_checkpoint_adds_only_the_embedding_head(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSS_CACHE_DIR", str(tmp_path))
    cfg = {**TINY, "pretrain": {"enabled": True, "epochs": 1, "batch_size": 8}}
    train(cfg)  # caches the classification checkpoint without an embedding head
    hist = train({**cfg, "loss.reassign.enabled": True})
    assert math.isfinite(hist[-1]["train/loss/reassign"])
    assert len(list(tmp_path.glob("pretrain-*.pt"))) == 1  # the same checkpoint served both


def test_decoupled_ce_changes_the_ce_value_but_not_with_equal_weights():
    plain = train(TINY)[-1]["train/loss/ce"]
    equal = train({**TINY, "loss.ce.decouple": True, "loss.ce.body_weight": 1.0, "loss.ce.detail_weight": 1.0})
    boundary = train({**TINY, "loss.ce.decouple": True, "loss.ce.body_weight": 0.2, "loss.ce.detail_weight": 3.0})
    assert equal[-1]["train/loss/ce"] == pytest.approx(plain, rel=1e-5)
    assert boundary[-1]["train/loss/ce"] != pytest.approx(plain, rel=1e-3)


def test_bf16_autocast_trains_with_float32_losses():
    hist = train({**TINY, "train.autocast": "bf16", "loss.reassign.enabled": True, "loss.dense.enabled": True})
    assert math.isfinite(hist[-1]["train/loss/total"]) and 0.0 <= hist[-1]["val/miou"] <= 1.0
    with pytest.raises(ValueError, match="autocast"):
        train({**TINY, "train.autocast": "fp8"})


def test_float32net_runs_the_network_in_bf16_and_returns_float32():
    import torch

    from trainables.nets.segmentation import SingleStageNet
    from trainables.loop.train import Float32Net

    torch.manual_seed(0)
    model = SingleStageNet({"backbone": "small_cnn", "width": 8, "seg_hidden": 8}, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)["seg"]
    got = Float32Net(model, "bf16", torch.device("cpu"))(x)["seg"]
    assert got.dtype == torch.float32
    assert not torch.equal(got, ref)  # bfloat16 rounding happened
    torch.testing.assert_close(got, ref, atol=0.1, rtol=0.05)
    assert torch.equal(Float32Net(model, "off", torch.device("cpu"))(x)["seg"], ref)


def test_classifier_sees_dropout_in_training_and_not_in_eval():
    # RRM's dropout7 (Dropout2d 0.5) before the pooled classifier, training only; its CAMs come
    # from the features without it (network/RRM.py l.12, l.30-35).
    import torch

    from trainables.data.registry import load_dataset
    from trainables.methods.single_stage import SingleStageTrainer
    from trainables.nets.segmentation import SingleStageNet

    cfg = METHODS["aal"].resolve(TINY)
    assert cfg["loss"]["cls"]["dropout"] == 0.5
    net = SingleStageTrainer(cfg, load_dataset(TINY["data"]), torch.device("cpu")).build()
    assert isinstance(net.cls_dropout, torch.nn.Dropout2d) and net.cls_dropout.p == 0.5
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    out = net(x)
    torch.testing.assert_close(out["logits"], out["cam_raw"].mean(dim=(2, 3)))
    net.train()
    seen = []
    hook = net.classifier.register_forward_hook(lambda m, args, y: seen.append(args[0]))
    out = net(x)
    hook.remove()
    dense, pooled = seen  # the CAM pass on the features, then the pooled, dropped-out features
    assert pooled.shape[-2:] == (1, 1)
    channels = pooled.abs().amax(dim=(2, 3))
    feats_mean = dense.mean(dim=(2, 3))
    dropped = (channels == 0) & (feats_mean != 0)
    assert dropped.any() and not dropped.all()  # whole channels are zeroed ...
    torch.testing.assert_close(pooled[..., 0, 0][~dropped], 2 * feats_mean[~dropped])  # ... the rest scaled by 1/(1-p)
    assert not torch.allclose(out["logits"], out["cam_raw"].mean(dim=(2, 3)))
    # 0 turns it off: the logits are the mean of the dense classifier output again.
    plain = SingleStageNet(TINY["model"], 3, cls_dropout=0.0).train()
    out = plain(x)
    assert plain.cls_dropout is None
    torch.testing.assert_close(out["logits"], out["cam_raw"].mean(dim=(2, 3)))
