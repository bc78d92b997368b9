"""CAM evaluation that is fair between methods and says what it did (docs/baselines.md, docs/single_stage.md §5).

A CAM becomes a mask as argmax([t; CAMs of the image's classes]) with one background threshold
t. Papers sweep t and report the best value, often on the split they report; here t is chosen
on the *training* split (its masks are used for that choice only) and then applied unchanged to
val, so no number is tuned on the data it is reported on. Metrics:

- ``train/cam_miou``: CAM quality on train at the chosen t (the "CAM mIoU on VOC train" that SEAM
  and SC-CAM tabulate); ``train/cam_threshold``: that t.
- ``val/cam_miou`` and ``val/cam_iou/<class>``: val masks at the same t; with ``eval.crf`` also
  ``val/cam_crf_miou`` / ``val/cam_crf_iou/<class>`` after refining [t; CAMs] (``eval.refiner``:
  a dense CRF, or PAR).

Without train masks (a user's data with image labels only), or with ``eval.cam_threshold_source:
fixed``, the configured ``eval.cam_threshold`` is used and ``train/cam_miou`` is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainables.pseudo.cam import multiscale_cams
from trainables.data.dataset import SegmentationDataset, eval_batches
from trainables.data.imagefiles import write_palette_png
from trainables.evaluation.metrics import CamThresholdSweep, cam_masks, confusion_matrix, mean_iou, per_class_iou
from trainables.pseudo.labels import channel_argmax, present_stacks, refine
from trainables.settings.sections import RefinerSettings

def threshold_grid(step: float, high: float) -> list[float]:
    """[0, step, 2 step, ..., high].

    Example:
        >>> threshold_grid(0.2, 0.6)
        [0.0, 0.2, 0.4, 0.6]
    """
    if step <= 0:
        raise ValueError(f"eval.cam_threshold_step={step!r}: must be positive")
    return [round(float(v), 6) for v in np.arange(0.0, high + step / 2, step)]


def train_subset(n: int, count: int) -> np.ndarray | None:
    """The training images used to choose t: all (None) or a fixed, seeded subset."""
    if count <= 0 or count >= n:
        return None
    return np.sort(np.random.default_rng(0).permutation(n)[:count])


def refined_cam_masks(rgb, cams: torch.Tensor, labels: torch.Tensor, t: float, cfg: RefinerSettings) -> torch.Tensor:
    """[t; CAMs of the present classes] of each image refined by ``cfg.refiner`` (a dense CRF per
    image, or PAR over the batch), then argmax: (B, H, W) class indices on the CAMs' device."""
    sub, to_class, counts = present_stacks(cams.float(), labels.to(cams.device))
    scores = torch.cat([torch.full_like(sub[:, :1], t), sub], dim=1)
    best = channel_argmax(refine(rgb, [scores], cfg, counts)[0])
    return to_class.gather(1, best.flatten(1)).view_as(best)


CamFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate_cams(cam_fn: CamFn, ds: SegmentationDataset, cfg: dict, device: torch.device,
                  save_dir: Path | None = None, bind: Callable[[str, list[int]], CamFn] | None = None,
                  observe: Callable[[str, list[int], torch.Tensor], None] | None = None,
                  panel=None, cams_are_output: bool = True) -> dict:
    """Choose t on train, apply it to val; ``cam_fn`` maps a normalised image batch to raw CAMs
    (B, C_fg, h, w). Multi-scale (``cam.scales``) and ``eval.flip`` as configured. With
    ``save_dir``, each val mask (after the CRF, if any) is written there as a VOC-palette PNG.

    A method whose CAMs depend on more than the image's pixels (MCIS: the partner images it is
    paired with) passes ``bind(split, indices)``, which returns the ``cam_fn`` of one batch.
    ``observe(split, indices, cams)`` sees every batch's normalised CAMs at image size
    (MCIS builds its saliency pseudo masks from them without a second pass). A ``panel``
    (evaluation/review.py) keeps the val CAMs of its images and every val image's confusion
    matrices (``cam``, ``cam_crf``); with ``cams_are_output`` (the CAM methods) the final masks
    are the method's output (kind ``output``, and the panel's pictures)."""
    e = cfg["eval"]
    scales, flip, bs = cfg["cam"]["scales"], bool(e["flip"]), int(e["batch_size"])
    metrics: dict = {}
    source = str(e["cam_threshold_source"])
    if source not in ("train", "fixed"):
        raise ValueError(f"eval.cam_threshold_source={source!r}: choose train or fixed")
    if source == "train" and ds.train.masks is not None:
        sweep = CamThresholdSweep(ds.num_classes, threshold_grid(float(e["cam_threshold_step"]),
                                                                 float(e["cam_threshold_max"])))
        for idx, x, labels, gt in eval_batches(ds.train, bs, train_subset(len(ds.train), int(e["cam_train_images"]))):
            x, labels = x.to(device), labels.to(device)
            cams = multiscale_cams(bind("train", idx) if bind else cam_fn, x, labels, scales, flip=flip)
            sweep.update(cams, gt.to(device))
            if observe is not None:
                observe("train", idx, cams)
        metrics["train/cam_miou"], t, _ = sweep.best()
    else:
        t = float(e["cam_threshold"])
    metrics["train/cam_threshold"] = t
    crf = RefinerSettings.from_mapping(e) if e["crf"] else None
    conf = np.zeros((ds.num_classes, ds.num_classes), dtype=np.int64)
    conf_crf = np.zeros_like(conf)
    for idx, x, labels, gt in eval_batches(ds.val, bs):
        cams = multiscale_cams(bind("val", idx) if bind else cam_fn, x.to(device), labels.to(device), scales, flip=flip)
        if observe is not None:
            observe("val", idx, cams)
        masks = cam_masks(cams, [t])[0]
        conf += confusion_matrix(masks, gt, ds.num_classes)
        kinds = {"cam": masks}
        if crf is not None:
            masks = kinds["cam_crf"] = refined_cam_masks([ds.val.images[i] for i in idx], cams, labels, t, crf)
            conf_crf += confusion_matrix(masks, gt.to(masks.device), ds.num_classes)
        if panel is not None:
            _keep(panel, idx, cams, kinds, masks if cams_are_output else None, gt)
        if save_dir is not None:
            for j, i in enumerate(idx):
                write_palette_png(Path(save_dir) / f"{ds.val.ids[i]}.png", np.asarray(masks[j].cpu() if
                                  torch.is_tensor(masks) else masks[j], dtype=np.uint8))
    _add_iou(metrics, "val/cam", conf, ds.class_names)
    if crf is not None:
        _add_iou(metrics, "val/cam_crf", conf_crf, ds.class_names)
    return metrics


def _keep(panel, idx, cams: torch.Tensor, kinds: dict, output, gt) -> None:
    """Hand a review panel a val batch: its CAMs, every kind of mask's per-image confusion
    matrices and, when the masks are the method's output, the output (pictures and counts)."""
    for kind, masks in kinds.items():
        panel.count(kind, idx, masks, gt)
    panel.capture(idx, cams=cams, pred=output)
    if output is not None:
        panel.count("output", idx, output, gt)


def _add_iou(metrics: dict, prefix: str, conf: np.ndarray, class_names: list[str]) -> None:
    metrics[f"{prefix}_miou"] = mean_iou(conf)
    for name, v in zip(class_names, per_class_iou(conf)):
        if np.isfinite(v):  # a class in neither GT nor prediction has no IoU (metrics.py)
            metrics[f"{prefix}_iou/{name}"] = float(v)


def as_segmentation_metrics(cam_metrics: dict) -> dict:
    """For methods whose output is the CAM mask: ``val/miou`` and ``val/iou/<class>`` are the
    val masks (after the CRF when it ran; ``val/miou_nocrf`` then keeps the raw masks)."""
    src = "val/cam_crf" if "val/cam_crf_miou" in cam_metrics else "val/cam"
    out = dict(cam_metrics)
    out["val/miou"] = cam_metrics[f"{src}_miou"]
    if src == "val/cam_crf":
        out["val/miou_nocrf"] = cam_metrics["val/cam_miou"]
    for k, v in cam_metrics.items():
        if k.startswith(f"{src}_iou/"):
            out["val/iou/" + k.split("/", 2)[2]] = v
    return out
