"""SEAM's network and step (the losses themselves are pinned in test_seam_losses.py)."""

from __future__ import annotations

import pytest
import torch

from types import SimpleNamespace

from pydantic import ValidationError

from trainables.data.dataset import TrainBatch
from trainables.methods.seam import SeamNet, SeamSettings, SeamTrainer, _at, adaptive_min_pooling_loss
from trainables.settings.problems import first_problem

MODEL = {"backbone": "small_cnn", "width": 16, "channels_last": False}


def _trainer(num_fg: int = 3, **settings) -> SeamTrainer:
    cfg = SeamSettings.resolve({"model": MODEL, **settings})
    return SeamTrainer(cfg, SimpleNamespace(num_fg=num_fg), torch.device("cpu"))


def _batch(size: tuple[int, int] = (32, 32)) -> TrainBatch:
    torch.manual_seed(0)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return TrainBatch(image=torch.randn(2, 3, *size), rgb=None, labels=labels,
                      valid=torch.ones(2, *size, dtype=torch.bool), gt=None)


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


def _maps_from_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A stand-in net whose maps are its input: cam_rv = the 3 image channels (background, class
    1, class 2) at the input size, so the trainer's upsampling is the identity."""
    return {"logits": x.mean(dim=(2, 3))[:, 1:], "cam_raw": x[:, 1:], "cam_rv": x}


@pytest.mark.parametrize("resample, expected", [("code", (0.25 + 0.1) / 2), ("project", (0.25 + 0.35) / 2)])
def test_rvmin_reads_raw_revised_cams_each_at_its_branch_size(resample: str, expected: float):
    # train_SEAM.py: adaptive_min_pooling_loss((cam_rv1 * label)[:, 1:]) on the PCM output before
    # max_norm, branch o at the crop's size and branch t at A(crop)'s size.
    ramp = torch.arange(16.0).reshape(4, 4) / 10 + 0.1  # 0.1 .. 1.6, value = (4 * row + col) / 10 + 0.1
    image = torch.stack([torch.full((4, 4), 0.7), ramp, torch.full((4, 4), 0.9)])[None]
    batch = TrainBatch(image=image, rgb=None, labels=torch.tensor([[1.0, 0.0]]), valid=None, gt=None)
    terms = _trainer(2, **{"seam.scale": 0.5, "seam.resample": resample, "loss.rvmin.weight": 1.0}).terms(
        _maps_from_image, batch, 0.0, 0)
    # Class 2 is absent, so it is masked out (unmasked, its 0.9 would lift the low pixels); the
    # per-pixel foreground max is the ramp. Branch o, 16 pixels, k = 4: (0.1+0.2+0.3+0.4)/4 = 0.25.
    # Branch t (2x2, k = 1): code (align_corners=True) keeps the corners 0.1, 0.4, 1.3, 1.6 ->
    # min 0.1; project (align_corners=False) takes 2x2 means, the smallest (0.1+0.2+0.5+0.6)/4 =
    # 0.35. Max-normalised maps would instead start at 0 (min subtracted) and give other values.
    assert terms["rvmin"].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("resample, size_t", [("code", (4, 6)), ("project", (5, 6))])
def test_terms_size_branch_t_by_floor_in_code_mode(resample: str, size_t: tuple[int, int]):
    net, seen = SeamNet(MODEL, 3), []

    def recording(x):
        seen.append(tuple(x.shape[-2:]))
        return net(x)

    terms = _trainer(**{"seam.scale": 0.3, "seam.resample": resample, "loss.rvmin.weight": 1.0}).terms(
        recording, _batch((16, 20)), 0.0, 0)
    assert seen == [(16, 20), size_t]  # 16 * 0.3 = 4.8: floor 4 (train_SEAM.py), round 5 (project)
    assert all(torch.isfinite(v) for v in terms.values())


def test_at_upsamples_with_align_corners_true_in_code_mode():
    ramp = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # 2 -> 4 columns: align_corners=True samples 0, 1/3, 2/3, 1; False samples 0 (clamped), 1/4, 3/4, 1 (clamped)
    torch.testing.assert_close(_at(ramp, (4, 4), "code")[0, 0, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    torch.testing.assert_close(_at(ramp, (4, 4))[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_resample_defaults_to_project_and_reaches_the_pcm():
    assert SeamSettings.resolve({})["seam"]["resample"] == "project"
    assert _trainer().build().pcm.align_corners is False
    assert _trainer(**{"seam.resample": "code"}).build().pcm.align_corners is True


def test_eval_cams_are_the_pcm_foreground_or_the_classifier():
    net = SeamNet(MODEL, 3)
    x = torch.randn(1, 3, 32, 32)
    out = net(x)
    torch.testing.assert_close(_trainer().cam_fn(net)(x), out["cam_rv"][:, 1:])
    torch.testing.assert_close(_trainer(**{"seam.eval_cams": "cam"}).cam_fn(net)(x), out["cam_raw"])


@pytest.mark.parametrize("key,value", [("seam.ecr_target", "soft"), ("seam.eval_cams", "both"),
                                       ("seam.scale", 0.0), ("seam.ohem_ratio", 1.5),
                                       ("seam.resample", "floor")])
def test_settings_name_the_bad_setting(key, value):
    with pytest.raises(ValidationError) as e:
        SeamSettings.resolve({key: value})
    assert first_problem(e.value).key == key
