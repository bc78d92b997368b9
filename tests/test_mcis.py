"""MCIS: co-attention, the contrastive gate and its targets, the pair sampler, the test-time
localisation maps and the saliency option (the rule itself is pinned in test_saliency.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.data.dataset import TrainBatch, augment_batch
from trainables.data.registry import load_dataset
from trainables.methods.mcis import (McisNet, McisSettings, McisTrainer, SaliencyScores, PartnerDraw, aggregate_maps,
                                     contrast_loss, pair_partners)
from trainables.methods.registry import METHODS
from trainables.settings.problems import first_problem
from trainables.settings.tree import ConfigError

TINY = McisSettings.resolve({"data": {"num_train": 24, "num_val": 6, "image_size": 32},
                             "model": {"backbone": "small_cnn", "width": 8}})
CPU = torch.device("cpu")


def _identity_net(channels: int = 4, classes: int = 3) -> McisNet:
    net = McisNet({**TINY["model"], "width": channels // 2}, classes)
    assert net.backbone.out_channels == channels
    with torch.no_grad():
        net.co_weight.weight.copy_(torch.eye(channels))
    return net


def test_co_attention_softmax_over_the_partners_positions_in_each_direction():
    net = _identity_net()  # 4 channels, the last two zero below
    fa = _feats([[1.0, 0.0], [0.0, 1.0]], (1, 2))  # a: positions (1,0), (0,1)
    fb = _feats([[2.0, 0.0], [0.0, 0.0]], (2, 1))  # b: positions (2,0), (0,0)
    # W = I: S = F_a^T F_b = [[2, 0], [0, 0]] (rows: a's positions, columns: b's positions).
    att_a, att_b = net.co_attend(fa, fb)
    assert att_a.shape == fa.shape and att_b.shape == fb.shape
    e = math.e ** 2
    # a's position 0 attends over b's positions with softmax([2, 0]); position 1 with softmax([0, 0]).
    p = e / (e + 1)
    expected_a = _feats([[2 * p, 0.0], [1.0, 0.0]], (1, 2))
    torch.testing.assert_close(att_a, expected_a)
    # b's position 0 attends over a's positions with softmax([2, 0]) (a column of S); position 1: [0, 0].
    expected_b = _feats([[p, 1 - p], [0.5, 0.5]], (2, 1))
    torch.testing.assert_close(att_b, expected_b)


def _feats(positions: list[list[float]], hw: tuple[int, int]) -> torch.Tensor:
    """(1, 4, h, w) features from one 2-vector per position (channels 2 and 3 zero)."""
    f = torch.zeros(1, 4, len(positions))
    f[0, :2] = torch.tensor(positions).T
    return f.reshape(1, 4, *hw)


def test_pair_forward_heads_gate_and_shapes():
    torch.manual_seed(0)
    net = McisNet(TINY["model"], 3).eval()
    xa, xb = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    out = net(xa, partner=xb)
    assert out["logits"].shape == out["co_logits"].shape == out["contrast_logits"].shape == (4, 3)
    fa, fb = net(xa)["features"], net(xb)["features"]
    att_a, att_b = net.co_attend(fa, fb)
    torch.testing.assert_close(out["co_logits"][:2], net.co_classifier(att_a).mean(dim=(2, 3)))
    gated = fb * (1 - torch.sigmoid(net.gate(att_b)))  # the partner's own features, gated by its attention
    torch.testing.assert_close(out["contrast_logits"][2:], net.co_classifier(gated).mean(dim=(2, 3)))
    # A partner of another size runs through its own backbone pass and gives the same heads.
    small = net(xa, partner=F.interpolate(xb, size=(24, 24)))
    assert small["co_logits"].shape == (4, 3)


def test_contrast_targets_are_each_images_unshared_labels_and_absent_before_their_epoch():
    ds = load_dataset(TINY["data"])
    trainer = McisTrainer({**TINY, "mcis": {**TINY["mcis"], "contrast_from_epoch": 1}}, ds, CPU)
    net = McisNet(TINY["model"], ds.num_fg)
    labels = torch.zeros(4, ds.num_fg)
    labels[0, [0, 1]] = 1  # anchor 0: {0, 1}, partner 0: {1, 2} -> common {1}; unshared {0} and {2}
    labels[2, [1, 2]] = 1
    labels[1, 3] = labels[3, 3] = 1  # pair 1 shares everything: nothing unshared
    batch = TrainBatch(image=torch.randn(4, 3, 32, 32), rgb=np.zeros((4, 32, 32, 3), np.uint8), labels=labels,
                       valid=torch.ones(4, 32, 32, dtype=torch.bool), gt=None, index=np.arange(4))
    torch.manual_seed(0)
    before = trainer.terms(net, batch, 0.0, 0)
    assert set(before) == {"cls", "co"}
    torch.manual_seed(0)
    after = trainer.terms(net, batch, 0.0, 1)
    out = net(batch.image[:2], partner=batch.image[2:])
    common = labels[:2] * labels[2:]
    torch.testing.assert_close(after["co"], F.multilabel_soft_margin_loss(out["co_logits"], torch.cat([common, common])))
    per = F.multilabel_soft_margin_loss(out["contrast_logits"], torch.tensor(
        [[1.0, 0, 0, 0, 0, 0], [0] * 6, [0, 0, 1.0, 0, 0, 0], [0] * 6]), reduction="none")
    torch.testing.assert_close(after["contrast"], per[0] + per[2])  # only the images with unshared labels
    shared = TrainBatch(**{**batch.__dict__, "labels": torch.cat([labels[1:2]] * 4)})
    assert "contrast" not in trainer.terms(net, shared, 0.0, 1)


def test_contrast_scope_batch_is_the_codes_rule():
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    logits = torch.tensor([[0.0, 0.0], [3.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    per = F.multilabel_soft_margin_loss(logits, targets, reduction="none")
    torch.testing.assert_close(contrast_loss(logits, targets, 2, "image"), per[0])
    torch.testing.assert_close(contrast_loss(logits, targets, 2, "batch"), per[:2].mean())


def test_the_sampler_always_shares_a_class_and_is_deterministic():
    ds = load_dataset(TINY["data"])
    labels = ds.train.labels
    anchors = np.arange(len(labels))
    p1, alone = pair_partners(labels, anchors, np.random.default_rng(3), include_self=False)
    p2, _ = pair_partners(labels, anchors, np.random.default_rng(3), include_self=False)
    np.testing.assert_array_equal(p1, p2)
    assert alone == 0 and (p1 != anchors).all()
    assert ((labels[anchors] * labels[p1]).sum(axis=1) > 0).all()
    lonely = np.array([[1, 0], [0, 1], [0, 1]], dtype=np.float32)  # image 0 is class 0's only holder
    assert pair_partners(lonely, np.array([0, 1]), np.random.default_rng(0), include_self=False) == (pytest.approx([0, 2]), 1)
    trainer = McisTrainer({**TINY, "mcis": {**TINY["mcis"], "self_pairs": "never"}}, ds, CPU)
    steps = trainer.batches(np.random.default_rng(0), 4, 3)
    assert all(len(s) == 8 and (labels[s[:4]] * labels[s[4:]]).sum(axis=1).min() > 0 for s in steps)
    assert trainer.epoch_metrics() == {"train/self_pairs": 0.0}


def test_the_codes_sampler_draws_among_all_holders_the_image_included():
    two = np.array([[1.0], [1.0]], dtype=np.float32)  # one class, two holders: the code picks either
    anchors = np.zeros(400, dtype=np.int64)
    partners, alone = pair_partners(two, anchors, np.random.default_rng(0))  # include_self: the default
    assert set(partners) == {0, 1} and alone == int((partners == 0).sum()) and 150 < alone < 250
    assert set(pair_partners(two, anchors, np.random.default_rng(0), include_self=False)[0]) == {1}
    assert TINY["mcis"]["self_pairs"] == "as_code"
    ds = load_dataset(TINY["data"])
    trainer = McisTrainer(TINY, ds, CPU)
    steps = trainer.batches(np.random.default_rng(0), 8, 3)
    paired_self = sum(int((s[:8] == s[8:]).sum()) for s in steps)
    assert trainer.epoch_metrics()["train/self_pairs"] == pytest.approx(paired_self / 24)
    c = int(np.flatnonzero(ds.train.labels[0])[0])
    holders = np.flatnonzero(ds.train.labels[:, c])
    draws = {p for i in range(40) for _, p in PartnerDraw(ds, 3, seed=i).draw("train", 0, c)}
    assert 0 in draws and draws <= set(holders)  # the test-time draw includes the image, as the code's
    assert 0 not in {p for i in range(40) for _, p in PartnerDraw(ds, 3, seed=i, include_self=False).draw("train", 0, c)}


def test_test_partners_hold_the_class_are_fixed_and_never_the_image():
    ds = load_dataset(TINY["data"])
    partners = PartnerDraw(ds, 3, seed=0, include_self=False)
    for i in range(len(ds.train)):
        for c in np.flatnonzero(ds.train.labels[i]):
            group = partners.draw("train", i, c)
            assert len(group) == 3 and group == partners.draw("train", i, c)
            assert all(s == "train" and p != i and ds.train.labels[p, c] for s, p in group)
    c = int(np.flatnonzero(ds.val.labels[0])[0])
    assert all(ds.train.labels[p, c] for _, p in partners.draw("val", 0, c))


def test_localisation_maps_average_the_co_attention_maps_of_the_partners():
    ds = load_dataset(TINY["data"])
    trainer = McisTrainer(TINY, ds, CPU)
    torch.manual_seed(0)
    net = McisNet(TINY["model"], ds.num_fg).eval()
    idx = [0, 1]
    x = torch.from_numpy(np.stack([ds.val.images[i] for i in idx])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        cams = trainer.bind_cams(net, net)("val", idx)(x)
        partners = PartnerDraw(ds, 3, seed=int(TINY["train"]["seed"]))
        fx = net(x)["features"]
        for j, i in enumerate(idx):
            present = np.flatnonzero(ds.val.labels[i])
            assert cams[j, [c for c in range(ds.num_fg) if c not in present]].abs().sum() == 0
            for c in present:
                maps = [net.co_map(fx[j : j + 1], net(_image(ds, p))["features"])[0, c]
                        for _, p in partners.draw("val", i, c)]
                torch.testing.assert_close(cams[j, c], torch.stack(maps).mean(dim=0))


def _image(ds, i: int) -> torch.Tensor:
    from trainables.data.dataset import to_tensor_batch

    return to_tensor_batch([ds.train.images[i]])


def test_aggregate_normalises_each_map_and_gates_the_later_ones():
    first = torch.tensor([[[[0.0, 2.0]]]])
    kept = torch.tensor([[[[1.0, 1.0]]]])  # sigmoid(1) > 0.1
    dropped = torch.tensor([[[[-9.0, 1.0]]]])  # sigmoid(-4) < 0.1
    out = aggregate_maps([first, kept, dropped])
    torch.testing.assert_close(out, torch.tensor([[[[1.0, 2.0]]]]) / 3)


def test_saliency_masks_are_refused_without_saliency_maps():
    with pytest.raises(Exception) as err:
        McisSettings.resolve({"eval": {"saliency_masks": True}})
    problem = first_problem(err.value) if not isinstance(err.value, ConfigError) else err.value
    assert "eval.saliency_masks" in str(problem) and "data.saliency" in str(problem)


def test_saliency_scores_count_only_the_pixels_the_pseudo_masks_label():
    class Split:
        labels = np.array([[1.0]], np.float32)
        saliency = [np.array([[255, 255, 0, 0]], np.uint8)]
        masks = [np.array([[1, 1, 0, 1]], np.uint8)]

    class Data:
        num_classes, train, val = 2, Split(), Split()

    scores = SaliencyScores(Data(), TINY["mcis"]["saliency"])
    cams = torch.tensor([[[[1.0, 0.9, 0.0, 0.0]]]])  # salient and localised: class 1; the rest background
    scores("val", [0], cams)
    m = scores.metrics()
    # Pseudo mask [1, 1, 0, 0] against [1, 1, 0, 1]: background IoU 1/2, class 1 IoU 2/3.
    assert m["val/saliency_miou"] == pytest.approx((0.5 + 2 / 3) / 2) and m["val/saliency_coverage"] == 1.0
    assert "train/saliency_miou" not in m


def test_the_methods_yaml_searches_the_issues_knobs():
    import yaml

    from study.space import load_spec

    spec = load_spec("search_spaces/mcis.yaml")
    assert spec.method == "mcis"
    doc = yaml.safe_load(open("search_spaces/mcis.yaml"))
    assert set(doc["search"]) == {"train.lr", "loss.co.weight", "loss.contrast.weight", "mcis.contrast_from_epoch",
                                  "mcis.test_partners", "train.new_layer_lr_mult"}
    assert spec.defaults["train.new_layer_lr_mult"] == 10.0  # the code's, in the defaults trial
    assert METHODS["mcis"].baseline


def test_saliency_masks_on_a_folder_dataset_with_saliency_maps(tmp_path):
    """A test fixture only: the saliency maps are the masks' foreground (a perfect saliency
    detector), so MCIS's pseudo masks score the background well on every split they label."""
    from PIL import Image

    from trainables.data.folder import write_folder

    ds = load_dataset({"name": "synthetic", "num_train": 16, "num_val": 6, "image_size": 32})
    root = write_folder(ds, tmp_path / "folder")
    (root / "saliency").mkdir()
    for split in (ds.train, ds.val):
        for i, image_id in enumerate(split.ids):
            Image.fromarray(np.where(split.masks[i] > 0, 255, 0).astype(np.uint8), "L").save(root / "saliency" / f"{image_id}.png")
    cfg = {"data": {"name": "folder", "root": str(root), "saliency": "saliency"}, "model": {"width": 16},
           "pretrain": {"epochs": 1, "batch_size": 8}, "train": {"epochs": 1, "batch_size": 4, "crop": 32},
           "eval": {"batch_size": 8, "saliency_masks": True}}
    last = METHODS["mcis"].train(cfg)[-1]
    for split in ("train", "val"):
        assert 0.0 < last[f"{split}/saliency_coverage"] <= 1.0 and 0.0 < last[f"{split}/saliency_miou"] <= 1.0
    with pytest.raises(Exception, match="eval.saliency_masks"):
        METHODS["mcis"].resolve({**cfg, "data": {"name": "folder", "root": str(root)}})


def test_intra_pairs_add_the_codes_single_and_co_terms_with_the_images_own_labels():
    ds = load_dataset(TINY["data"])
    on = McisTrainer({**TINY, "mcis": {**TINY["mcis"], "intra_pairs": True}}, ds, CPU)
    torch.manual_seed(0)
    net = McisNet(TINY["model"], ds.num_fg).eval()
    batch = augment_batch(ds.train, np.array([0, 1, 2, 3]), 32, (1.0, 1.0), False, np.random.default_rng(0))
    with torch.no_grad():
        terms = on.terms(net, batch, 0.0, 0)
        plain = McisTrainer(TINY, ds, CPU).terms(net, batch, 0.0, 0)
        x, own = batch.image[:2], torch.cat([batch.labels[:2]] * 2)
        views = [x.flip(-1), F.interpolate(x, scale_factor=0.75, mode="bilinear"), F.interpolate(x, scale_factor=2.0, mode="bilinear")]
        outs = [net(x, partner=v) for v in views]
    assert [o["co_logits"].shape for o in outs] == [(4, ds.num_fg)] * 3
    torch.testing.assert_close(terms["cls"], plain["cls"] + sum(F.multilabel_soft_margin_loss(o["logits"], own) for o in outs))
    torch.testing.assert_close(terms["co"], plain["co"] + sum(F.multilabel_soft_margin_loss(o["co_logits"], own) for o in outs))


def _extra_net(convs: int = 2, width: int = 16, classes: int = 3) -> McisNet:
    torch.manual_seed(0)
    return McisNet(TINY["model"], classes, extra_convs=convs, extra_width=width)


def test_extra_convs_are_built_and_initialised_as_the_code_and_feed_every_head():
    net = _extra_net(convs=3, width=64)
    convs = [m for m in net.extra if isinstance(m, torch.nn.Conv2d)]
    relus = [m for m in net.extra if isinstance(m, torch.nn.ReLU)]
    assert len(convs) == len(relus) == 3 and all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    assert convs[0].in_channels == net.backbone.out_channels and all(m.out_channels == 64 for m in convs)
    for m in convs:  # vgg.py _initialize_weights: N(0, sqrt(2 / (3 * 3 * 64))), zero bias
        assert m.bias.abs().sum() == 0
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.05)
        assert m.weight.mean().abs().item() < 0.1 * math.sqrt(2 / (9 * 64))
    cls = net.extra_classifier  # the code's extra_last_conv: 1x1 with a zero bias, std sqrt(2 / (1 * 1 * C))
    assert cls.bias is not None and cls.bias.abs().sum() == 0 and cls.in_channels == 64
    assert net.classifier is None and net.co_weight.in_features == net.gate.in_channels == net.co_classifier.in_channels == 64
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert out["features"].shape[1] == 64 and out["features"].min() >= 0  # after the last ReLU
    with torch.no_grad():
        cls.bias.fill_(0.5)
    torch.testing.assert_close(net(x)["logits"], out["logits"] + 0.5)  # the single-image logits carry the bias
    backbone, new = net.parameter_groups()
    new_ids = {id(p) for p in new}
    assert all(id(p) in new_ids for m in (net.extra, cls, net.co_weight, net.gate) for p in m.parameters())


def test_the_shared_checkpoint_loads_the_backbone_and_leaves_the_new_classifier_alone():
    from trainables.nets.cam import CamNet

    torch.manual_seed(1)
    state = CamNet(TINY["model"], 3).state_dict()  # what the shared checkpoint holds: backbone + classifier
    net = _extra_net()
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    after = net.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state if k.startswith("backbone."))
    assert all(torch.equal(after[k], fresh[k]) for k in after if not k.startswith("backbone."))
    assert not any(k.startswith("classifier.") for k in after)


def test_intra_maps_keep_w_on_the_images_side_of_every_pair():
    """A non-symmetric W tells the code's view-side map (the pair (image, view)'s second map,
    test.py l.186-196) from one computed with the pair reversed, which the project did before."""
    from trainables.methods.mcis import intra_maps

    net = _extra_net(convs=1, width=8).eval()
    torch.manual_seed(3)
    project = torch.randn(8, 3) * 3.0
    features = lambda v: {"features": torch.einsum("oc,bchw->bohw", project, F.avg_pool2d(v, 4))}  # noqa: E731
    with torch.no_grad():
        net.co_weight.weight.copy_(torch.randn(8, 8))  # far from symmetric
    z = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fz = features(z)["features"]
        maps = intra_maps(net, features, z, fz)
        flip = features(z.flip(-1))["features"]
        s = net.co_weight(fz.flatten(2).transpose(1, 2)) @ flip.flatten(2)  # (W f_z)^T f_flip
        at_flip = (fz.flatten(2) @ torch.softmax(s, dim=1)).reshape(flip.shape)  # softmax over z's positions
        expected = net.co_classifier(at_flip).flip(-1)
        reversed_pair = net.co_map(flip, fz).flip(-1)
    torch.testing.assert_close(maps[1], expected)
    assert (maps[1] - reversed_pair).abs().max() > 0.1
    torch.testing.assert_close(maps[0], net.co_map(fz, flip))


def test_attention_diagnostics_are_logged_per_epoch():
    ds = load_dataset(TINY["data"])
    trainer = McisTrainer(TINY, ds, CPU)
    net = trainer.build()
    batch = augment_batch(ds.train, np.array([0, 1, 2, 3]), 32, (1.0, 1.0), False, np.random.default_rng(0))
    with torch.no_grad():
        trainer.terms(net, batch, 0.0, 0)
        trainer.terms(net, batch, 0.0, 0)
        out = net(batch.image[:2], partner=batch.image[2:])
    m = trainer.epoch_metrics()
    n = out["affinity"].shape[2]
    p = torch.softmax(out["affinity"], dim=2)
    entropy = float(-(p * p.log()).sum(dim=2).mean() / math.log(n))
    assert m["train/attention/entropy_ratio"] == pytest.approx(entropy, rel=1e-4)
    assert m["train/attention/s_std"] == pytest.approx(float(out["affinity"].std()), rel=1e-4)
    assert m["train/attention/feature_norm"] == pytest.approx(float(out["features"].norm(dim=1).mean()), rel=1e-4)
    assert "train/attention/s_std" not in trainer.epoch_metrics()  # reset with the epoch


def test_the_codes_optimiser_recipe_in_mcis_yaml_is_one_set_block_away():
    """The comment block of search_spaces/mcis.yaml gives the code's recipe as --set flags:
    they parse, validate, and build the code's four SGD groups (scripts/train.py l.62-68)."""
    import re
    import shlex

    from study.space import load_spec
    from trainables.loop.train import build_optimizer, lr_factor

    text = open("search_spaces/mcis.yaml").read()
    block = " ".join(line.lstrip("# ").rstrip("\\ ") for line in text.splitlines() if re.match(r"#\s+--set ", line))
    args = shlex.split(block)
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert len(sets) >= 8
    spec = load_spec("search_spaces/mcis.yaml", overrides=sets)
    assert spec.defaults["train.lr"] == 1e-3  # the code's lr: the searched range's default
    cfg = METHODS["mcis"].resolve({**spec.trainable_config(), "data": TINY["data"], "model": TINY["model"],
                                   "train": {**spec.trainable_config()["train"], "lr": 1e-3}})
    t = cfg["train"]
    assert (t["optimizer"], t["nesterov"], t["momentum"], t["weight_decay"], t["new_layer_lr_mult"]) == ("sgd", True, 0.9, 5e-4, 10.0)
    assert [round(lr_factor(t, 0.0, e), 6) for e in (0, 4, 5, 10, 14)] == [1.0, 1.0, 0.1, 0.01, 0.01] and t["epochs"] == 15
    net = McisNet(cfg["model"], 3, extra_convs=1, extra_width=8)
    opt = build_optimizer(net, t)
    rates = sorted(g["lr"] for g in opt.param_groups)
    assert rates == pytest.approx([1e-3, 2e-3, 1e-2, 2e-2]) and all(g["nesterov"] for g in opt.param_groups)
    by_rate = {round(g["lr"], 6): {id(p) for p in g["params"]} for g in opt.param_groups}
    assert id(net.extra_classifier.bias) in by_rate[0.02] and id(net.extra_classifier.weight) in by_rate[0.01]
