"""CAM (Zhou et al., CVPR 2016), the floor every method is measured against (baselines.md):
backbone, 1x1 classifier without bias, GAP, multilabel soft-margin loss; the mask is
argmax([t; normalised CAMs of the present classes]) with t chosen on train (cam_eval.py)."""

from __future__ import annotations

from typing import Callable

from trainables.classifier import CAM_METHOD_DEFAULTS, CamNet, CamRecipe, train_cam_method
from trainables.config import merge
from trainables.trial import prepare_study

DEFAULTS: dict = merge(CAM_METHOD_DEFAULTS, {})


class CamBaselineNet(CamNet):
    """The plain CAM network."""

    def __init__(self, model_cfg: dict, num_fg: int):
        super().__init__(model_cfg, num_fg)
        self.finish_init()


RECIPE = CamRecipe(build=lambda cfg, num_fg: CamBaselineNet(cfg["model"], num_fg))


def train(config: dict, reporter=None) -> list[dict]:
    """One CAM trial (see :func:`trainables.classifier.train_cam_method`)."""
    return train_cam_method(config, RECIPE, DEFAULTS, reporter)


def prepare(config: dict, log: Callable[[str], None] = print):
    """Data and the shared classification checkpoint, once per study."""
    return prepare_study(config, DEFAULTS, log)
