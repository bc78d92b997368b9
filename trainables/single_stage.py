"""The single-stage WSSS trainable (RRM lineage, spec single_stage.md).

``train(config)`` is the whole trial: data, model, CAMs -> reliable pseudo labels -> loss terms,
evaluation on val, and a report each epoch. It runs as a plain call (``reporter`` collects the
history) and as a Ray Tune function trainable (reports go to ``tune.report`` with a checkpoint,
and a restarted trial resumes from ``tune.get_checkpoint()``).

The loss is L = w_cls L_cls + sum of enabled terms w_k L_k; each term is an entry of
:data:`LOSS_TERMS`, a function of the step's :class:`StepContext`, so new losses plug in there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from trainables import losses
from trainables.affinity import affinity_loss, pixel_confidence
from trainables.cam import background_score, multiscale_cams
from trainables.cam_eval import CAM_EVAL_DEFAULTS, evaluate_cams
from trainables.config import merge
from trainables.data import IGNORE_INDEX, SegmentationDataset, TrainBatch, augment_batch, eval_batches
from trainables.datasets import load_dataset
from trainables.decoupling import decoupled_weights, weighted_balanced_ce_loss
from trainables.dense_energy import dense_energy_loss
from trainables.imagefiles import write_palette_png
from trainables.metrics import confusion_matrix, mean_iou, per_class_iou, pseudo_label_quality
from trainables.model import SingleStageNet, frozen_bn_stats
from trainables.pseudo_labels import CrfSettings, PseudoLabelConfig, PseudoLabeler, dense_crf
from trainables.reassign import label_reassign_loss
from trainables.trial import (MODEL_DEFAULTS, PRETRAIN_DEFAULTS, TRAIN_DEFAULTS, Float32Net, Reporter, build_optimizer,
                              check_loss, load_start_weights, prepare_study, set_lr, start_trial, trial_output)

DEFAULTS: dict = {
    "data": {"name": "synthetic"},
    "model": dict(MODEL_DEFAULTS),
    "train": {
        **TRAIN_DEFAULTS,
        # Epochs that train the classifier alone before pseudo labels are used; 0 when starting
        # from the classification checkpoint (pretrain.enabled), as RRM does.
        "seg_warmup_epochs": 0,
        # "weak": reliable pseudo labels (the method); "full": ground-truth masks (upper bound).
        "supervision": "weak",
    },
    "pretrain": dict(PRETRAIN_DEFAULTS),
    "cam": {"scales": [1.0]},
    # ``workers``: CRF processes per trial ("auto": none on CPU, where the network uses the
    # trial's cores; the trial's CPUs - 1 on GPU). ``overlap``: with workers, label the next
    # batch (CAMs from a no-grad pass with the current weights, so one step old) while this step
    # trains, which hides the CRFs; off, the CRFs of a batch run in the pool while the step waits.
    "pseudo": {**{f.name: f.default for f in fields(PseudoLabelConfig)}, "workers": "auto", "overlap": True},
    "loss": {
        "cls": {"enabled": True, "weight": 1.0},
        # ``decouple``: LDF-style label decoupling (trainables/decoupling.py, a project design):
        # each reliable pixel weighted by its class region's body/detail maps, normalised to mean 1
        # per class, so interior and boundary pixels are balanced as the two weights say.
        "ce": {"enabled": True, "weight": 1.0, "decouple": False, "body_weight": 1.0, "detail_weight": 2.0,
               "decouple_background": True},
        # Gated dense energy (spec §3, trainables/dense_energy.py). The value is RRM's raw sum
        # per image, so the weight depends on the crop: RRM uses 1e-7 at crop 321 (about 5.5e-8
        # on this project's exact-kernel scale); a 64 px crop has ~650x fewer pixel pairs.
        "dense": {"enabled": False, "weight": 3e-5, "sigma_rgb": 15.0, "sigma_xy": 100.0, "scale": 0.5,
                  "impl": "auto", "rrm_gradient": False},
        # Adaptive affinity (spec §3, trainables/affinity.py); confidence: crf | cam | pred.
        "affinity": {"enabled": False, "weight": 0.1, "distance": 4, "margin": 3.0, "diff_weight": 2.0,
                     "confidence": "crf"},
        # Label reassign (this project's design of AALR's loss, trainables/reassign.py): an
        # embedding head, per-image prototypes from reliable pixels; after ``warmup`` (fraction of
        # training) a pixel nearer another present class's prototype by more than ``tau`` (or
        # predicted as another present class with probability > ``pred_confidence``; above 1
        # turns that rule off) is relabelled, for every segmentation term of the step.
        "reassign": {"enabled": False, "weight": 0.1, "tau": 0.2, "warmup": 0.3, "pred_confidence": 0.95,
                     "temperature": 0.1, "embed_dim": 32},
    },
    # Inference (spec §4): single scale, seg head argmax; ``crf`` adds the optional test-time
    # dense CRF with the spec's settings (then val/miou is the refined prediction's and
    # val/miou_nocrf the raw one's).
    # ``scales`` / ``flip``: multi-scale + flip inference, the softmax averaged over every pass.
    # ``cam_quality``: also evaluate the model's own CAMs as a CAM method is (cam_eval.py: t chosen
    # on train, val masks at that t), so its CAM row compares with the baselines'.
    # ``save_predictions`` (cam_eval.py): the last evaluation writes the seg head's predictions.
    "eval": {"batch_size": 32, "every": 1, "crf": False, "scales": [1.0], "flip": False, "cam_quality": True,
             **CAM_EVAL_DEFAULTS, **{f.name: f.default for f in fields(CrfSettings)}},
}


def default_config() -> dict:
    """A fresh copy of the trainable's defaults (the keys a search space may set)."""
    return merge(DEFAULTS, {})


@dataclass
class StepContext:
    """What a loss term may look at in one training step."""

    batch: TrainBatch
    out: dict[str, torch.Tensor]
    cams: torch.Tensor  # (B, C_fg, H, W) normalised, detached
    seg_logits: torch.Tensor  # (B, C+1, H, W) at crop size
    pseudo: torch.Tensor  # (B, H, W) reliable labels, 255 ignored
    pseudo_confidence: torch.Tensor  # (B, H, W) CRF marginal of each reliable label, 0 elsewhere
    progress: float  # fraction of training done, in [0, 1)
    config: dict
    reassign_loss: torch.Tensor | None = None  # set by _reassign before the terms run


LossTerm = Callable[[StepContext], torch.Tensor]

def _ce_term(ctx: StepContext) -> torch.Tensor:
    c = ctx.config["loss"]["ce"]
    if not c["decouple"]:
        return losses.balanced_ce_loss(ctx.seg_logits, ctx.pseudo)
    weight = decoupled_weights(ctx.pseudo, float(c["body_weight"]), float(c["detail_weight"]),
                               include_background=bool(c["decouple_background"]))
    return weighted_balanced_ce_loss(ctx.seg_logits, ctx.pseudo, weight)


def _dense_term(ctx: StepContext) -> torch.Tensor:
    c = ctx.config["loss"]["dense"]
    dev = ctx.seg_logits.device
    rgb = torch.from_numpy(np.ascontiguousarray(ctx.batch.rgb)).to(dev).permute(0, 3, 1, 2).float()
    return dense_energy_loss(ctx.seg_logits, rgb, ctx.pseudo, ctx.batch.valid.to(dev),
                             sigma_rgb=float(c["sigma_rgb"]), sigma_xy=float(c["sigma_xy"]), scale=float(c["scale"]),
                             impl=str(c["impl"]), rrm_gradient=bool(c["rrm_gradient"]))


def _affinity_term(ctx: StepContext) -> torch.Tensor:
    c = ctx.config["loss"]["affinity"]
    probs = torch.softmax(ctx.seg_logits, dim=1)
    source = str(c["confidence"])
    if source == "cam":
        alpha = float(ctx.config["pseudo"]["alpha_high"])
        conf = pixel_confidence("cam", ctx.pseudo, cams=ctx.cams, bg_score=background_score(ctx.cams, alpha))
    elif source == "pred":
        conf = pixel_confidence("pred", ctx.pseudo, probs=probs)
    else:
        conf = pixel_confidence(source, ctx.pseudo, crf_confidence=ctx.pseudo_confidence)
    return affinity_loss(probs, ctx.pseudo, conf, distance=int(c["distance"]), margin=float(c["margin"]),
                         diff_weight=float(c["diff_weight"]))


def _reassign(ctx: StepContext, relabel: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_lr and the labels the step's segmentation terms use: (loss, labels, changed mask)."""
    c = ctx.config["loss"]["reassign"]
    embed = F.interpolate(ctx.out["embed"], size=ctx.seg_logits.shape[-2:], mode="bilinear", align_corners=False)
    labels = ctx.batch.labels.to(embed.device)
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1)
    probs = torch.softmax(ctx.seg_logits.detach(), dim=1)
    return label_reassign_loss(embed, ctx.pseudo, present, probs, tau=float(c["tau"]), reassign=relabel,
                               pred_confidence=float(c["pred_confidence"]), temperature=float(c["temperature"]))


LOSS_TERMS: dict[str, LossTerm] = {
    "cls": lambda ctx: losses.classification_loss(ctx.out["logits"], ctx.batch.labels.to(ctx.out["logits"].device)),
    "ce": _ce_term,
    "dense": _dense_term,
    "affinity": _affinity_term,
    "reassign": lambda ctx: ctx.reassign_loss,
}
# Terms that supervise the segmentation branch are held back during the warm-up.
SEGMENTATION_TERMS = {"ce", "dense", "affinity", "reassign"}


def _total_loss(ctx: StepContext, enabled: dict, seg_on: bool, sums: dict[str, float]) -> torch.Tensor:
    """sum_k w_k L_k over the enabled terms (segmentation terms only once ``seg_on``); each
    term's value is added to ``sums`` under train/loss/<name>."""
    loss = ctx.seg_logits.new_zeros(())
    for name, term_cfg in enabled.items():
        if name in SEGMENTATION_TERMS and not seg_on:
            continue
        value = LOSS_TERMS[name](ctx)
        loss = loss + float(term_cfg.get("weight", 1.0)) * value
        sums[f"train/loss/{name}"] = sums.get(f"train/loss/{name}", 0.0) + float(value.detach())
    return loss


def _epoch_metrics(sums: dict[str, float], steps: int, counts: np.ndarray, reassigned: np.ndarray) -> dict:
    """An epoch's training metrics: mean losses per step, time waited for pseudo labels, pseudo
    label precision/coverage and, with the reassign loss, what the relabelling did."""
    metrics = {k: v / steps for k, v in sums.items() if not k.startswith("time/")}
    if "time/pseudo_wait_s" in sums:  # time the steps waited for their pseudo labels, per epoch
        metrics["time/pseudo_wait_s"] = sums["time/pseudo_wait_s"]
    if counts[0] > 0 or counts[2] > 0:
        metrics["train/pseudo/precision"] = counts[1] / max(counts[0], 1)
        metrics["train/pseudo/coverage"] = counts[0] / max(counts[2], 1)
    if reassigned[0] > 0:
        metrics["train/reassign/changed"] = reassigned[1] / reassigned[0]
        if reassigned[1] > 0:  # of the relabelled pixels: right before, right after
            metrics["train/reassign/precision_before"] = reassigned[2] / reassigned[1]
            metrics["train/reassign/precision_after"] = reassigned[3] / reassigned[1]
    return metrics


def _reassign_quality(before: torch.Tensor, after: torch.Tensor, changed: torch.Tensor,
                      gt: torch.Tensor) -> np.ndarray:
    """[reliable pixels, relabelled pixels, relabelled right before, relabelled right after]."""
    gt = gt.to(before.device)
    return np.array([int((before != IGNORE_INDEX).sum()), int(changed.sum()),
                     int((changed & (before == gt)).sum()), int((changed & (after == gt)).sum())])


def _trial_cpus() -> int:
    """CPUs this trial may use: Ray's assignment inside a trial, else the process's affinity."""
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(cpus))
    except Exception:
        pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pseudo_workers(value, device: torch.device) -> int:
    """Resolve ``pseudo.workers``: an int, or "auto" (0 on CPU, trial CPUs - 1 on GPU)."""
    if value == "auto":
        return 0 if device.type == "cpu" else max(0, _trial_cpus() - 1)
    n = int(value)
    if n < 0:
        raise ValueError(f"pseudo.workers={value!r}: a number of processes >= 0, or 'auto'")
    return n


@torch.no_grad()
def segment_probs(model: SingleStageNet, x: torch.Tensor, scales: list[float] = (1.0,), flip: bool = False,
                  seg_at_1: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C+1, H, W) class probabilities at the input size: the seg head's softmax, averaged
    over input ``scales`` and, with ``flip``, their horizontal mirrors (multi-scale + flip
    inference, spec §4). ``seg_at_1`` reuses logits already computed at scale 1."""
    size = tuple(x.shape[-2:])
    total = None
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        passes = [(xs, False)] + ([(xs.flip(-1), True)] if flip else [])
        for inp, mirrored in passes:
            seg = seg_at_1 if (s == 1 and not mirrored and seg_at_1 is not None) else model(inp)["seg"]
            seg = F.interpolate(seg, size=size, mode="bilinear", align_corners=False)
            p = torch.softmax(seg.float(), dim=1)
            p = p.flip(-1) if mirrored else p
            total = p if total is None else total + p
    return total / (len(scales) * (2 if flip else 1))


@torch.no_grad()
def evaluate(model: SingleStageNet, ds: SegmentationDataset, cfg: dict, device: torch.device,
             save_dir: Path | None = None) -> dict:
    """Segmentation mIoU on val (seg head argmax on whole images at full resolution, optionally
    multi-scale + flip and refined by a test-time dense CRF) and, with ``eval.cam_quality``, the
    model's CAMs evaluated as every CAM method is (:func:`trainables.cam_eval.evaluate_cams`;
    the CAM masks never get the CRF here). With ``save_dir``, each prediction (after the CRF, if
    any) is written there as ``<image id>.png`` with the VOC palette."""
    model.eval()
    net = Float32Net(model, str(cfg["train"]["autocast"]), device)
    crf = CrfSettings.from_mapping(cfg["eval"]) if cfg["eval"]["crf"] else None
    scales, flip = [float(v) for v in cfg["eval"]["scales"]], bool(cfg["eval"]["flip"])
    conf = np.zeros((ds.num_classes, ds.num_classes), dtype=np.int64)
    conf_raw = np.zeros_like(conf)
    for chunk, x, _, gt in eval_batches(ds.val, int(cfg["eval"]["batch_size"])):
        x, gt = x.to(device), gt.to(device)
        probs = segment_probs(net, x, scales, flip)
        pred = probs.argmax(1)
        if crf is not None:
            conf_raw += confusion_matrix(pred, gt, ds.num_classes)
            probs_np = probs.float().cpu().numpy()
            pred = torch.from_numpy(np.stack([dense_crf(ds.val.images[i], probs_np[j], crf).argmax(0)
                                              for j, i in enumerate(chunk)])).to(device)
        conf += confusion_matrix(pred, gt, ds.num_classes)
        if save_dir is not None:
            for j, i in enumerate(chunk):
                write_palette_png(Path(save_dir) / f"{ds.val.ids[i]}.png", pred[j].to(torch.uint8).cpu().numpy())
    metrics = {"val/miou": mean_iou(conf)}
    if crf is not None:
        metrics["val/miou_nocrf"] = mean_iou(conf_raw)
    for name, v in zip(ds.class_names, per_class_iou(conf)):
        if np.isfinite(v):  # a class absent from GT and prediction has no IoU (metrics.py)
            metrics[f"val/iou/{name}"] = float(v)
    if cfg["eval"]["cam_quality"]:
        metrics.update(evaluate_cams(lambda z: net(z)["cam_raw"], ds, merge(cfg, {"eval": {"crf": False}}), device))
    model.train()
    return metrics


def prepare(config: dict, log: Callable[[str], None] = print) -> SegmentationDataset:
    """Data and the shared classification checkpoint, once per study (trial.prepare_study)."""
    return prepare_study(config, DEFAULTS, log)


def train(config: dict, reporter: Reporter | None = None) -> list[dict]:
    """Train and evaluate one configuration; returns the per-epoch metrics.

    ``config`` may be nested or use dotted keys; it is merged onto :data:`DEFAULTS`. Inside a
    Ray Tune trial, metrics and checkpoints go to Tune; otherwise to ``reporter`` (or a plain
    :class:`Reporter`).

    Example:
        >>> hist = train({"data": {"num_train": 16, "num_val": 8}, "train.epochs": 1})
        >>> sorted(hist[-1])[:3]
        ['epoch', 'time/epoch_s', 'train/images_per_s']
    """
    cfg = merge(DEFAULTS, config)
    reporter, device = start_trial(cfg, reporter)
    t = cfg["train"]
    torch.manual_seed(int(t["seed"]))
    rng = np.random.default_rng(int(t["seed"]))

    ds = load_dataset(cfg["data"])
    enabled = {k: v for k, v in cfg["loss"].items() if v.get("enabled", True) and float(v.get("weight", 1.0)) != 0.0}
    unknown = set(enabled) - set(LOSS_TERMS)
    if unknown:
        raise ValueError(f"loss.{sorted(unknown)[0]}: no such loss term; known: {sorted(LOSS_TERMS)}")
    reassign_on = "reassign" in enabled
    embed_dim = int(cfg["loss"]["reassign"]["embed_dim"]) if reassign_on else 0
    model = SingleStageNet(cfg["model"], ds.num_fg, embed_dim=embed_dim).to(device)
    optimizer = build_optimizer(model, cfg)
    pl_cfg = PseudoLabelConfig.from_mapping(cfg["pseudo"])

    start_epoch = 0
    state = reporter.restore()
    if state is None:
        load_start_weights(model, cfg, ds, device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng = np.random.default_rng(state["rng_seed"])
        start_epoch = int(state["epoch"])

    epochs = int(t["epochs"])
    n = len(ds.train)
    bs = min(int(t["batch_size"]), n)
    steps_per_epoch = max(1, n // bs)
    total_steps = epochs * steps_per_epoch
    history = list(getattr(reporter, "history", []))
    weak = t["supervision"] != "full"
    needs_labels = weak and bool(set(enabled) & SEGMENTATION_TERMS)  # CAM-only runs skip the CRFs
    labeler = PseudoLabeler(pl_cfg, pseudo_workers(cfg["pseudo"]["workers"], device) if weak else 0)
    overlap = labeler.workers > 0 and bool(cfg["pseudo"]["overlap"])
    scales = cfg["cam"]["scales"]

    net = Float32Net(model, str(t["autocast"]), device)

    def cam_fn(z: torch.Tensor) -> torch.Tensor:
        return net(z)["cam_raw"]

    def label_ahead(b: TrainBatch):
        """Start the CRFs of a batch from no-grad CAMs of the current weights (overlap mode)."""
        lb = b.labels.to(device)
        with frozen_bn_stats(model):
            cams_b = multiscale_cams(cam_fn, b.image.to(device), lb, scales)
        return labeler.submit(b.rgb, cams_b, lb, b.valid, return_confidence=True)

    model.train()
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            counts = np.zeros(3, dtype=np.int64)
            reassigned = np.zeros(4, dtype=np.int64)  # reliable, changed, right before, right after
            order = rng.permutation(n)
            seg_on = epoch >= int(t["seg_warmup_epochs"])

            def next_batch(step: int) -> TrainBatch:
                return augment_batch(ds.train, order[step * bs : (step + 1) * bs], int(t["crop"]),
                                     (float(t["scale_min"]), float(t["scale_max"])), bool(t["flip"]), rng)

            batch = next_batch(0)
            pending = label_ahead(batch) if overlap and needs_labels and seg_on else None
            for step in range(steps_per_epoch):
                progress = (epoch * steps_per_epoch + step) / total_steps
                set_lr(optimizer, progress, t["poly_power"])
                # The next batch is drawn now either way, so the batches (and the rng) do not depend
                # on the overlap switch; in overlap mode its CRFs start here and run during this step.
                upcoming = next_batch(step + 1) if step + 1 < steps_per_epoch else None
                upcoming_pending = label_ahead(upcoming) if upcoming is not None and pending is not None else None
                x = batch.image.to(device)
                out = net(x)
                labels = batch.labels.to(device)
                size = tuple(x.shape[-2:])
                with frozen_bn_stats(model):
                    cams = multiscale_cams(cam_fn, x, labels, scales, out["cam_raw"])
                seg_logits = F.interpolate(out["seg"], size=size, mode="bilinear", align_corners=False)
                if not weak:
                    pseudo = batch.gt.to(device)
                    pseudo[~batch.valid.to(device)] = IGNORE_INDEX
                    pseudo_conf = (pseudo != IGNORE_INDEX).float()
                elif seg_on and needs_labels:
                    waited = time.perf_counter()  # the step's time spent on, or waiting for, labels
                    if pending is None:  # serial: CRFs of this step's own CAMs (in the pool, if any)
                        pending = labeler.submit(batch.rgb, cams, labels, batch.valid, return_confidence=True)
                    pseudo, pseudo_conf = pending.result(device)
                    sums["time/pseudo_wait_s"] = sums.get("time/pseudo_wait_s", 0.0) + time.perf_counter() - waited
                else:
                    pseudo = torch.full((len(x), *size), IGNORE_INDEX, dtype=torch.long, device=device)
                    pseudo_conf = torch.zeros((len(x), *size), device=device)
                ctx = StepContext(batch, out, cams.detach(), seg_logits, pseudo, pseudo_conf, progress, cfg)
                if reassign_on and seg_on:
                    relabel = weak and progress >= float(cfg["loss"]["reassign"]["warmup"])
                    ctx.reassign_loss, ctx.pseudo, changed = _reassign(ctx, relabel)
                    if relabel and batch.gt is not None:
                        reassigned += _reassign_quality(pseudo.cpu(), ctx.pseudo.cpu(), changed.cpu(), batch.gt)
                if batch.gt is not None and seg_on and needs_labels:
                    counts += pseudo_label_quality(ctx.pseudo.cpu(), batch.gt)
                loss = _total_loss(ctx, enabled, seg_on, sums)
                loss = check_loss(loss, cfg, epoch, step, {k: v / (step + 1) for k, v in sums.items()})
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums["train/loss/total"] = sums.get("train/loss/total", 0.0) + float(loss.detach())
                batch, pending = upcoming, upcoming_pending
            elapsed = time.perf_counter() - t0
            metrics = {"epoch": epoch + 1, **_epoch_metrics(sums, steps_per_epoch, counts, reassigned)}
            metrics["train/images_per_s"] = steps_per_epoch * bs / elapsed
            metrics["time/epoch_s"] = elapsed
            last = epoch + 1 == epochs
            # Every report carries val/* (ASHA and the searcher read the metric each time): between
            # evaluations the last values are repeated.
            if last or not history or (epoch + 1) % int(cfg["eval"]["every"]) == 0:
                with trial_output("predictions", enabled=last and cfg["eval"]["save_predictions"]) as save:
                    metrics.update(evaluate(model, ds, cfg, device, save))
            else:
                metrics.update({k: v for k, v in history[-1].items() if k.startswith("val/")})
            ckpt = None
            if last or (epoch + 1) % int(t["checkpoint_every"]) == 0:
                ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                        "rng_seed": int(rng.integers(2**31))}
                rng = np.random.default_rng(ckpt["rng_seed"])
            history.append(metrics)
            reporter.report(metrics, ckpt)
    finally:
        labeler.close()
    return history
