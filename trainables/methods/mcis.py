"""MCIS (Sun, Wang, Dai, Van Gool, "Mining Cross-Image Semantics for Weakly Supervised Semantic
Segmentation", ECCV 2020; public code GuoleiSun/MCIS_wsss; docs/baselines.md): a classifier
trained on pairs of images that share a class, with two cross-image attentions.

- **Pairs** (:func:`pair_partners`, code ``utils/LoadData.py``): each training image is paired
  with an image holding one of its classes (one of its classes uniformly, then a holder
  uniformly, the image itself included as in the code: ``mcis.self_pairs``). A step of
  ``train.batch_size`` pairs sees twice as many images (``train/images_per_s`` counts the
  first image of each pair, so it is pairs per second).
- **Features** (code ``models/vgg.py`` l.18-26): F is the output of ``mcis.extra_convs`` (3) new
  3x3 conv + ReLU layers of ``mcis.extra_width`` (512) channels on the backbone's last
  features, read by a new single-image classifier with a bias, the co-attention, the gate and
  the co-attention classifier; all new layers train at ``train.new_layer_lr_mult`` x lr.
- **Co-attention** (paper §3.2, code ``models/vgg.py``): S = (W F_m)^T F_n, softmax over the
  partner's positions in each direction; the attended features go through a 1x1 co-attention
  classifier and GAP, trained on the common labels. ``train/attention/*`` logs the std of S,
  the softmax's entropy against a uniform one's and the norm of F every epoch.
- **Contrastive co-attention** (§3.3): F (1 - sigmoid(gate(attended))) through the same
  classifier, trained on each image's own unshared labels, from ``mcis.contrast_from_epoch``.
- **Losses** (all multilabel soft-margin, weight 1 in the paper): ``loss.cls`` single-image
  on both images of a pair, ``loss.co``, ``loss.contrast`` (the two images' terms summed, as
  the code does). ``mcis.intra_pairs`` adds the code's intra-image pairs (the crop with its flip,
  0.75x and 2x rescales: single and co-attention terms with the image's own labels, summed into
  ``cls`` and ``co``); the paper does not describe them, so they are off by default.
- **Localisation maps** (code ``scripts/test.py``): for each present class, the co-attention
  class map of the image paired with ``mcis.test_partners`` training images holding it,
  averaged (:meth:`McisTrainer.bind_cams`); ``mcis.test_intra`` adds the intra-pair maps as the
  code does. They are MCIS's CAMs and go through the fair CAM evaluation like every method's.
- **Saliency pseudo masks** (code ``gen_gt.py``): with ``data.saliency``, ``eval.saliency_masks``
  reports the mIoU of MCIS's own pseudo ground truth on train and val (pseudo/saliency.py).

Choices where the paper is silent or the code is particular (documented, switchable):
- ``mcis.contrast_scope``: "image" averages the contrastive term over the images whose unshared
  set is non-empty; "batch" is the code's rule (all images of a side once any is non-empty,
  the empty ones trained towards "no class").
- ``mcis.self_pairs: never`` pairs an image with another holder whenever one exists (the
  project's earlier rule); ``as_code`` (default) lets the draw pick the image itself, as the
  code does in training and test (``train/self_pairs`` counts how often).
- ``mcis.extra_convs: 0`` co-attends over the backbone's features with the shared checkpoint's
  classifier (the project's earlier model): on a signed, pretrained feature map of norm about
  60 the softmax is then an arg-max (README, MCIS section).
- The code's optimiser (Nesterov SGD, 2x lr for biases, x0.1 at epochs 5 and 10 of 15) is a
  ``--set`` block in ``search_spaces/mcis.yaml``'s comments; the shipped study keeps the
  recipe every method shares, so that the comparison differs by method only.
- Test-time intra maps are resized bilinearly (the code: bicubic).
- The co-attention classifier and the single-image classifier are two heads, as in the code.
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from trainables.data.dataset import SegmentationDataset, to_tensor_batch
from trainables.evaluation.cam_eval import as_segmentation_metrics, evaluate_cams
from trainables.evaluation.metrics import confusion_matrix, mean_iou
from trainables.losses.classification import classification_loss
from trainables.methods.cam import CamMethodSettings, CamTrainer
from trainables.nets.cam import CamNet
from trainables.pseudo.saliency import split_pseudo_gt
from trainables.settings.sections import (ClassificationLosses, Count, EvalSettings, Fraction, LossTerm,
                                          PositiveInt, Section)

INTRA_SCALES = (0.75, 2.0)  # code LoadData.py: the image at 0.75x and 2x beside its flip


class SaliencyRule(Section):
    """MCIS's pseudo ground truth from a saliency map (code ``gen_gt.py``)."""

    fg_cutoff: Fraction = 0.3
    """Class and background scores under this are dropped."""
    conflict: Fraction = 0.99
    """Pixels where two scores exceed this are ignored."""
    salient_bg: Annotated[int, Field(ge=0, le=255)] = 32
    """A background pixel with saliency at or above this is ignored."""
    salient_fg: Fraction = 0.95
    """A localisation score above this counts as salient for that rule."""
    min_foreground: Fraction = 0.01
    """Images with less foreground than this fraction are dropped (all ignored)."""


class McisSection(Section):
    """MCIS's own settings."""

    extra_convs: Count = 3
    """New 3x3 conv + ReLU layers on the backbone's last features that the single-image
    classifier, co-attention, gate and co-attention classifier read (code ``extra_convs``: 3);
    0 = the backbone's features directly and the shared checkpoint's classifier."""
    extra_width: PositiveInt = 512
    """Channels of the extra layers (the code's: 512, VGG's conv5 width)."""
    self_pairs: Literal["as_code", "never"] = "as_code"
    """as_code: a partner is drawn among all holders of the class, the image itself included
    (code ``LoadData.py``, train and test); never: another holder whenever one exists."""

    contrast_from_epoch: Count = 2
    """The contrastive term trains from this 0-based epoch on (2 in the code: the third epoch)."""
    test_partners: PositiveInt = 3
    """Training images holding a class that an image is paired with for that class's map."""
    test_intra: bool = False
    """Add the code's intra-pair maps (flip, 0.75x, 2x) to the localisation maps."""
    intra_pairs: bool = False
    """Train on the code's intra-image pairs too (code only; not in the paper)."""
    contrast_scope: Literal["image", "batch"] = "image"
    """image: the contrastive term over images with unshared labels; batch: the code's rule."""
    eval_cams: Literal["coattention", "single"] = "coattention"
    """coattention: MCIS's localisation maps; single: the single-image classifier's CAMs."""
    saliency: SaliencyRule = SaliencyRule()


class McisEval(EvalSettings):
    saliency_masks: bool = False
    """Report the mIoU of MCIS's saliency pseudo masks on train and val (needs data.saliency)."""


class McisLosses(ClassificationLosses):
    co: LossTerm = LossTerm()
    """Co-attention MLSM on the common labels of a pair."""
    contrast: LossTerm = LossTerm()
    """Contrastive co-attention MLSM on each image's unshared labels."""


class McisSettings(CamMethodSettings):
    mcis: McisSection = McisSection()
    loss: McisLosses = McisLosses()
    eval: McisEval = McisEval()

    @model_validator(mode="after")
    def _saliency_needs_maps(self) -> "McisSettings":
        if self.eval.saliency_masks and getattr(self.data, "saliency", None) is None:
            raise ValueError("eval.saliency_masks: needs data.saliency, a folder of saliency PNGs (one per image); "
                             f"the {self.data.name} data section has none")
        return self


class McisNet(CamNet):
    """CAM network + co-attention: ``co_weight`` is W (no bias), ``co_classifier`` the 1x1
    co-attention classifier, ``gate`` the contrastive gate's 1x1 conv (code ``models/vgg.py``).

    With ``extra_convs`` > 0, F is the output of that many new 3x3 conv + ReLU layers
    (``extra``) on the backbone's features, and the single-image classifier is a new 1x1 conv
    with a bias (``extra_classifier``; code ``extra_convs`` and ``extra_last_conv``, vgg.py
    l.18-26), both initialised as the code does (:func:`code_init`); the shared checkpoint then
    gives the backbone only. With 0, F is the backbone's features and the classifier the
    checkpoint's (no bias). The co-attention layers keep PyTorch's default initialisation, as
    in the code.

    ``forward(x, partner=y)`` adds, for the pairs (x_i, y_i), with both images' rows stacked
    (x first): ``logits`` (single image), ``co_logits`` and ``contrast_logits`` (2B, C).
    """

    def __init__(self, model_cfg: dict, num_fg: int, extra_convs: int = 0, extra_width: int = 512):
        super().__init__(model_cfg, num_fg)
        c = self.backbone.out_channels
        self.extra = None
        if extra_convs:
            layers = []
            for k in range(extra_convs):
                layers += [nn.Conv2d(c if k == 0 else extra_width, extra_width, 3, padding=1), nn.ReLU(inplace=True)]
            self.extra, c = nn.Sequential(*layers), extra_width
            self.classifier = None  # the checkpoint's classifier does not fit F: a new one
            self.extra_classifier = nn.Conv2d(c, num_fg, 1)
            for m in (*self.extra, self.extra_classifier):
                code_init(m)
        self.co_weight = nn.Linear(c, c, bias=False)
        self.co_classifier = nn.Conv2d(c, num_fg, 1, bias=False)
        self.gate = nn.Conv2d(c, 1, 1, bias=False)

    def head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.extra is None:
            return super().head(feats)
        f = self.extra(feats)
        cam_raw = self.extra_classifier(f)  # the code's CAM keeps the bias (vgg.py l.37-39)
        return {"features": f, "pooled": f.mean(dim=(2, 3)), "cam_raw": cam_raw, "logits": cam_raw.mean(dim=(2, 3))}

    def forward(self, x: torch.Tensor, partner: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if partner is None:
            return super().forward(x)
        if partner.shape[-2:] == x.shape[-2:]:  # one backbone pass over both
            out = super().forward(torch.cat([x, partner]))
            fa, fb = out["features"].split(x.shape[0])
        else:
            a, b = super().forward(x), super().forward(partner)
            out, fa, fb = {"logits": torch.cat([a["logits"], b["logits"]])}, a["features"], b["features"]
        s = self.affinity(fa, fb)
        att_a, att_b = self.co_attend(fa, fb, s)
        co_logits, contrast_logits = [], []
        for f, att in ((fa, att_a), (fb, att_b)):
            co_logits.append(self.co_classifier(att).mean(dim=(2, 3)))
            contrast_logits.append(self.co_classifier(f * (1.0 - torch.sigmoid(self.gate(att)))).mean(dim=(2, 3)))
        out["co_logits"], out["contrast_logits"] = torch.cat(co_logits), torch.cat(contrast_logits)
        out["affinity"] = s
        return out

    def affinity(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """Paper §3.2: S = (W F_a)^T F_b, (B, N_a, N_b); row i is (W f_a,i)^T f_b,j over j."""
        return self.co_weight(fa.flatten(2).transpose(1, 2)) @ fb.flatten(2)

    def co_attend(self, fa: torch.Tensor, fb: torch.Tensor,
                  s: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The attended features at a's positions (b's features, softmax of S over b's
        positions) and at b's positions (a's features, softmax over a's positions), each shaped
        like its image's features. W is applied to a's side of S (code: the pair's first image)."""
        s = self.affinity(fa, fb) if s is None else s
        att_a = fb.flatten(2) @ torch.softmax(s, dim=2).transpose(1, 2)
        att_b = fa.flatten(2) @ torch.softmax(s, dim=1)
        return att_a.reshape(fa.shape), att_b.reshape(fb.shape)

    def co_map(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """The co-attention class maps (B, C, h_a, w_a) at a's positions, paired with b."""
        return self.co_classifier(self.co_attend(fa, fb)[0])

    def partner_map(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """The co-attention class maps (B, C, h_b, w_b) at b's positions of the pair (a, b):
        the code's second map of a pair, W still on a's side (vgg.py l.185-198)."""
        return self.co_classifier(self.co_attend(fa, fb)[1])


def code_init(m: nn.Module) -> None:
    """MCIS's initialisation of its new conv layers (vgg.py ``_initialize_weights``):
    N(0, sqrt(2 / (k_h k_w out_channels))), zero bias."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def attention_stats(s: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Diagnostics of the co-attention of a batch, as 0-d tensors on S's device (no host sync
    in the step): the std of S, the mean entropy of its softmax over the partner's positions as a
    fraction of a uniform one's (log N_b; 1 = uniform, 0 = an arg-max) and, given the features
    entering S, a position's mean L2 norm.

    Example:
        >>> {k: round(float(v), 3) for k, v in attention_stats(torch.zeros(1, 2, 4), torch.ones(1, 3, 2, 1)).items()}
        {'s_std': 0.0, 'entropy_ratio': 1.0, 'feature_norm': 1.732}
    """
    with torch.no_grad():
        s = s.detach().float()
        p = torch.softmax(s, dim=2)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=2).mean()
        out = {"s_std": s.std(), "entropy_ratio": entropy / float(np.log(s.shape[2]))}
        if features is not None:
            out["feature_norm"] = features.detach().float().norm(dim=1).mean()
    return out


def class_holders(labels: np.ndarray) -> list[np.ndarray]:
    """The images holding each class: ``holders[c]`` are the rows of ``labels`` with class c."""
    return [np.flatnonzero(labels[:, c] > 0) for c in range(labels.shape[1])]


def pair_partners(labels: np.ndarray, anchors: np.ndarray, rng: np.random.Generator,
                  holders: list[np.ndarray] | None = None, include_self: bool = True) -> tuple[np.ndarray, int]:
    """One partner per anchor: one of its classes uniformly, then uniformly one image holding
    that class: any holder, the anchor included (``include_self``, the code's
    ``LoadData.py``), or another holder (the anchor itself only when it is the class's only
    holder). Returns the partners and how many anchors were paired with themselves.

    Example:
        >>> labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32)  # image 3: no class
        >>> pair_partners(labels, np.array([0, 2, 3]), np.random.default_rng(0), include_self=False)
        (array([1, 1, 3]), 1)
    """
    holders = class_holders(labels) if holders is None else holders
    partners = np.empty(len(anchors), dtype=np.int64)
    for k, i in enumerate(anchors):
        classes = np.flatnonzero(labels[i] > 0)
        others = holders[int(rng.choice(classes))] if len(classes) else np.array([], dtype=np.int64)
        others = others if include_self else others[others != i]
        partners[k] = int(rng.choice(others)) if len(others) else int(i)
    return partners, int((partners == np.asarray(anchors)).sum())


def contrast_loss(logits: torch.Tensor, targets: torch.Tensor, n: int, scope: str) -> torch.Tensor | None:
    """The contrastive term over a pair batch (rows: n first images, then n partners); each
    side counts once it has an image with unshared labels (code ``train.py``). ``scope``
    "image" averages a side over those images, "batch" over all its images. None when no
    image has unshared labels.

    Example:
        >>> t = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # the first image keeps class 0 for itself
        >>> round(contrast_loss(torch.zeros(2, 2), t, 1, "image").item(), 4)  # log 2
        0.6931
        >>> contrast_loss(torch.zeros(2, 2), torch.zeros(2, 2), 1, "image") is None
        True
    """
    per = F.multilabel_soft_margin_loss(logits, targets, reduction="none")
    total = None
    for side in (slice(0, n), slice(n, 2 * n)):
        has = targets[side].sum(dim=1) > 0
        if has.any():
            part = per[side][has].mean() if scope == "image" else per[side].mean()
            total = part if total is None else total + part
    return total


def intra_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The code's intra-image partners of a batch: its flip and its 0.75x and 2x rescales."""
    return [x.flip(-1)] + [F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                           for s in INTRA_SCALES]


def aggregate_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """The code's ``aggregate`` (``scripts/test.py``): each (B, C, h, w) map ReLU'd and
    max-normalised per class, a later map kept only where sigmoid(its mean) > 0.1, the sum over
    the number of maps."""
    total = 0.0
    for k, m in enumerate(maps):
        norm = F.relu(m) / (F.relu(m).amax(dim=(2, 3), keepdim=True) + 1e-8)
        keep = 1.0 if k == 0 else (torch.sigmoid(m.mean(dim=(2, 3), keepdim=True)) > 0.1).float()
        total = total + keep * norm
    return total / len(maps)


class McisTrainer(CamTrainer):
    """Pairs in every step; evaluated by the co-attention localisation maps."""

    def __init__(self, cfg: dict, ds: SegmentationDataset, device: torch.device):
        super().__init__(cfg, ds, device)
        self.holders = class_holders(ds.train.labels)
        self._pairs = self._alone = 0
        self._attention: dict[str, torch.Tensor] = {}
        self._attention_steps = 0

    @property
    def include_self(self) -> bool:
        """Partners (training and test) may be the image itself (``mcis.self_pairs: as_code``)."""
        return self.cfg["mcis"]["self_pairs"] == "as_code"

    def build(self) -> McisNet:
        m = self.cfg["mcis"]
        return McisNet(self.cfg["model"], self.ds.num_fg, int(m["extra_convs"]), int(m["extra_width"]))

    def batches(self, rng: np.random.Generator, batch_size: int, steps: int) -> list[np.ndarray]:
        """Each step: ``batch_size`` images, then their partners."""
        out = []
        for anchors in super().batches(rng, batch_size, steps):
            partners, alone = pair_partners(self.ds.train.labels, anchors, rng, self.holders, self.include_self)
            self._pairs, self._alone = self._pairs + len(anchors), self._alone + alone
            out.append(np.concatenate([anchors, partners]))
        return out

    def terms(self, net: Callable, batch, progress: float, epoch: int) -> dict[str, torch.Tensor]:
        x, y = batch.image.to(self.device), batch.labels.to(self.device)
        n = x.shape[0] // 2
        ya, yb = y[:n], y[n:]
        common = ya * yb
        out = net(x[:n], partner=x[n:])
        self._observe(out)
        terms = {"cls": classification_loss(out["logits"], y),
                 "co": classification_loss(out["co_logits"], torch.cat([common, common]))}
        if self.cfg["mcis"]["intra_pairs"]:
            own = torch.cat([ya, ya])
            for view in intra_views(x[:n]):
                o = net(x[:n], partner=view)
                terms["cls"] = terms["cls"] + classification_loss(o["logits"], own)
                terms["co"] = terms["co"] + classification_loss(o["co_logits"], own)
        if epoch >= int(self.cfg["mcis"]["contrast_from_epoch"]):
            c = contrast_loss(out["contrast_logits"], torch.cat([ya - common, yb - common]), n,
                              str(self.cfg["mcis"]["contrast_scope"]))
            if c is not None:
                terms["contrast"] = c
        return terms

    def _observe(self, out: dict[str, torch.Tensor]) -> None:
        """Accumulate the co-attention's diagnostics (:func:`attention_stats`) over the epoch."""
        for k, v in attention_stats(out["affinity"], out.get("features")).items():
            self._attention[k] = self._attention[k] + v if k in self._attention else v
        self._attention_steps += 1

    def epoch_metrics(self) -> dict:
        """``train/self_pairs``: the fraction of this epoch's images paired with themselves;
        ``train/attention/s_std``, ``entropy_ratio`` and ``feature_norm``: the co-attention of
        the epoch's pairs, averaged over its steps (:func:`attention_stats`)."""
        out = {"train/self_pairs": self._alone / max(1, self._pairs),
               **{f"train/attention/{k}": float(v) / max(1, self._attention_steps) for k, v in self._attention.items()}}
        self._pairs = self._alone = self._attention_steps = 0
        self._attention = {}
        return out

    def evaluate(self, model: nn.Module, net: Callable, save_dir) -> dict:
        saliency = SaliencyScores(self.ds, self.cfg["mcis"]["saliency"]) if self.cfg["eval"]["saliency_masks"] else None
        bind = self.bind_cams(model, net) if self.cfg["mcis"]["eval_cams"] == "coattention" else None
        metrics = as_segmentation_metrics(evaluate_cams(self.cam_fn(net), self.ds, self.cfg, self.device, save_dir,
                                                        bind=bind, observe=saliency, panel=self.panel))
        return {**metrics, **(saliency.metrics() if saliency else {})}

    def bind_cams(self, model: McisNet, net: Callable) -> Callable:
        """``bind(split, indices)`` for :func:`evaluate_cams`: the localisation maps of a batch."""
        partners = PartnerDraw(self.ds, int(self.cfg["mcis"]["test_partners"]), int(self.cfg["train"]["seed"]),
                               self.include_self)
        features = FeatureCache(self.ds, lambda x: net(x.to(self.device))["features"])

        def bind(split: str, idx: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
            labels = getattr(self.ds, split).labels
            plan = [(j, c, partners.draw(split, i, c)) for j, i in enumerate(idx) for c in np.flatnonzero(labels[i])]

            def cam_fn(z: torch.Tensor) -> torch.Tensor:
                fz = net(z)["features"]
                cross = fz.new_zeros((fz.shape[0], self.ds.num_fg, *fz.shape[-2:]))
                for j, c, group in plan:
                    feats = [features.get(s, p) for s, p in group]
                    if all(f.shape == feats[0].shape for f in feats):  # the partners in one pass
                        feats = [torch.cat(feats)]
                    maps = [model.co_map(fz[j : j + 1].expand(len(f), -1, -1, -1), f)[:, c] for f in feats]
                    cross[j, c] = torch.cat(maps).mean(dim=0)
                if not self.cfg["mcis"]["test_intra"]:
                    return cross
                return aggregate_maps([*intra_maps(model, net, z, fz), cross])

            return cam_fn

        return bind


def intra_maps(model: McisNet, net: Callable, z: torch.Tensor, fz: torch.Tensor) -> list[torch.Tensor]:
    """The code's test-time intra-pair maps at z's feature size (test.py l.186-196): z paired
    with its flip (both maps of the pair, the flipped one mirrored back) and with its 0.75x and
    2x rescales (the view's map). W stays on z's side of every pair, as in the code."""
    flip, small, large = (net(v)["features"] for v in intra_views(z))
    size = fz.shape[-2:]
    return [model.co_map(fz, flip), model.partner_map(fz, flip).flip(-1),
            *(F.interpolate(model.partner_map(fz, f), size=size, mode="bilinear", align_corners=False)
              for f in (small, large))]


class PartnerDraw:
    """Deterministic test-time partners: for image i of a split and its class c, ``count``
    training images holding c, drawn with replacement as the code does (test data loader of
    ``LoadData.py``): among all holders (``include_self``, the code's), or never image i itself
    on train unless it is the only holder. Returns (split, index) pairs."""

    def __init__(self, ds: SegmentationDataset, count: int, seed: int, include_self: bool = True):
        self.ds, self.count, self.seed, self.include_self = ds, count, seed, include_self
        self.holders = class_holders(ds.train.labels)

    def draw(self, split: str, i: int, c: int) -> list[tuple[str, int]]:
        rng = np.random.default_rng([self.seed, 0 if split == "train" else 1, int(i), int(c)])
        others = self.holders[c]
        if split == "train" and not self.include_self:
            others = others[others != i]
        if len(others) == 0:
            return [(split, int(i))]
        return [("train", int(p)) for p in rng.choice(others, size=self.count, replace=True)]


class FeatureCache:
    """Backbone features of whole images (eval mode, no gradient), kept for one evaluation up to
    ``budget`` bytes (the synthetic benchmark's training set fits; VOC's is recomputed)."""

    def __init__(self, ds: SegmentationDataset, features: Callable[[torch.Tensor], torch.Tensor],
                 budget: int = 1 << 30):
        self.ds, self.features, self.budget, self.used = ds, features, budget, 0
        self.cache: dict[tuple[str, int], torch.Tensor] = {}

    def get(self, split: str, i: int) -> torch.Tensor:
        key = (split, int(i))
        if key in self.cache:
            return self.cache[key]
        f = self.features(to_tensor_batch([getattr(self.ds, split).images[i]]))
        if self.used + f.numel() * f.element_size() <= self.budget:
            self.cache[key] = f
            self.used += f.numel() * f.element_size()
        return f


class SaliencyScores:
    """``observe`` for :func:`evaluate_cams`: MCIS's saliency pseudo masks of every evaluated
    image, scored against its mask over the pixels they label. Metrics
    ``<split>/saliency_miou`` and ``<split>/saliency_coverage`` (the labelled fraction)."""

    def __init__(self, ds: SegmentationDataset, rule: dict):
        self.ds, self.rule = ds, dict(rule)
        self.conf = {s: np.zeros((ds.num_classes, ds.num_classes), np.int64) for s in ("train", "val")}
        self.pixels = {s: [0, 0] for s in ("train", "val")}

    def __call__(self, split: str, idx: list[int], cams: torch.Tensor) -> None:
        s = getattr(self.ds, split)
        by_index = dict(zip(idx, cams.float().cpu().numpy()))
        for i, pred in split_pseudo_gt(s, by_index, idx, **self.rule):
            gt = np.where(pred == 255, 255, np.asarray(s.masks[i]))  # score the labelled pixels only
            self.conf[split] += confusion_matrix(pred, gt, self.ds.num_classes)
            self.pixels[split][0] += int((pred != 255).sum())
            self.pixels[split][1] += pred.size

    def metrics(self) -> dict:
        return {f"{s}/saliency_{k}": v for s in ("train", "val") if self.pixels[s][1]
                for k, v in (("miou", mean_iou(self.conf[s])), ("coverage", self.pixels[s][0] / self.pixels[s][1]))}
