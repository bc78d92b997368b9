"""Tests for trainables/settings/tree.py: flatten/unflatten, merge, key checking."""

from __future__ import annotations

import copy

import pytest

from trainables.settings.tree import ConfigError, flatten, merge, unflatten

TREE = {
    "model": {"backbone": "small_cnn", "width": 32, "weights": None},
    "train": {"lr": 0.02, "epochs": 8, "opt": {"momentum": 0.9}},
    "cam": {"scales": [1.0, 0.5]},
    "seed": 0,
}


def test_flatten_hand_case():
    assert flatten(TREE) == {
        "model.backbone": "small_cnn",
        "model.width": 32,
        "model.weights": None,
        "train.lr": 0.02,
        "train.epochs": 8,
        "train.opt.momentum": 0.9,
        "cam.scales": [1.0, 0.5],
        "seed": 0,
    }


def test_flatten_unflatten_round_trip():
    assert unflatten(flatten(TREE)) == TREE
    flat = {"a.b.c": 1, "a.d": 2, "e": 3}
    assert flatten(unflatten(flat)) == flat
    assert unflatten(flat) == {"a": {"b": {"c": 1}, "d": 2}, "e": 3}


def test_flatten_keeps_empty_mapping_as_leaf():
    assert flatten({"a": {}, "b": {"c": {}}}) == {"a": {}, "b.c": {}}
    assert unflatten(flatten({"a": {}})) == {"a": {}}


def test_merge_nested_and_dotted_overrides():
    base = copy.deepcopy(TREE)
    out = merge(base, {"train.lr": 0.1, "model": {"width": 64}, "train": {"opt": {"momentum": 0.0}}})
    assert out["train"]["lr"] == 0.1
    assert out["model"] == {"backbone": "small_cnn", "width": 64, "weights": None}
    assert out["train"]["opt"] == {"momentum": 0.0}
    assert out["train"]["epochs"] == 8  # untouched siblings are kept
    assert base == TREE  # the base is not modified


def test_merge_adds_new_keys_and_replaces_leaf_with_section():
    out = merge({"a": 1, "b": {"c": 2}}, {"a.x": 3, "b.d.e": 4, "f": 5})
    assert out == {"a": {"x": 3}, "b": {"c": 2, "d": {"e": 4}}, "f": 5}


def test_merge_empty_section_keeps_the_base_section():
    assert merge({"eval": {"crf": False}, "x": 1}, {"eval": {}}) == {"eval": {"crf": False}, "x": 1}
    assert merge({"x": 1}, {"eval": {}}) == {"x": 1, "eval": {}}


def test_merge_copies_values():
    scales = [1.0]
    out = merge({}, {"cam": {"scales": scales}})
    out["cam"]["scales"].append(2.0)
    assert scales == [1.0]
    base = {"cam": {"scales": [1.0]}}
    out = merge(base, {})
    out["cam"]["scales"].append(2.0)
    assert base["cam"]["scales"] == [1.0]


def test_config_error_message():
    err = ConfigError("train.lr", "x", "must be a number")
    assert str(err) == "train.lr='x': must be a number"
    assert isinstance(err, ValueError)
