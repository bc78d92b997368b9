"""Typed settings (trainables/settings/sections.py): every method's settings refuse a bad value
with its key and what is allowed, accept every documented value, and follow the contract."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainables.methods.registry import METHODS
from trainables.settings.problems import first_problem, leaf_keys
from trainables.settings.sections import LossTerm, PseudoLabelConfig, TrainSettings


def _problem(method: str, config: dict):
    with pytest.raises(ValidationError) as e:
        METHODS[method].resolve(config)
    return first_problem(e.value, METHODS[method].settings)


@pytest.mark.parametrize("method", list(METHODS))
def test_defaults_validate_and_every_loss_term_has_enabled_and_weight(method):
    defaults = METHODS[method].defaults
    assert METHODS[method].resolve(defaults) == defaults
    assert defaults["data"]["name"] == "synthetic"
    for name, term in defaults["loss"].items():
        assert {"enabled", "weight"} <= set(term), name


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("key,value,allowed", [
    ("train.optimizer", "adamm", "'sgd' or 'adam'"),
    ("train.autocast", "fp8", "'off' or 'bf16'"),
    ("train.lr", 0.0, "greater than 0"),
    ("train.momentum", 1.0, "less than 1"),
    ("train.epochs", 0, "greater than or equal to 1"),
    ("train.epochs", 2.5, "integer"),
    ("train.flip", "off", "boolean"),          # YAML 1.1's off is not a boolean here
    ("train.device", "gpu", "pattern"),
    ("model.backbone", "resnet18", "'small_cnn'"),
    ("eval.cam_threshold", 1.5, "less than or equal to 1"),
    ("eval.cam_threshold_source", "val", "'train' or 'fixed'"),
    ("cam.scales", [], "at least 1"),
    ("data.num_train", -3, "greater than or equal to 1"),
])
def test_a_bad_shared_setting_names_its_key_and_what_is_allowed(method, key, value, allowed):
    err = _problem(method, {key: value})
    assert err.key == key and err.value == value and allowed in err.message


@pytest.mark.parametrize("key,value,allowed", [
    ("loss.affinity.confidence", "crff", "'crf', 'cam' or 'pred'"),
    ("loss.dense.impl", "fast", "'auto', 'exact' or 'lattice'"),
    ("train.supervision", "ful", "'weak' or 'full'"),
    ("pseudo.workers", -2, "'auto' or greater than or equal to 0"),
    ("pseudo.workers", "many", "'auto'"),
    ("pseudo.fg_percentile", 1.2, "less than or equal to 1"),
    ("loss.reassign.warmup", -0.1, "greater than or equal to 0"),
])
def test_a_bad_single_stage_setting_names_its_key(key, value, allowed):
    err = _problem("aal", {key: value})
    assert err.key == key and allowed in err.message


@pytest.mark.parametrize("key,value", [
    ("loss.dense.impl", "exact"), ("loss.dense.impl", "lattice"), ("loss.dense.impl", "auto"),
    ("pseudo.workers", "auto"), ("pseudo.workers", 0), ("pseudo.workers", 6),
    ("train.autocast", "bf16"), ("train.supervision", "full"), ("train.device", "cuda:1"),
    ("train.epochs", 3.0), ("model.weights", None), ("model.weights", "none"),
])
def test_every_documented_value_is_accepted(key, value):
    settings = METHODS["aal"].resolve({key: value})
    node = settings
    for part in key.split("."):
        node = node[part]
    assert node == value and type(node) is (int if key == "train.epochs" else type(value))


def test_an_unknown_key_suggests_the_close_one_and_lists_the_section():
    err = _problem("aal", {"train.lrr": 0.1})
    assert err.key == "train.lrr" and "did you mean 'lr'" in err.message and "momentum" in err.message
    err = _problem("aal", {"data": {"name": "synthetic", "colour": 1}})
    assert err.key == "data.colour" and "num_train" in err.message


def test_checks_across_settings_name_the_setting_at_fault():
    err = _problem("sccam", {"sccam.rounds": 9, "train.epochs": 4})
    assert err.key == "sccam.rounds" and err.value == 9 and "train.epochs (4)" in err.message
    err = _problem("aal", {"train.scale_min": 2.0})
    assert err.key == "train.scale_min" and err.value == 2.0
    err = _problem("aal", {"data": {"min_radius": 30.0}})
    assert err.key == "data.min_radius" and err.value == 30.0
    err = _problem("mcis", {"train.nesterov": True, "train.optimizer": "adam"})
    assert err.key == "train.nesterov" and "optimizer sgd" in err.message


def test_an_unknown_dataset_names_data_name():
    err = _problem("aal", {"data": {"name": "voc2099"}})
    assert err.key == "data.name" and err.value == "voc2099" and "'voc'" in err.message


def test_sections_are_shared_not_copied():
    """A method extends the shared sections; it never redeclares them."""
    for m in METHODS.values():
        train = m.settings.model_fields["train"].annotation
        assert issubclass(train, TrainSettings)
        assert all(issubclass(f.annotation, LossTerm) for f in m.settings.model_fields["loss"].annotation.model_fields.values())
    assert issubclass(METHODS["aal"].settings.model_fields["pseudo"].annotation, PseudoLabelConfig)


def test_leaf_keys_lists_every_setting_once():
    keys = leaf_keys(METHODS["seam"].settings)
    assert "seam.ohem_ratio" in keys and "loss.er.weight" in keys and "train.lr" in keys
    assert not any(k.startswith("pseudo.") for k in keys)  # SEAM has no pseudo labels
