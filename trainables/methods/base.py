"""What a method is: its typed settings, its part of the training loop, and what the reports
say about it. The registry (``methods/registry.py``) lists one :class:`Method` per method.

The contract a method meets (checked by :func:`check_method` when it is registered):

- ``settings``: a subclass of :class:`MethodSettings` (every section typed, ``extra`` refused);
  every field of its ``loss`` section is a :class:`~trainables.settings.sections.LossTerm`
  (``enabled`` and ``weight``), and the terms its trainer returns are fields of that section.
- ``trainer``: a subclass of :class:`~trainables.loop.train.Trainer` supplying what differs
  from the shared loop (its network, its loss terms, and optionally rounds, a batch sampler,
  look-ahead work, evaluation).
- ``label`` for tables, ``summary`` for the plan, ``claims`` the published orderings it is
  checked against, ``baseline`` whether reports show its same-data rows beside every study.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import model_validator

from trainables.data.registry import DataSection
from trainables.data.synthetic import SyntheticData
from trainables.settings.sections import (ClassificationLosses, CamSection, EvalSettings, LossTerm, ModelSettings,
                                          PretrainSettings, Section, TrainSettings)


class MethodSettings(Section):
    """The sections every method has. A method subclasses this and overrides or adds sections."""

    data: DataSection = SyntheticData()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    pretrain: PretrainSettings = PretrainSettings()
    cam: CamSection = CamSection()
    loss: ClassificationLosses = ClassificationLosses()
    eval: EvalSettings = EvalSettings()

    @model_validator(mode="before")
    @classmethod
    def _data_name(cls, values: Any) -> Any:
        """A data section without ``name`` is the synthetic benchmark's."""
        if isinstance(values, dict) and isinstance(values.get("data"), dict) and "name" not in values["data"]:
            values = {**values, "data": {"name": "synthetic", **values["data"]}}
        return values


@dataclass(frozen=True)
class Claim:
    """A published ordering a method claims: it scores above method ``over``; ``published`` are
    the two rows of reports/baselines/voc12_cam_quality.csv that show it on VOC."""

    over: str
    published: tuple[str, str]


@dataclass(frozen=True)
class Method:
    """A registered method (see the module docstring for the contract)."""

    name: str
    label: str
    summary: str
    settings: type[MethodSettings]
    trainer: type  # a trainables.loop.train.Trainer subclass
    baseline: bool = False
    claims: tuple[Claim, ...] = ()

    def resolve(self, config: dict | None = None) -> dict:
        """The validated settings of one trial, as a nested dict (see Section.resolve)."""
        return self.settings.resolve(config)

    @property
    def defaults(self) -> dict:
        """Every setting at its default."""
        return self.settings.defaults()

    def train(self, config: dict, reporter=None) -> list[dict]:
        """One trial: validate ``config`` (nested or dotted keys over the defaults), train and
        evaluate it; returns the per-epoch metrics (inside Ray Tune, reported to Tune too).

        Example:
            >>> from trainables.methods.registry import METHODS
            >>> hist = METHODS["cam"].train({"data": {"num_train": 16, "num_val": 4, "image_size": 32},
            ...                              "model.width": 8, "pretrain.epochs": 1, "train.epochs": 1})
            >>> len(hist), sorted(k for k in hist[-1] if k.startswith("train/loss"))
            (1, ['train/loss/cls', 'train/loss/total'])
        """
        from trainables.loop.trial import train

        return train(self.trainer, self.resolve(config), reporter)

    def prepare(self, config: dict, log=print):
        """Run once by the study driver before any trial: the data and the shared
        classification checkpoint (so concurrent trials never race to create them)."""
        from trainables.loop.trial import prepare_study

        return prepare_study(self.resolve(config), log)


def check_method(method: Method, known: dict[str, Method]) -> None:
    """Raise TypeError naming the method and the rule it breaks (see the module docstring)."""
    from trainables.loop.train import Trainer

    def fail(rule: str) -> None:
        raise TypeError(f"method {method.name!r}: {rule}")

    if not (isinstance(method.settings, type) and issubclass(method.settings, MethodSettings)):
        fail("settings must be a MethodSettings subclass")
    if not (isinstance(method.trainer, type) and issubclass(method.trainer, Trainer)):
        fail("trainer must be a trainables.loop.train.Trainer subclass")
    loss = method.settings.model_fields["loss"].annotation
    for term, field in loss.model_fields.items():
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, LossTerm)):
            fail(f"loss.{term} must be a LossTerm (enabled, weight)")
    for claim in method.claims:
        if claim.over not in known and claim.over != method.name:
            fail(f"claims an ordering over {claim.over!r}, which is not registered before it")
