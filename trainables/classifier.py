"""The classification trainables (CAM, SEAM, SC-CAM): a CAM network and one training loop.

A method is a :class:`CamRecipe`: how to build its network, the loss terms of one step and, for
SC-CAM, what happens at the start of each round. Everything else is shared, so that the methods
differ only where their papers do: data and augmentation (``augment_batch``), the start weights
(the shared classification checkpoint, ``trial.load_start_weights``), the optimizer and poly
schedule, checkpoints, and the evaluation (``cam_eval``: threshold chosen on train, val masks).

The loss is sum_k w_k L_k over the terms the recipe returns, with w_k = ``loss.<k>.weight``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch
from torch import nn

from trainables import losses
from trainables.backbones import build_backbone
from trainables.cam_eval import CAM_EVAL_DEFAULTS, as_segmentation_metrics, evaluate_cams
from trainables.config import merge
from trainables.data import TrainBatch, augment_batch
from trainables.datasets import load_dataset
from trainables.pseudo_labels import CrfSettings
from trainables.trial import (MODEL_DEFAULTS, PRETRAIN_DEFAULTS, TRAIN_DEFAULTS, Float32Net, Reporter,
                              build_optimizer, check_loss, load_start_weights, set_lr, start_trial, trial_output)

# Settings every CAM method accepts; each method module adds its own section and loss terms.
CAM_METHOD_DEFAULTS: dict = {
    "data": {"name": "synthetic"},
    "model": dict(MODEL_DEFAULTS),
    "train": dict(TRAIN_DEFAULTS),
    "pretrain": dict(PRETRAIN_DEFAULTS),
    # Scales of the CAM passes at evaluation (SEAM: {0.5, 1, 1.5, 2} with flips, eval.flip).
    "cam": {"scales": [1.0]},
    "loss": {"cls": {"weight": 1.0}},
    # ``crf``: a dense CRF over [t; CAMs] refines the val masks (val/miou is then the refined
    # masks', val/miou_nocrf the raw ones'); CRF settings as for the test-time CRF.
    "eval": {"batch_size": 32, "every": 1, "crf": False, "flip": False, **CAM_EVAL_DEFAULTS,
             **{f.name: f.default for f in fields(CrfSettings)}},
}


class CamNet(nn.Module):
    """Backbone and a 1x1 classifier without bias (CAM, Zhou et al. 2016): ``cam_raw`` (B, C, h, w)
    is the classifier applied densely, ``logits`` (B, C) its global average (= the classifier on
    GAP features, since it has no bias), ``pooled`` (B, F) the GAP features.

    Parameter names match the single-stage network's, so the shared classification checkpoint
    loads into every method; a subclass lists its extra layers in ``new_layer_prefixes``.
    """

    new_layer_prefixes: tuple[str, ...] = ()

    def __init__(self, model_cfg: dict, num_fg: int):
        super().__init__()
        self.backbone = build_backbone(model_cfg)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_fg, 1, bias=False)
        self.stride = self.backbone.stride
        self.channels_last = bool(model_cfg.get("channels_last", True))

    def finish_init(self) -> None:
        """Call at the end of a subclass's ``__init__``: memory format for every layer."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        cam_raw = self.classifier(feats)
        return {"features": feats, "pooled": feats.mean(dim=(2, 3)), "cam_raw": cam_raw,
                "logits": cam_raw.mean(dim=(2, 3))}

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.backbone(self.prepare_input(x)))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters): new layers train at 10x lr."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


def classification_terms(net: Callable, batch: TrainBatch, cfg: dict, state: dict) -> dict[str, torch.Tensor]:
    """CAM's only term: L_cls, the multilabel soft-margin loss on the GAP logits."""
    out = net(batch.image.to(state["device"]))
    return {"cls": losses.classification_loss(out["logits"], batch.labels.to(out["logits"].device))}


@dataclass(frozen=True)
class CamRecipe:
    """A CAM method for :func:`train_cam_method`.

    ``build(cfg, num_fg)`` makes the network; ``terms(net, batch, cfg, state)`` returns the step's
    loss terms by name (``state`` holds ``device`` and whatever ``begin_round`` stored);
    ``cam_fn(net, cfg)`` the raw CAMs it is evaluated by; ``rounds(cfg)`` how many times training
    restarts from the start weights (SC-CAM), with ``begin_round(round, previous_model, ds, cfg,
    state)`` called before each, given the model that ended the previous round (the start
    weights before the first).
    """

    build: Callable[[dict, int], CamNet]
    terms: Callable[..., dict[str, torch.Tensor]] = classification_terms
    cam_fn: Callable[[Callable, dict], Callable[[torch.Tensor], torch.Tensor]] = (
        lambda net, cfg: (lambda z: net(z)["cam_raw"]))
    rounds: Callable[[dict], int] = lambda cfg: 1
    begin_round: Callable[..., None] | None = None


def round_epochs(epochs: int, rounds: int) -> list[int]:
    """Split the trial's epochs over its rounds, earlier rounds taking the remainder.

    Example:
        >>> round_epochs(7, 3)
        [3, 2, 2]
    """
    if rounds < 1 or rounds > epochs:
        raise ValueError(f"rounds={rounds}: need 1 <= rounds <= train.epochs ({epochs})")
    return [epochs // rounds + (1 if r < epochs % rounds else 0) for r in range(rounds)]


def _train_epoch(net: Callable, optimizer: torch.optim.Optimizer, recipe: CamRecipe, split, cfg: dict, state: dict,
                 rng: np.random.Generator, progress: np.ndarray, bs: int, epoch: int) -> dict[str, float]:
    """One epoch of steps (``progress``: each step's place in the poly schedule); returns the
    summed loss terms (train/loss/<term> and train/loss/total)."""
    t = cfg["train"]
    order = rng.permutation(len(split))
    sums: dict[str, float] = {}
    for step, p in enumerate(progress):
        set_lr(optimizer, float(p), t["poly_power"])
        batch = augment_batch(split, order[step * bs : (step + 1) * bs], int(t["crop"]),
                              (float(t["scale_min"]), float(t["scale_max"])), bool(t["flip"]), rng)
        terms = recipe.terms(net, batch, cfg, state)
        loss = sum(float(cfg["loss"][k]["weight"]) * v for k, v in terms.items())
        loss = check_loss(loss, cfg, epoch, step, {k: float(v) for k, v in terms.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, v in [*terms.items(), ("total", loss)]:
            sums[f"train/loss/{k}"] = sums.get(f"train/loss/{k}", 0.0) + float(v.detach())
    return sums


def train_cam_method(config: dict, recipe: CamRecipe, defaults: dict, reporter: Reporter | None = None) -> list[dict]:
    """Train and evaluate one configuration of a CAM method; returns the per-epoch metrics
    (reported to Ray Tune with checkpoints inside a trial, else to ``reporter``)."""
    cfg = merge(defaults, config)
    reporter, device = start_trial(cfg, reporter)
    t = cfg["train"]
    ds = load_dataset(cfg["data"])
    plan = round_epochs(int(t["epochs"]), int(recipe.rounds(cfg)))
    bs = min(int(t["batch_size"]), len(ds.train))
    steps = max(1, len(ds.train) // bs)
    seed = int(t["seed"])

    saved = reporter.restore()
    epoch = int(saved["epoch"]) if saved else 0
    rng = np.random.default_rng(saved["rng_seed"] if saved else seed)
    state: dict = {"device": device, **(saved.get("extra", {}) if saved else {})}
    history = list(getattr(reporter, "history", []))
    model = None
    if saved is not None:  # the model that ended the last finished epoch (a round may start from it)
        model = recipe.build(cfg, ds.num_fg).to(device)
        model.load_state_dict(saved["model"])
    bounds = np.cumsum([0, *plan])
    for r, n_epochs in enumerate(plan):
        first, last = int(bounds[r]), int(bounds[r + 1])
        if epoch >= last:
            continue
        torch.manual_seed(seed + 1000 * r)
        fresh = recipe.build(cfg, ds.num_fg).to(device)
        optimizer = build_optimizer(fresh, cfg)
        if saved is not None and epoch > first:  # resuming inside this round
            fresh.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        else:
            load_start_weights(fresh, cfg, ds, device)
            if recipe.begin_round is not None:
                recipe.begin_round(r, model if model is not None else fresh, ds, cfg, state)
        model = fresh
        net = Float32Net(model, str(t["autocast"]), device)
        model.train()
        for epoch in range(epoch, last):
            t0 = time.perf_counter()
            progress = ((epoch - first) * steps + np.arange(steps)) / (n_epochs * steps)  # within the round
            sums = _train_epoch(net, optimizer, recipe, ds.train, cfg, state, rng, progress, bs, epoch)
            elapsed = time.perf_counter() - t0
            metrics = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()},
                       "train/images_per_s": steps * bs / elapsed, "time/epoch_s": elapsed}
            if len(plan) > 1:
                metrics["train/round"] = r + 1
            done = epoch + 1 == last
            if done or not history or (epoch + 1) % int(cfg["eval"]["every"]) == 0:
                model.eval()
                final = epoch + 1 == int(t["epochs"])
                with trial_output("predictions", enabled=final and cfg["eval"]["save_predictions"]) as save:
                    metrics.update(as_segmentation_metrics(evaluate_cams(recipe.cam_fn(net, cfg), ds, cfg, device, save)))
                model.train()
            else:  # every report carries val/* for ASHA and the searcher
                metrics.update({k: v for k, v in history[-1].items() if k.startswith(("val/", "train/cam"))})
            ckpt = None
            if done or (epoch + 1) % int(t["checkpoint_every"]) == 0:
                ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                        "rng_seed": int(rng.integers(2**31)),
                        "extra": {k: v for k, v in state.items() if k != "device"}}
                rng = np.random.default_rng(ckpt["rng_seed"])
            history.append(metrics)
            reporter.report(metrics, ckpt)
        epoch = last
    return history
