"""The one training loop. Every method and the classification pretraining run through
:func:`run`: data order and augmentation, the poly schedule, autocast, the loss check, the
evaluation schedule (carrying val metrics forward between evaluations), checkpoints and resume,
the report, and rounds that restart from the start weights (SC-CAM).

A method supplies only what differs, as a :class:`Trainer` subclass: its network (``build``),
its loss terms for one step (``terms``), and optionally look-ahead work on the next batch
(``ahead``), its batch sampler (``batches``), rounds (``rounds``/``begin_round``), extra epoch
metrics and its evaluation. The loss is L = sum over the section ``loss`` of weight_k * L_k, over
the terms the trainer returns that are enabled with a non-zero weight.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from trainables.data.dataset import SegmentationDataset, TrainBatch, augment_batch


class Float32Net:
    """Calls ``model`` (with any keyword arguments its ``forward`` takes) under bfloat16 autocast
    when ``autocast == "bf16"`` and returns its outputs as float32 (so every loss and metric runs
    in float32); otherwise calls it as it is."""

    def __init__(self, model: nn.Module, autocast: str, device: torch.device):
        self.model, self.enabled, self.device_type = model, autocast == "bf16", device.type

    def __call__(self, x: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return self.model(x, **kwargs)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.model(x, **kwargs)
        return {k: v.float() for k, v in out.items()}


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def poly_lr(base: float, progress: float, power: float) -> float:
    """Polynomial decay: base * (1 - progress) ** power (the DeepLab / RRM schedule).

    Example:
        >>> round(poly_lr(0.1, 0.5, 1.0), 6)
        0.05
    """
    return base * (1.0 - progress) ** power


def build_optimizer(model: nn.Module, train: dict) -> torch.optim.Optimizer:
    """SGD or Adam with the new layers at ``new_layer_lr_mult`` x lr (RRM, SEAM and SC-CAM all
    train new layers 10x faster) and each group's biases at ``bias_lr_mult`` x its lr (MCIS's
    code: 2); ``model.parameter_groups()`` gives (backbone, new). An empty bias group is left out."""
    lr, mult, bias = float(train["lr"]), float(train["new_layer_lr_mult"]), float(train["bias_lr_mult"])
    biases = {id(p) for name, p in model.named_parameters() if name.endswith("bias")} if bias != 1.0 else set()
    groups = []
    for params, base in zip(model.parameter_groups(), (lr, lr * mult)):
        groups.append({"params": [p for p in params if id(p) not in biases], "lr": base, "base_lr": base})
        if any(id(p) in biases for p in params):
            rate = base * bias
            groups.append({"params": [p for p in params if id(p) in biases], "lr": rate, "base_lr": rate})
    if train["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=train["weight_decay"])
    return torch.optim.SGD(groups, lr=lr, momentum=train["momentum"], weight_decay=train["weight_decay"],
                           nesterov=bool(train["nesterov"]))


def lr_factor(train: dict, progress: float, epoch: int) -> float:
    """The schedule's multiple of every group's base lr at ``progress`` (0-1) through the round,
    in its 0-based ``epoch``: poly decay, or ``lr_step_factor`` once per step epoch passed
    (MCIS's code, ``my_optim.reduce_lr``: 0.1 from epoch 5, 0.01 from epoch 10).

    Example:
        >>> t = {"schedule": "step", "lr_steps": [5, 10], "lr_step_factor": 0.1, "poly_power": 0.9}
        >>> [round(lr_factor(t, 0.0, e), 6) for e in (0, 4, 5, 9, 10, 14)]
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
        >>> lr_factor({**t, "schedule": "poly", "poly_power": 1.0}, 0.25, 3)
        0.75
    """
    if train["schedule"] == "step":
        return float(train["lr_step_factor"]) ** sum(epoch >= int(s) for s in train["lr_steps"])
    return poly_lr(1.0, progress, float(train["poly_power"]))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group at its ``base_lr`` times ``factor`` (:func:`lr_factor`)."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


def check_loss(loss: torch.Tensor, train: dict, epoch: int, step: int, terms: dict[str, float]) -> torch.Tensor:
    """The step's loss, or :class:`FloatingPointError` naming the epoch, step and loss terms
    when it is not finite (with ``train.inject_nan_epoch``, made NaN on purpose)."""
    if int(train["inject_nan_epoch"]) == epoch + 1 and step == 0:
        loss = loss * float("nan")
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, step {step + 1}: "
                                 + ", ".join(f"{k}={v:.4g}" for k, v in terms.items()))
    return loss


def round_epochs(epochs: int, rounds: int) -> list[int]:
    """Split the trial's epochs over its rounds, earlier rounds taking the remainder.

    Example:
        >>> round_epochs(7, 3)
        [3, 2, 2]
    """
    if rounds < 1 or rounds > epochs:
        raise ValueError(f"rounds={rounds}: need 1 <= rounds <= train.epochs ({epochs})")
    return [epochs // rounds + (1 if r < epochs % rounds else 0) for r in range(rounds)]


class Trainer:
    """A method's part of the loop. ``cfg`` is the trial's validated settings (a nested dict);
    ``state`` is saved in every checkpoint and restored on resume (e.g. SC-CAM's labels).
    Override :meth:`build` and :meth:`terms`; the other hooks have working defaults."""

    rng_offset = 0  # added to train.seed for the data order (the pretraining has its own stream)

    def __init__(self, cfg: dict, ds: SegmentationDataset, device: torch.device):
        self.cfg, self.ds, self.device = cfg, ds, device
        self.state: dict = {}

    def build(self) -> nn.Module:
        """The network (on the CPU; the loop moves it). It has ``parameter_groups()``."""
        raise NotImplementedError

    def terms(self, net: Callable, batch: TrainBatch, progress: float, epoch: int) -> dict[str, torch.Tensor]:
        """The loss terms of one step, by their names in the ``loss`` section."""
        raise NotImplementedError

    def ahead(self, net: Callable, batch: TrainBatch, epoch: int) -> None:
        """Called with the next batch before the current step runs (work to overlap with it)."""

    def batches(self, rng: np.random.Generator, batch_size: int, steps: int) -> list[np.ndarray]:
        """The training images of each step of an epoch (default: a random permutation)."""
        order = rng.permutation(len(self.ds.train))
        return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]

    def rounds(self) -> int:
        return 1

    def begin_round(self, r: int, previous: nn.Module) -> None:
        """Before round ``r`` starts from the start weights; ``previous`` ended the last round."""

    def epoch_metrics(self) -> dict:
        """Metrics of the epoch that just ended beside the losses (counters reset here)."""
        return {}

    def evaluate(self, model: nn.Module, net: Callable, save_dir) -> dict:
        """Metrics on val (model in eval mode); ``save_dir`` receives predictions, or is None.
        When :attr:`panel` is set, hand it the CAMs and outputs of its images as they are computed."""
        return {}

    panel = None  # the ReviewPanel of the evaluation running now (evaluation/review.py), or None

    def new_panel(self):
        """The review panel of one evaluation: ``eval.review_images`` val images (0: none) and
        the per-image confusion matrices of every val image."""
        from trainables.evaluation.review import ReviewPanel

        return ReviewPanel(self.ds, int(self.cfg["eval"]["review_images"]))

    def review(self, net: Callable, panel) -> None:
        """After :meth:`evaluate`: add what the evaluation did not compute to ``panel`` (e.g. the
        single-stage model's CAMs and the pseudo labels of training images)."""

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.cfg["train"])

    def close(self) -> None:
        """Release what the trainer started (worker processes)."""


def run(trainer: Trainer, reporter, start_weights: Callable[[nn.Module], None] = lambda m: None,
        outputs: Callable | None = None) -> tuple[list[dict], nn.Module]:
    """Train ``trainer``'s method for ``train.epochs`` over its rounds; report every epoch.
    ``start_weights(model)`` initialises a round's fresh network; ``outputs(kind, final)`` is a
    context manager giving the folder for an evaluation's files of ``kind`` ("predictions":
    the last evaluation's val predictions; "review": the figure grid's panel), or None.
    Returns the history (the reporter's, restored ones included) and the final model; the
    trainer is closed however the run ends."""
    try:
        return _run(trainer, reporter, start_weights, outputs)
    finally:
        trainer.close()


def _run(trainer: Trainer, reporter, start_weights, outputs) -> tuple[list[dict], nn.Module]:
    t = trainer.cfg["train"]
    saved = reporter.restore()
    epoch = int(saved["epoch"]) if saved else 0
    rng = np.random.default_rng(saved["rng_seed"] if saved else int(t["seed"]) + trainer.rng_offset)
    trainer.state.update(saved.get("extra", {}) if saved else {})
    history = list(reporter.history)
    model = None
    if saved is not None:  # the model that ended the last finished epoch (a round may start from it)
        model = _build(trainer)
        model.load_state_dict(saved["model"])
    bounds = np.cumsum([0, *round_epochs(int(t["epochs"]), trainer.rounds())])
    for r in range(len(bounds) - 1):
        first, last = int(bounds[r]), int(bounds[r + 1])
        if epoch >= last:
            continue
        resuming = saved is not None and epoch > first
        model, optimizer = _start_round(trainer, r, resuming, saved, model, start_weights)
        if resuming and "torch_rng" in saved:  # dropout masks continue as in an uninterrupted run
            _torch_rng(trainer.device, saved["torch_rng"])
        for epoch in range(epoch, last):
            metrics = _epoch(trainer, model, optimizer, rng, epoch, (r, first, last), history, outputs)
            ckpt = None
            if reporter.checkpoints and (epoch + 1 == last or (epoch + 1) % int(t["checkpoint_every"]) == 0):
                # The data order after a checkpoint is drawn from a seed saved in it, and torch's
                # random state (dropout) is saved too, so a resumed run continues exactly as an
                # uninterrupted one.
                ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                        "rng_seed": int(rng.integers(2**31)), "extra": dict(trainer.state),
                        "torch_rng": _torch_rng(trainer.device)}
                rng = np.random.default_rng(ckpt["rng_seed"])
            history.append(metrics)
            reporter.report(metrics, ckpt)
        epoch = last
    return history, model


def _start_round(trainer: Trainer, r: int, resuming: bool, saved: dict | None, previous: nn.Module | None,
                 start_weights: Callable[[nn.Module], None]) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A fresh network and optimizer for round ``r``: from the checkpoint when resuming inside
    the round, else from the start weights (after the method's ``begin_round``)."""
    torch.manual_seed(int(trainer.cfg["train"]["seed"]) + 1000 * r)
    model = _build(trainer)
    optimizer = trainer.optimizer(model)
    if resuming:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    else:
        start_weights(model)
        trainer.begin_round(r, previous if previous is not None else model)
    model.train()
    return model, optimizer


def _torch_rng(device: torch.device, state: dict | None = None) -> dict:
    """torch's random state (CPU, and the device's on CUDA): returned, or restored from ``state``."""
    if state is not None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], device)
        return state
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _build(trainer: Trainer) -> nn.Module:
    """The trainer's network on its device, channels-last when ``model.channels_last`` (NHWC
    runs depthwise and 1x1 convolutions about 1.5x faster on CPU and suits tensor cores)."""
    model = trainer.build().to(trainer.device)
    if trainer.cfg["model"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


def _epoch(trainer: Trainer, model: nn.Module, optimizer, rng: np.random.Generator, epoch: int,
           bounds: tuple[int, int, int], history: list[dict], outputs) -> dict:
    """Train one epoch, then evaluate (on schedule) or carry the last val metrics forward."""
    t, cfg = trainer.cfg["train"], trainer.cfg
    net = Float32Net(model, str(t["autocast"]), trainer.device)
    r, first, last = bounds
    n = len(trainer.ds.train)
    bs = min(int(t["batch_size"]), n)
    steps = max(1, n // bs)
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    for step, batch in enumerate(_lookahead(trainer, net, rng, bs, steps, epoch)):
        progress = ((epoch - first) * steps + step) / ((last - first) * steps)  # within the round
        set_lr(optimizer, lr_factor(t, progress, epoch - first))
        terms = trainer.terms(net, batch, progress, epoch)
        loss = _weighted_sum(terms, cfg["loss"], trainer)
        loss = check_loss(loss, t, epoch, step, {k: float(v.detach()) for k, v in terms.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, v in [*terms.items(), ("total", loss)]:
            sums[f"train/loss/{k}"] = sums.get(f"train/loss/{k}", 0.0) + float(v.detach())
    elapsed = time.perf_counter() - t0
    metrics = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}, **trainer.epoch_metrics(),
               "train/images_per_s": steps * bs / elapsed, "time/epoch_s": elapsed}
    if trainer.rounds() > 1:
        metrics["train/round"] = r + 1
    if epoch + 1 == last or not history or (epoch + 1) % int(cfg["eval"]["every"]) == 0:
        model.eval()
        final = epoch + 1 == int(t["epochs"])
        with outputs("predictions", final) if outputs else nullcontext() as save, \
                outputs("review", final) if outputs else nullcontext() as review_dir:
            trainer.panel = trainer.new_panel() if review_dir is not None else None
            metrics.update(trainer.evaluate(model, net, save))
            _save_review(trainer, net, review_dir, metrics)
        model.train()
    else:  # every report carries val/* (ASHA and the searcher read the metric each time)
        metrics.update({k: v for k, v in history[-1].items() if k.startswith(("val/", "train/cam"))})
    return metrics


def _save_review(trainer: Trainer, net: Callable, folder, metrics: dict) -> None:
    """The evaluation's review panel, completed by the method, saved into ``folder`` (the study
    driver renders it and logs it to the trial's MLflow run)."""
    panel, trainer.panel = trainer.panel, None
    if panel is None or folder is None:
        return
    trainer.review(net, panel)
    panel.save(folder, epoch=int(metrics["epoch"]),
               **{k.replace("/", "_"): float(v) for k, v in metrics.items()
                  if k in ("val/miou", "val/cam_miou", "train/cam_threshold")})


def _lookahead(trainer: Trainer, net: Callable, rng: np.random.Generator, bs: int, steps: int,
               epoch: int) -> Iterator[TrainBatch]:
    """The epoch's batches, each drawn (and handed to ``trainer.ahead``) one step early, so a
    method can overlap work on the next batch with this step. The draws, and so the data order,
    do not depend on what ``ahead`` does."""
    t = trainer.cfg["train"]
    indices = trainer.batches(rng, bs, steps)

    def draw(s: int) -> TrainBatch:
        batch = augment_batch(trainer.ds.train, indices[s], int(t["crop"]),
                              (float(t["scale_min"]), float(t["scale_max"])), bool(t["flip"]), rng)
        trainer.ahead(net, batch, epoch)
        return batch

    upcoming = draw(0)
    for s in range(steps):
        batch, upcoming = upcoming, (draw(s + 1) if s + 1 < steps else None)
        yield batch


def _weighted_sum(terms: dict[str, torch.Tensor], loss_cfg: dict, trainer: Trainer) -> torch.Tensor:
    """sum_k w_k L_k over the returned terms that are enabled with a non-zero weight, in the
    order of the ``loss`` section."""
    unknown = set(terms) - set(loss_cfg)
    if unknown:
        raise KeyError(f"{type(trainer).__name__} returned loss term(s) {sorted(unknown)} that its settings' "
                       f"loss section does not declare ({', '.join(loss_cfg)})")
    loss = 0.0
    for name, term in loss_cfg.items():
        if name in terms and term["enabled"] and term["weight"] != 0.0:
            loss = loss + float(term["weight"]) * terms[name]
    return loss

