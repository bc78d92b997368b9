"""Methods by name (the YAML ``method`` key): each is a trainable function and its defaults.

A method is one small module composing shared parts; variants of a method (ablations) are
settings of its defaults, never copies of its code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from trainables import cam_baseline, sccam, seam, single_stage
from trainables.cam_eval import check_cam_eval


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
    # Raises ConfigError for a configuration the method cannot run (checked before any trial).
    check: Callable[[dict], None] = lambda cfg: None


METHODS: dict[str, Method] = {
    "aal": Method("aal", single_stage.train, single_stage.prepare, single_stage.DEFAULTS,
                  "single-stage model: CAM -> reliable pseudo labels -> segmentation branch (RRM/AALR)",
                  check_cam_eval),
    "cam": Method("cam", cam_baseline.train, cam_baseline.prepare, cam_baseline.DEFAULTS,
                  "CAM baseline: classifier + CAM, masks by a background threshold chosen on train",
                  check_cam_eval),
    "seam": Method("seam", seam.train, seam.prepare, seam.DEFAULTS,
                   "SEAM: siamese equivariant regularisation, PCM, equivariant cross regularisation (OHEM)",
                   seam.check),
    "sccam": Method("sccam", sccam.train, sccam.prepare, sccam.DEFAULTS,
                    "SC-CAM: sub-category classification over per-class k-means clusters, in rounds",
                    sccam.check),
}
