"""SC-CAM (Chang et al., CVPR 2020; baselines.md): sub-category exploration. Besides the parent
classifier, a second 1x1 head scores C*K sub-categories; each round clusters, per parent class,
the GAP features of the training images that contain it into K groups (k-means, fixed seed,
subcategory.py) and trains L = L_cls(parent) + lambda * L_cls(sub) with lambda =
``loss.sub.weight`` (5 in the paper). The output is the parent CAM.

Rounds: the features of round r come from the model that ended round r-1 (the start weights,
i.e. the shared classification checkpoint, a plain CAM model: SC-CAM's round 0, before round
1), and every round retrains from the start weights, as the paper does. The trial's
``train.epochs`` are split over ``sccam.rounds`` (classifier.round_epochs), so SC-CAM gets the
same training budget per trial as every other method; set ``train.epochs`` to rounds x epochs
for the paper's full-length rounds. ``train/round`` and the CAM metrics after each round's last
epoch show what each round did.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from trainables import losses
from trainables.cam_eval import check_cam_eval
from trainables.classifier import CAM_METHOD_DEFAULTS, CamNet, CamRecipe, train_cam_method
from trainables.config import ConfigError, merge
from trainables.data import SegmentationDataset, TrainBatch, eval_batches
from trainables.subcategory import subcategory_labels
from trainables.trial import prepare_study

DEFAULTS: dict = merge(CAM_METHOD_DEFAULTS, {
    # k: sub-categories per class (10 in the paper); feature_norm: "none" (the public code
    # clusters raw GAP features) or "l2".
    "sccam": {"k": 10, "rounds": 3, "feature_norm": "none", "kmeans_iters": 50},
    "loss": {"sub": {"weight": 5.0}},
})


def check(cfg: dict) -> None:
    """Settings SC-CAM cannot run with, before any trial starts."""
    check_cam_eval(cfg)
    s, epochs = cfg["sccam"], int(cfg["train"]["epochs"])
    if not 1 <= int(s["rounds"]) <= epochs:
        raise ConfigError("sccam.rounds", s["rounds"], f"must be between 1 and train.epochs ({epochs}): "
                          "the trial's epochs are split over the rounds")
    if int(s["k"]) < 1:
        raise ConfigError("sccam.k", s["k"], "must be at least 1")
    if s["feature_norm"] not in ("none", "l2"):
        raise ConfigError("sccam.feature_norm", s["feature_norm"], "choose none or l2")


class SubcategoryNet(CamNet):
    """CAM network + a 1x1 sub-category classifier over C*K outputs; ``sub_logits`` (B, C*K) is
    it applied to the GAP features (the paper's second fc layer)."""

    new_layer_prefixes = ("sub_classifier.",)

    def __init__(self, model_cfg: dict, num_fg: int, k: int):
        super().__init__(model_cfg, num_fg)
        self.sub_classifier = nn.Conv2d(self.backbone.out_channels, num_fg * k, 1, bias=False)
        self.finish_init()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        out["sub_logits"] = self.sub_classifier(out["pooled"][:, :, None, None]).flatten(1)
        return out


@torch.no_grad()
def image_features(model: CamNet, ds: SegmentationDataset, cfg: dict, device: torch.device) -> np.ndarray:
    """(N, F) GAP features of every training image, whole images, the model in eval mode."""
    was_training = model.training
    model.eval()
    feats = np.zeros((len(ds.train), model.backbone.out_channels), np.float32)
    for idx, x, _, _ in eval_batches(ds.train, int(cfg["eval"]["batch_size"])):
        feats[idx] = model(x.to(device))["pooled"].float().cpu().numpy()
    model.train(was_training)
    return feats


def begin_round(r: int, previous: CamNet, ds: SegmentationDataset, cfg: dict, state: dict) -> None:
    """Sub-category labels for round ``r`` from the previous round's model (SC-CAM §3)."""
    s = cfg["sccam"]
    feats = image_features(previous, ds, cfg, state["device"])
    sub = subcategory_labels(feats, ds.train.labels, int(s["k"]), seed=int(cfg["train"]["seed"]) + 100 * r,
                             feature_norm=str(s["feature_norm"]), iters=int(s["kmeans_iters"]))
    state["sub_labels"] = sub.labels
    state["sub_sizes"] = sub.sizes


def sccam_terms(net: Callable, batch: TrainBatch, cfg: dict, state: dict) -> dict[str, torch.Tensor]:
    """L_cls on the parent logits and L_sub on the sub-category logits (both multilabel
    soft-margin)."""
    out = net(batch.image.to(state["device"]))
    labels = batch.labels.to(out["logits"].device)
    sub = torch.from_numpy(state["sub_labels"][batch.index]).to(out["logits"].device)
    return {"cls": losses.classification_loss(out["logits"], labels),
            "sub": losses.classification_loss(out["sub_logits"], sub)}


RECIPE = CamRecipe(
    build=lambda cfg, num_fg: SubcategoryNet(cfg["model"], num_fg, int(cfg["sccam"]["k"])),
    terms=sccam_terms,
    rounds=lambda cfg: int(cfg["sccam"]["rounds"]),
    begin_round=begin_round,
)


def train(config: dict, reporter=None) -> list[dict]:
    """One SC-CAM trial (see :func:`trainables.classifier.train_cam_method`)."""
    return train_cam_method(config, RECIPE, DEFAULTS, reporter)


def prepare(config: dict, log: Callable[[str], None] = print):
    """Data and the shared classification checkpoint, once per study."""
    return prepare_study(config, DEFAULTS, log)
