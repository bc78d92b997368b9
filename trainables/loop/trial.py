"""A trial: the validated settings of one configuration, trained and evaluated by one
method's :class:`~trainables.loop.train.Trainer` through the one loop.

``train`` runs as a plain call (the reporter collects the history) and as a Ray Tune function
trainable (reports go to ``tune.report`` with a checkpoint, and a restarted trial resumes from
``tune.get_checkpoint()``). Every trial of every method starts from the shared classification
checkpoint (``pretrain.enabled``), so methods differ only where their papers do.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trainables.data.dataset import SegmentationDataset
from trainables.data.registry import load_dataset
from trainables.loop.pretrain import classification_pretrain
from trainables.loop.reporting import Reporter, default_reporter, in_tune_session, trial_output
from trainables.loop.train import resolve_device, run


def train(trainer_cls: type, cfg: dict, reporter: Reporter | None = None) -> list[dict]:
    """Train and evaluate the validated settings ``cfg`` with ``trainer_cls``; returns the
    per-epoch metrics (use ``METHODS[name].train(config)``, which validates ``config`` first)."""
    reporter = reporter or default_reporter()
    device = _set_up(cfg)
    ds = load_dataset(cfg["data"])
    save = bool(cfg["eval"]["save_predictions"])
    review = in_tune_session()  # the study driver logs a trial's review grid to MLflow

    def outputs(kind: str, final: bool):
        return trial_output(kind, enabled=final and save if kind == "predictions" else review)

    history, _ = run(trainer_cls(cfg, ds, device), reporter,
                     start_weights=lambda model: load_start_weights(model, cfg, ds, device), outputs=outputs)
    return history


def _set_up(cfg: dict) -> torch.device:
    """torch threads (``train.num_threads`` > 0) and the device."""
    t = cfg["train"]
    if int(t["num_threads"]) > 0:
        torch.set_num_threads(int(t["num_threads"]))
    return resolve_device(t["device"])


def load_start_weights(model: nn.Module, cfg: dict, ds: SegmentationDataset, device: torch.device) -> None:
    """Load the shared classification checkpoint's backbone and classifier into ``model`` (when
    ``pretrain.enabled``). The model's keys the checkpoint lacks are its new layers (trained
    from scratch); checkpoint keys the model lacks (another method's heads) are ignored; a key
    of both with another shape is an error (load_state_dict names it)."""
    if not cfg["pretrain"]["enabled"]:
        return
    state = classification_pretrain(cfg, ds, device)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def prepare_study(cfg: dict, log: Callable[[str], None] = print) -> SegmentationDataset:
    """Run once by the study driver before any trial, with validated settings: load (and
    cache) the data and build the shared classification checkpoint, so concurrent trials never
    race to create them."""
    ds = load_dataset(cfg["data"])
    if cfg["pretrain"]["enabled"]:
        classification_pretrain(cfg, ds, _set_up(cfg), log=log)
    return ds
