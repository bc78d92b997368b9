"""The single-stage WSSS model (RRM lineage, docs/single_stage.md): CAMs -> reliable pseudo
labels -> a segmentation branch trained end to end with the classifier.

One step (:meth:`SingleStageTrainer.terms`): the network's CAMs at the configured scales, the
reliable pseudo labels of the batch (computed a step ahead in worker processes with
``pseudo.workers``, see :meth:`SingleStageTrainer.ahead`), the label reassignment, and the loss
terms of :data:`LOSS_TERMS`, each a function of the step's :class:`StepContext`. The loop
(loop/train.py) weights them: L = w_cls L_cls + sum of the enabled terms w_k L_k.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from trainables.data.dataset import IGNORE_INDEX, SegmentationDataset, TrainBatch, eval_batches
from trainables.data.imagefiles import write_palette_png
from trainables.evaluation.cam_eval import evaluate_cams
from trainables.evaluation.metrics import confusion_matrix, mean_iou, per_class_iou, pseudo_label_quality
from trainables.evaluation.review import review_indices
from trainables.loop.train import Float32Net, Trainer
from trainables.losses import classification as losses
from trainables.losses.affinity import affinity_loss, pixel_confidence
from trainables.losses.decoupling import decoupled_weights, weighted_balanced_ce_loss
from trainables.losses.dense_energy import dense_energy_loss
from trainables.losses.reassign import label_reassign_loss
from trainables.methods.base import MethodSettings
from trainables.nets.segmentation import SingleStageNet, frozen_bn_stats
from trainables.pseudo.cam import background_score, multiscale_cams
from trainables.pseudo.labels import PseudoLabelConfig, PseudoLabeler, batch_reliable_labels, channel_argmax, refine
from trainables.settings.sections import (ClassificationLosses, Count, EvalSettings, Fraction, LossTerm,
                                          NonNegative, Positive, PositiveInt, RefinerSettings, ReviewCount,
                                          TrainSettings)


class SingleStageTrain(TrainSettings):
    seg_warmup_epochs: Count = 0
    """Epochs that train the classifier alone before pseudo labels are used; 0 when starting
    from the classification checkpoint (pretrain.enabled), as RRM does."""
    supervision: Literal["weak", "full"] = "weak"
    """weak: reliable pseudo labels (the method); full: ground-truth masks (the upper bound)."""


class ClsTerm(LossTerm):
    """Multilabel soft-margin loss on the image logits (docs/single_stage.md §3)."""

    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    """Channel dropout (Dropout2d) on the features the image logits are pooled from, in training
    only, as RRM's ``dropout7`` before ``fc8`` (network/RRM.py l.12 and l.35); the CAMs and the
    segmentation head see the features without it. 0 turns it off (this project's former net)."""


class CeTerm(LossTerm):
    """Balanced cross-entropy on the reliable pixels (docs/single_stage.md §3)."""

    decouple: bool = False
    """LDF-style label decoupling (losses/decoupling.py, a project design): each reliable pixel
    weighted by its class region's body/detail maps, normalised to mean 1 per class."""
    body_weight: NonNegative = 1.0
    detail_weight: NonNegative = 2.0
    decouple_background: bool = True


class DenseTerm(LossTerm):
    """Gated dense energy (docs/single_stage.md §3, losses/dense_energy.py). The value is RRM's
    raw sum per image, so the weight depends on the crop: RRM uses 1e-7 at crop 321 (about 5.5e-8
    on this project's exact-kernel scale); a 64 px crop has ~650x fewer pixel pairs."""

    enabled: bool = False
    weight: NonNegative = 3e-5
    sigma_rgb: Positive = 15.0
    sigma_xy: Positive = 100.0
    scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    impl: Literal["auto", "exact", "lattice"] = "auto"
    rrm_gradient: bool = False
    resize: Literal["probs", "logits"] = "probs"
    """What is resized to ``scale``: the softmax taken at crop size (RRM: tool/myTool.py l.85-90,
    DenseEnergyLoss.py l.65) or the logits, softmaxed after (this project's former order)."""
    image_resize: Literal["nearest", "bilinear"] = "nearest"
    """How the image is resized to ``scale``: nearest neighbour, F.interpolate's default that
    RRM's call keeps (DenseEnergyLoss.py l.64), or bilinear (this project's former choice)."""
    size_rounding: Literal["floor", "round"] = "floor"
    """The scaled size: floor(crop * scale), as RRM's interpolate gives, or rounded (this
    project's former choice); they differ at odd crops (e.g. 7 * 0.5: 3 or 4)."""
    feature_order: Literal["xy", "yx"] = "xy"
    """The lattice's position features: [x, y] as RRM's bilateralfilter.cpp (l.9-10) or [y, x]
    (this project's former order). The exact filter does not depend on it."""


class AffinityTerm(LossTerm):
    """Adaptive affinity (docs/single_stage.md §3, losses/affinity.py)."""

    enabled: bool = False
    weight: NonNegative = 0.1
    distance: PositiveInt = 4
    margin: NonNegative = 3.0
    diff_weight: NonNegative = 2.0
    confidence: Literal["crf", "cam", "pred"] = "crf"
    single_group: Literal["zero", "mean"] = "zero"
    """A batch whose usable pairs are all background-background or all object-object (no
    different-label pair): 0, as AALR's code returns (Affinity_loss.py l.201-215), or that
    group's mean, as every other batch gets (this project's former value)."""


class ReassignTerm(LossTerm):
    """Label reassign (this project's design of AALR's loss, losses/reassign.py): an embedding
    head, per-image prototypes from reliable pixels; after ``warmup`` (fraction of training) a
    pixel nearer another present class's prototype by more than ``tau`` (or predicted as another
    present class with probability > ``pred_confidence``; above 1 turns that rule off) is
    relabelled, for every segmentation term of the step."""

    enabled: bool = False
    weight: NonNegative = 0.1
    tau: NonNegative = 0.2
    warmup: Fraction = 0.3
    pred_confidence: NonNegative = 0.95
    temperature: Positive = 0.1
    embed_dim: PositiveInt = 32


class SingleStageLosses(ClassificationLosses):
    cls: ClsTerm = ClsTerm()
    ce: CeTerm = CeTerm()
    dense: DenseTerm = DenseTerm()
    affinity: AffinityTerm = AffinityTerm()
    reassign: ReassignTerm = ReassignTerm()


class SingleStageEval(EvalSettings):
    """Inference (docs/single_stage.md §4): seg head argmax, optionally multi-scale + flip (the
    softmax averaged over every pass) and the test-time dense CRF (``crf``: val/miou is then the
    refined prediction's, val/miou_nocrf the raw one's)."""

    scales: Annotated[list[Positive], Field(min_length=1)] = [1.0]
    cam_quality: bool = True
    """Also evaluate the model's own CAMs as a CAM method is (t chosen on train), so its CAM row
    compares with the baselines'."""
    review_pseudo_images: ReviewCount = 3
    """Training images whose reliable pseudo labels (at the current weights, uncropped) are shown
    beside the val grid, ignored pixels marked; 0 = none."""


class SingleStageSettings(MethodSettings):
    train: SingleStageTrain = SingleStageTrain()
    pseudo: PseudoLabelConfig = PseudoLabelConfig()
    loss: SingleStageLosses = SingleStageLosses()
    eval: SingleStageEval = SingleStageEval()


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


TermFn = Callable[[StepContext], torch.Tensor]


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
                             impl=str(c["impl"]), rrm_gradient=bool(c["rrm_gradient"]), resize=str(c["resize"]),
                             image_resize=str(c["image_resize"]), size_rounding=str(c["size_rounding"]),
                             feature_order=str(c["feature_order"]))


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
                         diff_weight=float(c["diff_weight"]), single_group=str(c["single_group"]))


def _reassign(ctx: StepContext, relabel: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_lr and the labels the step's segmentation terms use: (loss, labels, changed mask)."""
    c = ctx.config["loss"]["reassign"]
    embed = F.interpolate(ctx.out["embed"], size=ctx.seg_logits.shape[-2:], mode="bilinear", align_corners=False)
    labels = ctx.batch.labels.to(embed.device)
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1)
    probs = torch.softmax(ctx.seg_logits.detach(), dim=1)
    return label_reassign_loss(embed, ctx.pseudo, present, probs, tau=float(c["tau"]), reassign=relabel,
                               pred_confidence=float(c["pred_confidence"]), temperature=float(c["temperature"]))


# The value of each term of the loss section (SingleStageLosses), from the step's context.
LOSS_TERMS: dict[str, TermFn] = {
    "cls": lambda ctx: losses.classification_loss(ctx.out["logits"], ctx.batch.labels.to(ctx.out["logits"].device)),
    "ce": _ce_term,
    "dense": _dense_term,
    "affinity": _affinity_term,
    "reassign": lambda ctx: ctx.reassign_loss,
}
# Terms that supervise the segmentation branch are held back during the warm-up.
SEGMENTATION_TERMS = {"ce", "dense", "affinity", "reassign"}


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
    """Resolve ``pseudo.workers``: an int, or "auto" (0 on CPU, trial CPUs - 1 on GPU). With
    ``refiner: par`` the :class:`PseudoLabeler` starts none, whatever this says."""
    if value == "auto":
        return 0 if device.type == "cpu" else max(0, _trial_cpus() - 1)
    return int(value)


@torch.no_grad()
def segment_probs(model: SingleStageNet, x: torch.Tensor, scales: list[float] = (1.0,), flip: bool = False,
                  seg_at_1: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C+1, H, W) class probabilities at the input size: the seg head's softmax, averaged
    over input ``scales`` and, with ``flip``, their horizontal mirrors (multi-scale + flip
    inference, docs/single_stage.md §4). ``seg_at_1`` reuses logits already computed at scale 1."""
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
             save_dir: Path | None = None, panel=None) -> dict:
    """Segmentation mIoU on val (seg head argmax on whole images at full resolution, optionally
    multi-scale + flip and refined by a test-time dense CRF) and, with ``eval.cam_quality``, the
    model's CAMs evaluated as every CAM method is (:func:`trainables.cam_eval.evaluate_cams`;
    the CAM masks never get the CRF here). With ``save_dir``, each prediction (after the CRF, if
    any) is written there as ``<image id>.png`` with the VOC palette; a ``panel`` keeps the
    predictions of its images."""
    model.eval()
    net = Float32Net(model, str(cfg["train"]["autocast"]), device)
    crf = RefinerSettings.from_mapping(cfg["eval"]) if cfg["eval"]["crf"] else None
    scales, flip = [float(v) for v in cfg["eval"]["scales"]], bool(cfg["eval"]["flip"])
    conf = np.zeros((ds.num_classes, ds.num_classes), dtype=np.int64)
    conf_raw = np.zeros_like(conf)
    for chunk, x, _, gt in eval_batches(ds.val, int(cfg["eval"]["batch_size"])):
        x, gt = x.to(device), gt.to(device)
        probs = segment_probs(net, x, scales, flip)
        pred = channel_argmax(probs)
        if crf is not None:
            conf_raw += confusion_matrix(pred, gt, ds.num_classes)
            pred = channel_argmax(refine([ds.val.images[i] for i in chunk], [probs], crf)[0]).to(device)
        conf += confusion_matrix(pred, gt, ds.num_classes)
        if panel is not None:
            panel.capture(chunk, pred=pred)
            panel.count("output", chunk, pred, gt)
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
        metrics.update(evaluate_cams(lambda z: net(z)["cam_raw"], ds, {**cfg, "eval": {**cfg["eval"], "crf": False}},
                                     device, panel=panel, cams_are_output=False))
    model.train()
    return metrics


class SingleStageTrainer(Trainer):
    """The single-stage model's part of the loop (see the module docstring)."""

    def __init__(self, cfg: dict, ds: SegmentationDataset, device: torch.device):
        super().__init__(cfg, ds, device)
        self.active = [k for k, v in cfg["loss"].items() if v["enabled"] and v["weight"] != 0.0]
        self.weak = cfg["train"]["supervision"] == "weak"
        # CAM-only runs skip the CRFs
        self.needs_labels = self.weak and bool(set(self.active) & SEGMENTATION_TERMS)
        workers = pseudo_workers(cfg["pseudo"]["workers"], device) if self.weak else 0
        self.labeler = PseudoLabeler(PseudoLabelConfig.from_mapping(cfg["pseudo"]), workers)
        self.overlap = self.labeler.workers > 0 and bool(cfg["pseudo"]["overlap"])
        self.pending: deque = deque()  # labels started by ahead(), oldest first
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.wait_s: float | None = None  # None: no step waited for labels this epoch
        self.counts = np.zeros(3, dtype=np.int64)  # reliable, reliable and right, valid
        self.reassigned = np.zeros(4, dtype=np.int64)  # reliable, changed, right before, right after

    def build(self) -> SingleStageNet:
        embed = int(self.cfg["loss"]["reassign"]["embed_dim"]) if "reassign" in self.active else 0
        return SingleStageNet(self.cfg["model"], self.ds.num_fg, embed_dim=embed,
                              cls_dropout=float(self.cfg["loss"]["cls"]["dropout"]))

    def _seg_on(self, epoch: int) -> bool:
        return epoch >= int(self.cfg["train"]["seg_warmup_epochs"])

    def _cams(self, net: Callable, x: torch.Tensor, labels: torch.Tensor, cam_at_1=None) -> torch.Tensor:
        with frozen_bn_stats(net.model):
            return multiscale_cams(lambda z: net(z)["cam_raw"], x, labels, self.cfg["cam"]["scales"], cam_at_1)

    def ahead(self, net: Callable, batch: TrainBatch, epoch: int) -> None:
        """Overlap mode: start the CRFs of the next batch from no-grad CAMs of the current
        weights, so they run while this step trains."""
        if self.overlap and self.needs_labels and self._seg_on(epoch):
            labels = batch.labels.to(self.device)
            cams = self._cams(net, batch.image.to(self.device), labels)
            self.pending.append(self.labeler.submit(batch.rgb, cams, labels, batch.valid, return_confidence=True))

    def terms(self, net: Callable, batch: TrainBatch, progress: float, epoch: int) -> dict[str, torch.Tensor]:
        x, labels = batch.image.to(self.device), batch.labels.to(self.device)
        out = net(x)
        cams = self._cams(net, x, labels, out["cam_raw"])
        seg_logits = F.interpolate(out["seg"], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        seg_on = self._seg_on(epoch)
        pseudo, conf = self._pseudo(batch, cams, labels, seg_on)
        ctx = StepContext(batch, out, cams.detach(), seg_logits, pseudo, conf, progress, self.cfg)
        if "reassign" in self.active and seg_on:
            relabel = self.weak and progress >= float(self.cfg["loss"]["reassign"]["warmup"])
            ctx.reassign_loss, ctx.pseudo, changed = _reassign(ctx, relabel)
            if relabel and batch.gt is not None:
                self.reassigned += _reassign_quality(pseudo.cpu(), ctx.pseudo.cpu(), changed.cpu(), batch.gt)
        if batch.gt is not None and seg_on and self.needs_labels:
            self.counts += pseudo_label_quality(ctx.pseudo.cpu(), batch.gt)
        return {k: LOSS_TERMS[k](ctx) for k in self.active if seg_on or k not in SEGMENTATION_TERMS}

    def _pseudo(self, batch: TrainBatch, cams: torch.Tensor, labels: torch.Tensor,
                seg_on: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's labels and their confidence: ground truth (full supervision), reliable
        pseudo labels (started ahead, or computed now), or all ignored during the warm-up."""
        size = (len(cams), *cams.shape[-2:])
        if not self.weak:
            pseudo = batch.gt.to(self.device)
            pseudo[~batch.valid.to(self.device)] = IGNORE_INDEX
            return pseudo, (pseudo != IGNORE_INDEX).float()
        if not (seg_on and self.needs_labels):
            return (torch.full(size, IGNORE_INDEX, dtype=torch.long, device=self.device),
                    torch.zeros(size, device=self.device))
        waited = time.perf_counter()  # the step's time spent on, or waiting for, its labels
        pending = self.pending.popleft() if self.pending else self.labeler.submit(
            batch.rgb, cams, labels, batch.valid, return_confidence=True)
        result = pending.result(self.device)
        self.wait_s = (self.wait_s or 0.0) + time.perf_counter() - waited
        return result

    def epoch_metrics(self) -> dict:
        """Time waited for pseudo labels, their precision/coverage and, with the reassign loss,
        what the relabelling did."""
        metrics: dict = {}
        if self.wait_s is not None:
            metrics["time/pseudo_wait_s"] = self.wait_s
        c, r = self.counts, self.reassigned
        if c[0] > 0 or c[2] > 0:
            metrics["train/pseudo/precision"] = c[1] / max(c[0], 1)
            metrics["train/pseudo/coverage"] = c[0] / max(c[2], 1)
        if r[0] > 0:
            metrics["train/reassign/changed"] = r[1] / r[0]
            if r[1] > 0:  # of the relabelled pixels: right before, right after
                metrics["train/reassign/precision_before"] = r[2] / r[1]
                metrics["train/reassign/precision_after"] = r[3] / r[1]
        self._reset_counters()
        return metrics

    def evaluate(self, model: SingleStageNet, net: Callable, save_dir) -> dict:
        return evaluate(model, self.ds, self.cfg, self.device, save_dir, panel=self.panel)

    def new_panel(self):
        panel = super().new_panel()
        if self.weak:
            panel.train = review_indices(self.ds.train.labels, int(self.cfg["eval"]["review_pseudo_images"]))
        return panel

    @torch.no_grad()
    def review(self, net: Callable, panel) -> None:
        """The panel's val CAMs, and the reliable pseudo labels of its training images: whole
        images through the step's own CAMs and rule, at the current weights."""
        bs = int(self.cfg["eval"]["batch_size"])
        for idx, x, labels, _ in eval_batches(self.ds.val, bs, panel.missing_cams()):
            panel.capture(idx, cams=self._cams(net, x.to(self.device), labels.to(self.device)))
        position = {i: k for k, i in enumerate(panel.train)}
        for idx, x, labels, _ in eval_batches(self.ds.train, bs, panel.train):
            labels = labels.to(self.device)
            cams = self._cams(net, x.to(self.device), labels)
            rgb = np.stack([np.asarray(self.ds.train.images[i]) for i in idx])
            pseudo = batch_reliable_labels(rgb, cams, labels, self.labeler.cfg)
            for j, i in enumerate(idx):
                panel.capture_pseudo(position[i], pseudo[j])

    def close(self) -> None:
        self.labeler.close()
