"""The one training loop (trainables/loop): every registered method end to end, rounds, start
weights, the evaluation schedule, resume, and the pretraining through the same loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.data.registry import load_dataset
from trainables.loop.pretrain import PretrainTrainer, classification_pretrain, pretrain_key, pretrain_settings
from trainables.loop.reporting import Reporter
from trainables.loop.train import Trainer, round_epochs, run
from trainables.loop.trial import load_start_weights
from trainables.methods.registry import METHODS
from trainables.settings.tree import merge

TINY = {"data": {"num_train": 16, "num_val": 6, "image_size": 32}, "model": {"width": 16},
        "pretrain": {"epochs": 1, "batch_size": 8}, "train": {"epochs": 1, "batch_size": 8, "crop": 32},
        "eval": {"batch_size": 8}}
# Only what keeps a method's tiny trial tiny; a method without an entry runs on TINY as it is.
QUICK = {"sccam": {"sccam": {"k": 2, "rounds": 1}}, "seam": {"seam": {"scale": 0.5}},
         "mcis": {"mcis": {"contrast_from_epoch": 0}}}  # every term in the one epoch


def _tiny(method: str, **extra) -> dict:
    return merge(merge(TINY, QUICK.get(method, {})), extra)


def test_round_epochs_split_the_budget():
    assert round_epochs(6, 3) == [2, 2, 2] and round_epochs(7, 3) == [3, 2, 2] and round_epochs(4, 1) == [4]
    with pytest.raises(ValueError, match="rounds"):
        round_epochs(2, 3)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_runs_one_tiny_epoch_end_to_end(method):
    hist = METHODS[method].train(_tiny(method))
    last = hist[-1]
    assert last["epoch"] == 1 and np.isfinite(last["train/loss/total"])
    # CAMs at a threshold chosen on train; every method's CAMs are evaluated the same way.
    assert 0.0 <= last["train/cam_threshold"] <= 0.8 and 0.0 < last["train/cam_miou"] <= 1.0
    assert 0.0 <= last["val/miou"] <= 1.0 and "val/iou/background" in last
    loss = METHODS[method].resolve(_tiny(method))["loss"]
    active = {k for k, v in loss.items() if v["enabled"] and v["weight"] != 0}
    assert {k.split("/")[-1] for k in last if k.startswith("train/loss/")} == active | {"total"}


@pytest.mark.parametrize("method", list(METHODS))
def test_epochs_between_evaluations_carry_every_val_and_cam_metric(method):
    """The single-stage model used to drop train/cam_miou on epochs without an evaluation."""
    hist = METHODS[method].train(_tiny(method, **{"train.epochs": 3, "eval.every": 5}))
    assert [h["epoch"] for h in hist] == [1, 2, 3]  # evaluated: 1 (the first report) and 3 (the last)
    carried = {k: v for k, v in hist[0].items() if k.startswith(("val/", "train/cam"))}
    assert "train/cam_miou" in carried and "val/miou" in carried
    assert {k: v for k, v in hist[1].items() if k.startswith(("val/", "train/cam"))} == carried


def test_the_cam_methods_start_from_the_shared_classification_checkpoint():
    from trainables.methods.seam import SeamNet

    cfg = METHODS["seam"].resolve(TINY)
    ds = load_dataset(cfg["data"])
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
    cfg = merge(TINY, {"train": {"epochs": 3}, "sccam": {"k": 2, "rounds": 2}})  # rounds of 2 and 1 epochs
    sccam = METHODS["sccam"]
    full = sccam.train(cfg)
    for stop in (1, 2):  # inside round 1, then at the round boundary
        first = StopAfter(stop)
        with pytest.raises(KeyboardInterrupt):
            sccam.train(cfg, first)
        rest = sccam.train(cfg, StopAfter(99, saved=first.saved))
        assert len(rest) == 3 - stop
        for a, b in zip(rest, full[stop:]):
            assert a["train/loss/total"] == pytest.approx(b["train/loss/total"], rel=1e-4)
            assert a["val/miou"] == pytest.approx(b["val/miou"], abs=1e-6)
    assert [m["train/round"] for m in full] == [1, 1, 2]


def test_pretraining_runs_the_same_loop_with_the_trials_schedule_and_precision():
    cfg = METHODS["aal"].resolve(merge(TINY, {"train": {"poly_power": 2.0, "autocast": "bf16", "inject_nan_epoch": 1}}))
    p = pretrain_settings(cfg)["train"]
    assert (p["epochs"], p["batch_size"], p["optimizer"], p["new_layer_lr_mult"]) == (1, 8, "adam", 1.0)
    assert (p["poly_power"], p["autocast"], p["inject_nan_epoch"]) == (2.0, "bf16", 0)  # no fault injection
    assert pretrain_key(cfg) != pretrain_key(METHODS["aal"].resolve(TINY))  # the schedule is in the cache key
    lrs = []

    class Spy(PretrainTrainer):
        def terms(self, net, batch, progress, epoch):
            lrs.append(progress)
            return super().terms(net, batch, progress, epoch)

    pcfg = pretrain_settings(cfg)
    history, _ = run(Spy(pcfg, load_dataset(cfg["data"]), torch.device("cpu")), Reporter())
    assert lrs == [0.0, 0.5] and np.isfinite(history[-1]["train/loss/cls"])


def test_the_recipe_every_method_shares_keeps_two_groups_and_the_poly_schedule():
    from trainables.loop.train import build_optimizer, lr_factor

    cfg = METHODS["cam"].resolve(TINY)
    net = METHODS["cam"].trainer(cfg, load_dataset(cfg["data"]), torch.device("cpu")).build()
    opt = build_optimizer(net, cfg["train"])
    assert [g["lr"] for g in opt.param_groups] == [cfg["train"]["lr"], cfg["train"]["lr"] * 10]
    assert not opt.param_groups[0]["nesterov"]
    assert lr_factor(cfg["train"], 0.5, 0) == pytest.approx(0.5 ** 0.9)
    # Biases at 2x split each group in two; BatchNorm's weights stay with the weights (by name, as MCIS's code).
    opt = build_optimizer(net, {**cfg["train"], "bias_lr_mult": 2.0})
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        base = cfg["train"]["lr"] * (1 if name.startswith("backbone.") else 10)
        assert rates[id(p)] == pytest.approx(base * (2 if name.endswith("bias") else 1)), name
    assert len(rates) == len(list(net.parameters()))
    # The pretraining keeps its own recipe whatever the method's.
    p = pretrain_settings(METHODS["cam"].resolve(merge(TINY, {"train": {"bias_lr_mult": 2.0, "schedule": "step"}})))["train"]
    assert (p["bias_lr_mult"], p["schedule"], p["nesterov"]) == (1.0, "poly", False)


def test_a_term_the_settings_do_not_declare_is_refused():
    class Bad(Trainer):
        def build(self):
            from trainables.nets.cam import CamNet

            return CamNet(self.cfg["model"], self.ds.num_fg)

        def terms(self, net, batch, progress, epoch):
            return {"typo": net(batch.image)["logits"].sum()}

    cfg = METHODS["cam"].resolve(TINY)
    with pytest.raises(KeyError, match="typo"):
        run(Bad(cfg, load_dataset(cfg["data"]), torch.device("cpu")), Reporter())


def test_a_method_may_choose_its_batches():
    """The batch sampler hook (methods that train on pairs of images)."""
    from trainables.methods.cam import CamTrainer

    seen = []

    class Pairs(CamTrainer):
        def batches(self, rng, batch_size, steps):
            return [np.array([2 * s, 2 * s + 1]) for s in range(steps)]

        def terms(self, net, batch, progress, epoch):
            seen.append(batch.index.tolist())
            return super().terms(net, batch, progress, epoch)

    cfg = METHODS["cam"].resolve(merge(TINY, {"train": {"batch_size": 2}}))
    run(Pairs(cfg, load_dataset(cfg["data"]), torch.device("cpu")), Reporter())
    assert seen == [[2 * s, 2 * s + 1] for s in range(8)]
