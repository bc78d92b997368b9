"""CAM (Zhou et al., CVPR 2016), the floor every method is measured against
(docs/baselines.md): backbone, 1x1 classifier without bias, GAP, multilabel soft-margin loss;
the mask is argmax([t; normalised CAMs of the present classes]) with t chosen on train
(evaluation/cam_eval.py).

:class:`CamTrainer` is also what every classification method (SEAM, SC-CAM) shares: its
evaluation is the fair CAM evaluation, by the CAMs :meth:`CamTrainer.cam_fn` gives.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trainables.evaluation.cam_eval import as_segmentation_metrics, evaluate_cams
from trainables.loop.train import Trainer
from trainables.losses.classification import classification_loss
from trainables.methods.base import MethodSettings
from trainables.nets.cam import CamNet


class CamMethodSettings(MethodSettings):
    """CAM's settings are the shared sections as they are; ``cam.scales`` are the scales of the
    CAM passes at evaluation (SEAM: {0.5, 1, 1.5, 2} with ``eval.flip``)."""


class CamTrainer(Trainer):
    """The CAM network trained with L_cls alone, evaluated by its CAMs."""

    def build(self) -> nn.Module:
        return CamNet(self.cfg["model"], self.ds.num_fg)

    def terms(self, net: Callable, batch, progress: float, epoch: int) -> dict[str, torch.Tensor]:
        out = net(batch.image.to(self.device))
        return {"cls": classification_loss(out["logits"], batch.labels.to(self.device))}

    def cam_fn(self, net: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
        """The raw CAMs (B, C, h, w) the method is evaluated by."""
        return lambda z: net(z)["cam_raw"]

    def evaluate(self, model: nn.Module, net: Callable, save_dir) -> dict:
        return as_segmentation_metrics(evaluate_cams(self.cam_fn(net), self.ds, self.cfg, self.device, save_dir,
                                                    panel=self.panel))
