"""The method registry (trainables/methods/registry.py): the contract is checked when a method is
registered, with an error that names the method and the rule."""

from __future__ import annotations

import dataclasses

import pytest

from trainables.loop.train import Trainer
from trainables.methods.base import Claim, Method, MethodSettings, check_method
from trainables.methods.cam import CamMethodSettings, CamTrainer
from trainables.methods.registry import METHODS
from trainables.settings.sections import ClassificationLosses, Section


def _method(**changes) -> Method:
    return dataclasses.replace(Method("toy", "Toy", "a toy CAM method", CamMethodSettings, CamTrainer), **changes)


def test_a_method_that_meets_the_contract_is_accepted():
    check_method(_method(claims=(Claim("cam", ("A", "B")),)), METHODS)


class NotATerm(Section):
    weight: float = 1.0


class BadLosses(ClassificationLosses):
    extra: NotATerm = NotATerm()


class BadLossSettings(CamMethodSettings):
    loss: BadLosses = BadLosses()


class PlainSettings(Section):
    pass


@pytest.mark.parametrize("changes,rule", [
    ({"settings": PlainSettings}, "settings must be a MethodSettings subclass"),
    ({"trainer": object}, "trainer must be a trainables.loop.train.Trainer subclass"),
    ({"settings": BadLossSettings}, "loss.extra must be a LossTerm"),
    ({"claims": (Claim("ficklenet", ("A", "B")),)}, "claims an ordering over 'ficklenet'"),
])
def test_a_broken_method_is_refused_at_registration_naming_the_rule(changes, rule):
    with pytest.raises(TypeError, match="method 'toy': " + rule.replace("(", r"\(").replace(".", r"\.")):
        check_method(_method(**changes), METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_registered_method_meets_the_contract(method):
    m = METHODS[method]
    check_method(m, {k: v for k, v in METHODS.items() if k != method})
    assert issubclass(m.settings, MethodSettings) and issubclass(m.trainer, Trainer)
    assert m.label and m.summary
    for claim in m.claims:
        assert claim.over in METHODS and len(claim.published) == 2
