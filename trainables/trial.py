"""What every trainable shares around its model: the settings common to all methods, the
reporters (plain call or Ray Tune with checkpoints), device and precision, the optimizer with
its poly schedule, and the start weights (the shared classification checkpoint).

Each method module (``single_stage``, ``cam_baseline``, ``seam``, ``sccam``) builds on these, so
that every method trains from the same start with the same recipe unless its YAML says otherwise.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trainables.config import merge
from trainables.data import SegmentationDataset
from trainables.datasets import load_dataset
from trainables.pretrain import classification_pretrain

# backbone: small_cnn (width), resnet50/101 (weights: a local file), efficientnet_lite0
# (weights: packaged ImageNet by default; output_stride, dilate, stages; backbones.py). The
# section is the same for every method, so the shared classification checkpoint (keyed on it)
# serves them all; seg_* are the single-stage model's head and unused by the CAM methods.
MODEL_DEFAULTS: dict = {"backbone": "small_cnn", "width": 32, "weights": None, "seg_hidden": 64, "seg_dropout": 0.1,
                        "output_stride": 8, "dilate": True, "stages": 7, "channels_last": True}

TRAIN_DEFAULTS: dict = {
    "epochs": 8,
    "batch_size": 16,
    "crop": 64,
    "scale_min": 0.7,
    "scale_max": 1.3,
    "flip": True,
    "optimizer": "sgd",
    "lr": 0.02,
    # RRM's SGD effectively runs without momentum (a bug in its optimizer helper, spec §4).
    # We use 0.9 by default; set 0.0 to reproduce RRM exactly.
    "momentum": 0.9,
    "weight_decay": 1e-5,
    "new_layer_lr_mult": 10.0,
    "poly_power": 0.9,
    "seed": 0,
    "num_threads": 0,
    "device": "auto",
    "checkpoint_every": 1,
    # "bf16": network passes under torch.autocast in bfloat16 (GPU tensor cores; CPUs with
    # AMX); outputs are cast back to float32, so every loss and metric runs in float32.
    "autocast": "off",
    # Fault injection, for testing the harness's failure handling: the loss becomes NaN at the
    # first step of this epoch (1-based; 0 = never).
    "inject_nan_epoch": 0,
}

# Classification pretraining shared by all trials of all methods (trainables/pretrain.py):
# "enabled" starts every trial from it; off, from the backbone's ImageNet weights.
PRETRAIN_DEFAULTS: dict = {"enabled": True, "epochs": 20, "lr": 1e-3, "batch_size": 32, "weight_decay": 1e-5}


class Reporter:
    """Receives one metrics dict per epoch and, optionally, a checkpoint directory."""

    def __init__(self) -> None:
        self.history: list[dict] = []

    def restore(self) -> dict | None:
        """The state to resume from, or None."""
        return None

    def report(self, metrics: dict, state: dict | None) -> None:
        self.history.append(dict(metrics))


class TuneReporter(Reporter):
    """Reports through ``ray.tune`` with a checkpoint holding the training state."""

    def restore(self) -> dict | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)

    def report(self, metrics: dict, state: dict | None) -> None:
        import ray
        from ray import tune

        # The node the trial ran on and what Ray gave it (MLflow tags ray.node_id, ray.resources).
        ctx = ray.get_runtime_context()
        assigned = ",".join(f"{k}={v:g}" for k, v in sorted(ctx.get_assigned_resources().items()))
        metrics = {**metrics, "node_id": ctx.get_node_id(), "resources": assigned}
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def in_tune_session() -> bool:
    """True inside a Ray Tune trial."""
    try:
        import warnings

        from ray.tune import get_context

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray warns when asked outside a trial
            return get_context().get_trial_id() is not None
    except Exception:
        return False


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Float32Net:
    """Calls ``model`` under bfloat16 autocast when ``autocast == "bf16"`` and returns its outputs
    as float32; otherwise calls it as it is."""

    def __init__(self, model: nn.Module, autocast: str, device: torch.device):
        if autocast not in ("off", "bf16"):
            raise ValueError(f"train.autocast={autocast!r}: choose off or bf16")
        self.model, self.enabled, self.device_type = model, autocast == "bf16", device.type

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return self.model(x)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.model(x)
        return {k: v.float() for k, v in out.items()}


def poly_lr(base: float, progress: float, power: float) -> float:
    """Polynomial decay: base * (1 - progress) ** power (the DeepLab / RRM schedule)."""
    return base * (1.0 - progress) ** power


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """SGD (or Adam) with the new layers at ``new_layer_lr_mult`` x lr (RRM, SEAM and SC-CAM
    recipes all train new layers 10x faster). ``model.parameter_groups()`` gives (backbone, new)."""
    t = cfg["train"]
    backbone, new = model.parameter_groups()
    groups = [
        {"params": backbone, "lr": t["lr"], "base_lr": t["lr"]},
        {"params": new, "lr": t["lr"] * t["new_layer_lr_mult"], "base_lr": t["lr"] * t["new_layer_lr_mult"]},
    ]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    if t["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=t["lr"], weight_decay=t["weight_decay"])
    raise ValueError(f"train.optimizer={t['optimizer']!r}: choose sgd or adam")


def check_loss(loss: torch.Tensor, cfg: dict, epoch: int, step: int, terms: dict[str, float]) -> torch.Tensor:
    """The step's loss, or :class:`FloatingPointError` naming the epoch, step and loss terms
    when it is not finite (with ``train.inject_nan_epoch``, made NaN on purpose)."""
    if int(cfg["train"]["inject_nan_epoch"]) == epoch + 1 and step == 0:
        loss = loss * float("nan")
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, step {step + 1}: "
                                 + ", ".join(f"{k}={v:.4g}" for k, v in terms.items()))
    return loss


@contextmanager
def trial_output(name: str, enabled: bool = True):
    """A folder for files a trial leaves behind (e.g. predictions): inside a Ray Tune trial, a
    local temporary folder copied to ``<trial folder>/<name>`` in the experiment storage when the
    block ends (local, NFS or a cloud URI alike, and right with reused worker processes, whose
    working folder and ``get_trial_dir()`` belong to an earlier trial); outside Tune,
    ``./<name>``. With ``enabled`` false it yields None and writes nothing."""
    if not enabled:
        yield None
        return
    if not in_tune_session():
        path = Path.cwd() / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import pyarrow.fs
    from ray import tune

    storage = tune.get_context().get_storage()  # ray 2.60: pinned
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
        dest = f"{storage.trial_fs_path}/{name}"
        storage.storage_filesystem.create_dir(dest, recursive=True)
        pyarrow.fs.copy_files(tmp, dest, destination_filesystem=storage.storage_filesystem)


def start_trial(cfg: dict, reporter: Reporter | None) -> tuple[Reporter, torch.device]:
    """What every trainable does first: the reporter (Ray Tune's inside a trial, else a plain
    one), torch threads (``train.num_threads`` > 0) and the device."""
    if reporter is None:
        reporter = TuneReporter() if in_tune_session() else Reporter()
    t = cfg["train"]
    if int(t["num_threads"]) > 0:
        torch.set_num_threads(int(t["num_threads"]))
    return reporter, resolve_device(t["device"])


def set_lr(optimizer: torch.optim.Optimizer, progress: float, power: float) -> None:
    """Every group at its ``base_lr`` decayed by :func:`poly_lr`."""
    for g in optimizer.param_groups:
        g["lr"] = poly_lr(g["base_lr"], progress, power)


def load_start_weights(model: nn.Module, cfg: dict, ds: SegmentationDataset, device: torch.device) -> None:
    """Load the shared classification checkpoint's backbone and classifier into ``model`` (when
    ``pretrain.enabled``). Keys of the model that the checkpoint lacks must be new layers listed
    in ``model.new_layer_prefixes``; checkpoint keys the model lacks (another method's heads) are
    ignored."""
    if not cfg["pretrain"]["enabled"]:
        return
    state = classification_pretrain(cfg, ds, device)
    own = model.state_dict()
    new = tuple(getattr(model, "new_layer_prefixes", ()))
    missing = [k for k in own if k not in state and not k.startswith(new)]
    if missing:
        raise RuntimeError(f"classification checkpoint does not fit the model: missing {missing[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def prepare_study(config: dict, defaults: dict, log: Callable[[str], None] = print) -> SegmentationDataset:
    """Run once by the study driver before any trial: load (and cache) the data and build the
    shared classification checkpoint, so concurrent trials never race to create them."""
    cfg = merge(defaults, config)
    ds = load_dataset(cfg["data"])
    if cfg["pretrain"]["enabled"]:
        if int(cfg["train"]["num_threads"]) > 0:
            torch.set_num_threads(int(cfg["train"]["num_threads"]))
        classification_pretrain(cfg, ds, resolve_device(cfg["train"]["device"]), log=log)
    return ds
