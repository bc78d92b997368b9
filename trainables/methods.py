"""Methods by name (the YAML ``method`` key): each is a trainable function and its defaults.

A method is one small module composing shared parts; variants of a method (ablations) are
settings of its defaults, never copies of its code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from trainables import cam_baseline, single_stage


@dataclass(frozen=True)
class Method:
    """A registered method: ``train(config)``, ``prepare(config)`` (run once by the driver before
    any trial: data, shared checkpoints; returns the dataset) and the defaults that define its
    valid keys."""

    name: str
    train: Callable[..., list[dict]]
    prepare: Callable[..., object]
    defaults: dict
    summary: str


METHODS: dict[str, Method] = {
    "aal": Method("aal", single_stage.train, single_stage.prepare, single_stage.DEFAULTS,
                  "single-stage model: CAM -> reliable pseudo labels -> segmentation branch (RRM/AALR)"),
    "cam": Method("cam", cam_baseline.train, cam_baseline.prepare, cam_baseline.DEFAULTS,
                  "CAM baseline: classifier + CAM, masks by a background threshold chosen on train"),
}
