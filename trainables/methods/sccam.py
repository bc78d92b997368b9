"""SC-CAM (Chang et al., CVPR 2020; docs/baselines.md): sub-category exploration. Besides the parent
classifier, a second 1x1 head scores C*K sub-categories; each round clusters, per parent class,
the GAP features of the training images that contain it into K groups (scikit-learn's KMeans
with the code's arguments, subcategory.py) and trains L = L_cls(parent) + lambda * L_cls(sub)
with lambda = ``loss.sub.weight`` (5 in the paper). The output is the parent CAM.

Rounds: the features of round r come from the model that ended round r-1 (the start weights,
i.e. the shared classification checkpoint, a plain CAM model: SC-CAM's round 0, before round
1), and every round retrains from the start weights, as the paper does. The trial's
``train.epochs`` are split over ``sccam.rounds`` (loop/train.py round_epochs), so SC-CAM gets the
same training budget per trial as every other method; set ``train.epochs`` to rounds x epochs
for the paper's full-length rounds. ``train/round`` and the CAM metrics after each round's last
epoch show what each round did.
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from trainables.data.dataset import SegmentationDataset, eval_batches
from trainables.losses.classification import classification_loss
from trainables.methods.cam import CamMethodSettings, CamTrainer
from trainables.nets.cam import CamNet
from trainables.pseudo.subcategory import subcategory_labels
from trainables.settings.sections import ClassificationLosses, LossTerm, PositiveInt, Section


class SccamSection(Section):
    """SC-CAM's own settings."""

    k: PositiveInt = 10
    """Sub-categories per class (10 in the paper)."""
    rounds: PositiveInt = 3
    """Rounds of clustering + training; the trial's train.epochs are split over them."""
    feature_norm: Literal["none", "l2"] = "none"
    """none: the public code clusters raw GAP features; l2: normalised ones."""
    kmeans_n_init: PositiveInt = 10
    """k-means runs per class, the lowest-inertia one kept (10: scikit-learn's default when the
    code was written; 1 with kmeans_max_iter 50 is close to this harness's earlier single run)."""
    kmeans_max_iter: PositiveInt = 300
    """Lloyd iterations per k-means run at most (300, as the code passes)."""
    feature_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    """Dropout2d rate on the backbone features before pooling, in training only (0.5, the
    code's dropout7); 0 turns it off."""
    head_init: Literal["xavier_uniform", "torch"] = "xavier_uniform"
    """Initial weights of the parent and sub-category heads: xavier_uniform (gain 1, the code)
    or torch (nn.Conv2d's default). Start weights, when loaded, replace the parent head's."""


class SccamLosses(ClassificationLosses):
    sub: LossTerm = LossTerm(weight=5.0)
    """L_sub, the sub-category classification loss (lambda = 5 in the paper)."""


class SccamSettings(CamMethodSettings):
    sccam: SccamSection = SccamSection()
    loss: SccamLosses = SccamLosses()

    @model_validator(mode="after")
    def _rounds_fit(self) -> "SccamSettings":
        if self.sccam.rounds > self.train.epochs:
            raise ValueError(f"sccam.rounds: must be between 1 and train.epochs ({self.train.epochs}): "
                             "the trial's epochs are split over the rounds")
        return self


class SubcategoryNet(CamNet):
    """CAM network + a 1x1 sub-category classifier over C*K outputs; ``sub_logits`` (B, C*K) is
    it applied to the GAP features (the paper's second fc layer).

    As the code's network/resnet38_cls.py: in training, Dropout2d(``feature_dropout``) drops
    whole feature channels before pooling (line 46), so both heads and ``pooled`` see the dropped
    features; in eval mode it is the identity, so CAMs and clustering features are the
    undropped ones (forward_two_cam, line 92, skips it). Both heads start from xavier_uniform
    weights (lines 36-37) unless ``head_init`` is "torch".
    """

    def __init__(self, model_cfg: dict, num_fg: int, k: int, feature_dropout: float = 0.5,
                 head_init: str = "xavier_uniform"):
        super().__init__(model_cfg, num_fg)
        self.sub_classifier = nn.Conv2d(self.backbone.out_channels, num_fg * k, 1, bias=False)
        self.feature_dropout = nn.Dropout2d(feature_dropout)
        if head_init == "xavier_uniform":
            nn.init.xavier_uniform_(self.classifier.weight)
            nn.init.xavier_uniform_(self.sub_classifier.weight)
        elif head_init != "torch":
            raise ValueError(f"sccam.head_init must be 'xavier_uniform' or 'torch', got {head_init!r}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.feature_dropout(self.backbone(self.prepare_input(x))))
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


class SccamTrainer(CamTrainer):
    """Parent and sub-category classification; each round clusters with the last round's model."""

    def build(self) -> SubcategoryNet:
        s = self.cfg["sccam"]
        return SubcategoryNet(self.cfg["model"], self.ds.num_fg, int(s["k"]),
                              feature_dropout=float(s["feature_dropout"]), head_init=str(s["head_init"]))

    def rounds(self) -> int:
        return int(self.cfg["sccam"]["rounds"])

    def begin_round(self, r: int, previous: nn.Module) -> None:
        """Sub-category labels for round ``r`` from the previous round's model (SC-CAM §3). k-means
        gets the trial seed in every round, as the code passes random_state=0 in every round
        (create_pseudo_label.py:185)."""
        s = self.cfg["sccam"]
        feats = image_features(previous, self.ds, self.cfg, self.device)
        sub = subcategory_labels(feats, self.ds.train.labels, int(s["k"]), seed=int(self.cfg["train"]["seed"]),
                                 feature_norm=str(s["feature_norm"]), n_init=int(s["kmeans_n_init"]),
                                 max_iter=int(s["kmeans_max_iter"]))
        self.state["sub_labels"], self.state["sub_sizes"] = sub.labels, sub.sizes

    def terms(self, net: Callable, batch, progress: float, epoch: int) -> dict[str, torch.Tensor]:
        """L_cls on the parent logits and L_sub on the sub-category logits (both multilabel
        soft-margin)."""
        out = net(batch.image.to(self.device))
        sub = torch.from_numpy(self.state["sub_labels"][batch.index]).to(self.device)
        return {"cls": classification_loss(out["logits"], batch.labels.to(self.device)),
                "sub": classification_loss(out["sub_logits"], sub)}
