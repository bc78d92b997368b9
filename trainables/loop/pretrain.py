"""Classification pretraining: the checkpoint every trial of every method starts from.

RRM trains its single-stage model from a classification checkpoint (``train_from_cls_weight``,
docs/single_stage.md §4) so that CAMs are meaningful from the first step. Here that checkpoint
is trained once per (data, model, pretrain and augmentation settings, seed) with the multilabel
loss only, through the same loop as every method (:func:`trainables.loop.train.run`: Adam at
``pretrain.lr`` for every layer, the trial's poly power and autocast), cached on disk, and
shared by every trial of a study: the study driver builds it before any trial starts, and a
trial whose searched settings change the key trains its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import torch
from torch import nn

from trainables.data.dataset import SegmentationDataset, cache_dir
from trainables.loop.reporting import LogReporter
from trainables.loop.train import Trainer, run
from trainables.losses.classification import classification_loss
from trainables.nets.segmentation import SingleStageNet

PRETRAIN_VERSION = 2  # 2: trained by the one loop (the trial's poly power and autocast)


def pretrain_settings(cfg: dict) -> dict:
    """The trial's settings as the pretraining run sees them: ``pretrain`` epochs, batch size,
    learning rate and weight decay, Adam with no new-layer or bias multiplier and the poly
    schedule (whatever the method's recipe), no fault injection, the trial's augmentation, seed,
    poly power and autocast."""
    p, t = cfg["pretrain"], cfg["train"]
    train = {**t, "epochs": p["epochs"], "batch_size": p["batch_size"], "lr": p["lr"], "weight_decay": p["weight_decay"],
             "optimizer": "adam", "new_layer_lr_mult": 1.0, "bias_lr_mult": 1.0, "nesterov": False, "schedule": "poly",
             "inject_nan_epoch": 0}
    return {**cfg, "train": train, "loss": {"cls": {"enabled": True, "weight": 1.0}}}


def pretrain_key(cfg: dict) -> str:
    """Cache key: everything the pretrained weights depend on (not the saliency maps, which the
    classifier never reads: one checkpoint serves MCIS with and without them, and every method)."""
    t = cfg["train"]
    data = {k: v for k, v in cfg["data"].items() if k != "saliency"}
    relevant = {"v": PRETRAIN_VERSION, "data": data, "model": cfg["model"], "pretrain": cfg["pretrain"],
                "train": {k: t[k] for k in ("seed", "crop", "scale_min", "scale_max", "flip", "poly_power", "autocast")}}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PretrainTrainer(Trainer):
    """The classifier alone: a :class:`SingleStageNet` (so its weights load into every method)
    trained with the multilabel soft-margin loss; no evaluation."""

    rng_offset = 7919  # its own data order, apart from the trials'

    def build(self) -> nn.Module:
        return SingleStageNet(self.cfg["model"], self.ds.num_fg)

    def terms(self, net, batch, progress, epoch):
        out = net(batch.image.to(self.device))
        return {"cls": classification_loss(out["logits"], batch.labels.to(self.device))}


def classification_pretrain(cfg: dict, ds: SegmentationDataset, device: torch.device,
                            log: Callable[[str], None] | None = None) -> dict:
    """State dict of a :class:`SingleStageNet` whose backbone and classifier were trained with
    the multilabel soft-margin loss; cached on disk (written atomically)."""
    path = cache_dir() / f"pretrain-{pretrain_key(cfg)}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            path.unlink(missing_ok=True)
    pcfg = pretrain_settings(cfg)
    reporter = LogReporter("pretrain", int(pcfg["train"]["epochs"]), log)
    _, model = run(PretrainTrainer(pcfg, ds, device), reporter)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state
