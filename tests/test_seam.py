"""SEAM's network and step (the losses themselves are pinned in test_seam_losses.py)."""

from __future__ import annotations

import pytest
import torch

from types import SimpleNamespace

from pydantic import ValidationError

from trainables.data.dataset import TrainBatch
from trainables.methods.seam import SeamNet, SeamSettings, SeamTrainer, adaptive_min_pooling_loss
from trainables.settings.problems import first_problem

MODEL = {"backbone": "small_cnn", "width": 16, "channels_last": False}


def _trainer(**settings) -> SeamTrainer:
    cfg = SeamSettings.resolve({"model": MODEL, **settings})
    return SeamTrainer(cfg, SimpleNamespace(num_fg=3), torch.device("cpu"))


def _batch() -> TrainBatch:
    torch.manual_seed(0)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return TrainBatch(image=torch.randn(2, 3, 32, 32), rgb=None, labels=labels,
                      valid=torch.ones(2, 32, 32, dtype=torch.bool), gt=None)


def test_seam_net_adds_a_revised_cam_with_a_background_channel():
    net = SeamNet(MODEL, 3)
    out = net(torch.randn(2, 3, 32, 32))
    assert out["cam_raw"].shape == (2, 3, 8, 8) and out["cam_rv"].shape == (2, 4, 8, 8)
    assert (out["cam_rv"] >= 0).all()


def test_seam_step_trains_the_pcm_through_ecr_only():
    torch.manual_seed(0)
    net = SeamNet(MODEL, 3)
    trainer = _trainer(**{"seam.scale": 0.5})
    terms = trainer.terms(net, _batch(), 0.0, 0)
    assert set(terms) == {"cls", "er", "ecr"} and all(torch.isfinite(v) for v in terms.values())
    terms["er"].backward(retain_graph=True)
    assert net.pcm.fuse.weight.grad is None  # ER compares plain CAMs: no path to the PCM
    assert net.classifier.weight.grad.abs().sum() > 0
    terms["ecr"].backward()
    assert net.pcm.fuse.weight.grad.abs().sum() > 0
    # The PCM's input CAM and mid-level features are detached: ECR alone leaves the backbone.
    net.zero_grad(set_to_none=True)
    trainer.terms(net, _batch(), 0.0, 0)["ecr"].backward()
    assert net.backbone.body[0][0].weight.grad is None and net.classifier.weight.grad is None


def test_rvmin_term_only_when_weighted_and_hand_case():
    assert "rvmin" not in _trainer(**{"seam.scale": 0.5}).terms(SeamNet(MODEL, 3), _batch(), 0.0, 0)
    weighted = _trainer(**{"seam.scale": 0.5, "loss.rvmin.weight": 0.5})
    assert "rvmin" in weighted.terms(SeamNet(MODEL, 3), _batch(), 0.0, 0)
    rev = torch.zeros(1, 3, 2, 2)
    rev[0, 1] = torch.tensor([[0.1, 0.9], [0.4, 0.0]])
    rev[0, 2] = torch.tensor([[0.2, 0.0], [0.3, 0.8]])
    # per-pixel fg max: [0.2, 0.9, 0.4, 0.8]; the lowest quarter (k = 1) is 0.2
    assert adaptive_min_pooling_loss(rev).item() == pytest.approx(0.2)


def test_eval_cams_are_the_pcm_foreground_or_the_classifier():
    net = SeamNet(MODEL, 3)
    x = torch.randn(1, 3, 32, 32)
    out = net(x)
    torch.testing.assert_close(_trainer().cam_fn(net)(x), out["cam_rv"][:, 1:])
    torch.testing.assert_close(_trainer(**{"seam.eval_cams": "cam"}).cam_fn(net)(x), out["cam_raw"])


@pytest.mark.parametrize("key,value", [("seam.ecr_target", "soft"), ("seam.eval_cams", "both"),
                                       ("seam.scale", 0.0), ("seam.ohem_ratio", 1.5)])
def test_settings_name_the_bad_setting(key, value):
    with pytest.raises(ValidationError) as e:
        SeamSettings.resolve({key: value})
    assert first_problem(e.value).key == key
