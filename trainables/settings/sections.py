"""Typed settings: every setting of every method declared once, with its type, default, allowed
values and bounds (pydantic v2).

A method's settings are a :class:`Section` whose fields are sections (``model``, ``train``,
``pretrain``, ``cam``, ``pseudo``, ``loss``, ``eval``, ``data``): the sections shared by several
methods are declared here, a method adds or extends only what differs (``trainables/methods``).
The search-space parser validates fixed values, ``--set`` overrides and every searched range and
choice against these models before any trial starts (``study/space.py``); a trial receives the
validated settings as a plain nested dict (:meth:`Section.resolve`), one way everywhere.

Conventions: ``Literal[...]`` for every closed set of values, bounds where the maths needs
them, booleans and strings strict (``off`` is not a boolean, ``1`` is not a string), integers
accept integral floats (``3.0``, from ``--set ...=3e0``), numbers must be finite.

Example:
    >>> TrainSettings(optimizer="adam").lr
    0.02
    >>> TrainSettings(optimizer="adamm")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for TrainSettings
    optimizer
      Input should be 'sgd' or 'adam' ...
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from trainables.settings.tree import merge


def integral(v: Any) -> Any:
    """3.0 -> 3 (YAML and ``--set`` may give an integer as a float); anything else unchanged."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


Count = Annotated[int, BeforeValidator(integral), Field(ge=0)]  # 0, 1, 2, ...
PositiveInt = Annotated[int, BeforeValidator(integral), Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
ReviewCount = Annotated[int, BeforeValidator(integral), Field(ge=0, le=16)]  # images in a figure grid


class Section(BaseModel):
    """A settings section: unknown keys refused, values validated on construction."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True,
                              frozen=True, use_attribute_docstrings=True)

    @classmethod
    def resolve(cls, config: dict | None = None) -> dict:
        """Validate ``config`` (nested or dotted keys, merged onto the defaults) and return the
        full settings as a nested dict: what a trial reads.

        Example:
            >>> TrainSettings.resolve({"lr": 0.1})["momentum"]
            0.9
        """
        return cls.model_validate(merge({}, config or {})).model_dump()

    @classmethod
    def defaults(cls) -> dict:
        """Every setting at its default, as a nested dict."""
        return cls.resolve({})


# --- the sections every method shares -------------------------------------------------------

class ModelSettings(Section):
    """The network. The section is the same for every method, so the shared classification
    checkpoint (keyed on it) serves them all; ``seg_*`` are the single-stage model's head."""

    backbone: Literal["small_cnn", "resnet50", "resnet101", "efficientnet_lite0"] = "small_cnn"
    width: PositiveInt = 32
    """small_cnn: channels of the first block (the last has 2x)."""
    weights: str | None = None
    """A local ImageNet weights file; for efficientnet_lite0 unset means the packaged ImageNet
    weights and ``none`` a random initialisation. Never downloaded."""
    seg_hidden: PositiveInt = 64
    seg_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    output_stride: Literal[8, 16, 32] = 8
    dilate: bool = True
    stages: Annotated[int, BeforeValidator(integral), Field(ge=1, le=7)] = 7
    """efficientnet_lite0: stages kept (7 = the whole network)."""
    channels_last: bool = True


class TrainSettings(Section):
    """The recipe every method trains with, unless its YAML says otherwise."""

    epochs: PositiveInt = 8
    batch_size: PositiveInt = 16
    crop: Annotated[int, BeforeValidator(integral), Field(ge=8)] = 64
    scale_min: Positive = 0.7
    scale_max: Positive = 1.3
    flip: bool = True
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Positive = 0.02
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """RRM's SGD effectively runs without momentum (a bug in its optimizer helper,
    docs/single_stage.md §4); 0.9 here, 0.0 reproduces RRM exactly."""
    weight_decay: NonNegative = 1e-5
    new_layer_lr_mult: Positive = 10.0
    """New layers train at this multiple of lr (RRM, SEAM and SC-CAM all use 10)."""
    bias_lr_mult: Positive = 1.0
    """Biases train at this multiple of their group's lr (MCIS's code: 2, so new-layer biases
    at 20x; ``scripts/train.py`` l.64-68). 1 = every parameter of a group alike."""
    nesterov: bool = False
    """SGD with Nesterov momentum (MCIS's code); needs ``optimizer: sgd`` and momentum > 0."""
    schedule: Literal["poly", "step"] = "poly"
    """poly: lr x (1 - progress) ** poly_power over the round (RRM, SEAM, SC-CAM); step: lr x
    ``lr_step_factor`` at each epoch of ``lr_steps`` (MCIS's code: 0.1 at epochs 5 and 10 of 15)."""
    lr_steps: list[PositiveInt] = [5, 10]
    """step schedule: 0-based epochs (within the round) from which lr is multiplied again."""
    lr_step_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    poly_power: NonNegative = 0.9
    seed: Count = 0
    num_threads: Count = 0
    """torch threads per trial; 0 leaves torch's default."""
    device: Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")] = "auto"
    checkpoint_every: PositiveInt = 1
    autocast: Literal["off", "bf16"] = "off"
    """bf16: network passes under torch.autocast in bfloat16; losses and metrics stay float32."""
    inject_nan_epoch: Count = 0
    """Fault injection for the harness's failure handling: the loss becomes NaN at the first
    step of this epoch (1-based; 0 = never)."""

    @model_validator(mode="after")
    def _scale_range(self) -> "TrainSettings":
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min: must not exceed scale_max ({self.scale_max})")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ValueError(f"nesterov: needs optimizer sgd with momentum > 0 (optimizer {self.optimizer}, "
                             f"momentum {self.momentum})")
        return self


class PretrainSettings(Section):
    """The classification checkpoint shared by all trials of all methods (loop/pretrain.py):
    ``enabled`` starts every trial from it; off, from the backbone's ImageNet weights."""

    enabled: bool = True
    epochs: PositiveInt = 20
    lr: Positive = 1e-3
    batch_size: PositiveInt = 32
    weight_decay: NonNegative = 1e-5


class CamSection(Section):
    """CAM passes (multi-scale CAMs, averaged)."""

    scales: Annotated[list[Positive], Field(min_length=1)] = [1.0]


class CrfSettings(Section):
    """Dense CRF settings (defaults: the test-time CRF of docs/single_stage.md §4)."""

    crf_gauss_sxy: Positive = 3.0
    crf_gauss_compat: NonNegative = 3.0
    crf_bilateral_sxy: Positive = 83.0
    crf_bilateral_srgb: Positive = 5.0
    crf_bilateral_compat: NonNegative = 4.0
    crf_iterations: PositiveInt = 10
    crf_input: Literal["scores", "normalised"] = "scores"
    """What the dense CRF's unary is read from: ``scores``, the maps as given, as RRM does
    (tool/myTool.py l.11-13 -> tool/imutils.py l.354); ``normalised``, each pixel's maps divided
    by their sum first (this project's former input). pydensecrf clips at 1e-5 before the log, so
    the two differ where a pixel's scores fall below the clip (docs/single_stage.md §2). PAR and
    ``pseudo.crf: false`` always use the normalised maps."""

    @classmethod
    def from_mapping(cls, values: dict) -> "CrfSettings":
        """Built from the entries of a settings section that are fields here (the others, such
        as ``eval.crf`` or ``pseudo.workers``, are left out)."""
        return cls(**{k: values[k] for k in cls.model_fields if k in values})


class RefinerSettings(CrfSettings):
    """How [background; CAM] scores are refined (docs/single_stage.md §2): ``densecrf``, the
    mean-field dense CRF of RRM (pydensecrf, one CPU core per image), or ``par``, AFA/ToCo's
    pixel-adaptive refinement of the whole batch on the trial's device (pseudo/par.py)."""

    refiner: Literal["densecrf", "par"] = "densecrf"
    par_dilations: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 2, 4, 8, 12, 24]
    """PAR: the 8 neighbours at each of these dilations (AFA and ToCo: 1, 2, 4, 8, 12, 24)."""
    par_iterations: PositiveInt = 10
    par_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    """PAR runs at this fraction of the image size (ToCo: half scale) and is resized back."""
    par_colour_weight: Positive = 0.3
    """w1 of AFA/ToCo: the colour term's width, in local standard deviations."""
    par_position_weight: NonNegative = 0.01
    """w2 of AFA/ToCo: weight of the position prior beside the colour term."""


class PseudoLabelConfig(RefinerSettings):
    """The reliable pseudo-label rule (docs/single_stage.md §2; RRM defaults): the CAM pruning
    cutoffs a study searches and the CRF of §2 step 1 (bilateral sxy=80 srgb=13 compat=10)."""

    crf_bilateral_sxy: Positive = 80.0
    crf_bilateral_srgb: Positive = 13.0
    crf_bilateral_compat: NonNegative = 10.0
    alpha_low: Positive = 4.0
    """Background exponent of the map foreground is taken from (low: conservative foreground)."""
    alpha_high: Positive = 32.0
    """Background exponent of the map background is taken from (high: conservative background)."""
    crf_confidence: Fraction = 0.8
    cam_floor: Fraction = 0.1
    fg_percentile: Fraction = 0.6
    bg_cutoff: Fraction = 0.8
    crf: bool = True
    """Refine the scores (with ``refiner``); false: the normalised scores stand in for the
    refined marginals (this project's choice)."""
    padding: Literal["ignore", "label"] = "ignore"
    """Crop padding (pixels outside the image): ``ignore`` makes them 255 for every loss (this
    project's guard: padding is not image); ``label`` keeps the rule's labels there, as RRM does
    (its ``compute_seg_label`` labels the whole crop and its CE trains on them)."""
    pad_colour: Literal["mean", "black"] = "mean"
    """The colour of crop padding in the image the dense CRF sees: ``mean``, the ImageNet mean
    (123, 116, 103), what RRM's CRF gets (its crop container is zero in the normalised input,
    turned back into uint8: tool/myTool.py l.184, l.217-219); ``black``, this project's former
    input. PAR keeps the batch's black padding."""
    workers: Literal["auto"] | Count = "auto"
    """CRF processes per trial: auto = none on CPU (the network uses the trial's cores), the
    trial's CPUs - 1 on GPU. PAR runs inside the step: with ``refiner: par`` there are none."""
    overlap: bool = True
    """With workers: label the next batch (CAMs from a no-grad pass of the current weights, one
    step old) while this step trains, which hides the CRFs."""


class EvalSettings(RefinerSettings):
    """Evaluation on val, as every CAM-producing method is evaluated (evaluation/cam_eval.py):
    a CAM becomes a mask as argmax([t; CAMs]), t chosen on train."""

    batch_size: PositiveInt = 32
    every: PositiveInt = 1
    """Evaluate every N epochs (and always after the last); reports in between repeat the
    last values, since ASHA and the searcher read the metric at every report."""
    crf: bool = False
    """Refine the val masks/predictions with ``refiner`` (a dense CRF by default; val/miou is
    then the refined one's, val/miou_nocrf the raw one's)."""
    flip: bool = False
    cam_threshold_step: Annotated[float, Field(gt=0.0, le=1.0)] = 0.02
    cam_threshold_max: Fraction = 0.8
    """t is swept over 0..cam_threshold_max on train (SEAM sweeps 0-0.6 on VOC; on the synthetic
    benchmark the best t lies near 0.6, so the sweep goes on to 0.8)."""
    cam_train_images: Count = 0
    """Train images used to choose t: 0 = all; else a fixed subset (the same in every trial)."""
    cam_threshold_source: Literal["train", "fixed"] = "train"
    """train: t chosen on the training split (never looks at val); fixed: t = cam_threshold."""
    cam_threshold: Fraction = 0.15
    save_predictions: bool = False
    """The last evaluation writes each val prediction as a VOC-palette PNG (predictions/)."""
    review_images: ReviewCount = 4
    """Val images shown in every trial's figure grid (image, ground truth, CAMs, output), the
    same ones in every trial and method (evaluation/review.py); 0 = no grid."""


class LossTerm(Section):
    """A loss term: L = sum over enabled terms of weight * L_term."""

    enabled: bool = True
    weight: NonNegative = 1.0

    @property
    def active(self) -> bool:
        return self.enabled and self.weight != 0.0


class ClassificationLosses(Section):
    """The loss section of a plain classifier: L_cls, the multilabel soft-margin loss."""

    cls: LossTerm = LossTerm()
