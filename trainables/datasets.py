"""Datasets by name. ``load_dataset(spec)`` turns the YAML ``data`` section into a
:class:`~trainables.data.SegmentationDataset`; ``check_data_spec`` validates it up front so that
a bad data section fails before any trial starts."""

from __future__ import annotations

import math
from typing import Callable

from trainables.config import ConfigError
from trainables.data import SegmentationDataset
from trainables.synthetic import DEFAULTS as SYNTHETIC_DEFAULTS
from trainables.synthetic import load_synthetic


def _check_synthetic(spec: dict) -> None:
    for key, value in spec.items():
        if key == "name":
            continue
        if key not in SYNTHETIC_DEFAULTS:
            raise ConfigError(f"data.{key}", value, f"unknown setting for the synthetic benchmark; known: {sorted(SYNTHETIC_DEFAULTS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"data.{key}", value, "must be a finite number")
    cfg = {**SYNTHETIC_DEFAULTS, **spec}
    for key in ("num_train", "num_val", "image_size", "max_objects"):
        if int(cfg[key]) != cfg[key] or cfg[key] < 1:
            raise ConfigError(f"data.{key}", cfg[key], "must be a positive integer")
    if cfg["image_size"] < 16:
        raise ConfigError("data.image_size", cfg["image_size"], "must be at least 16 pixels")
    if not 0 < cfg["min_radius"] <= cfg["max_radius"]:
        raise ConfigError("data.min_radius", cfg["min_radius"], "must be positive and at most data.max_radius")


DATASETS: dict[str, tuple[Callable[[dict], SegmentationDataset], Callable[[dict], None]]] = {
    "synthetic": (load_synthetic, _check_synthetic),
}


def check_data_spec(spec: dict) -> None:
    """Raise :class:`ConfigError` (naming the ``data.*`` key) if ``spec`` cannot be loaded."""
    name = spec.get("name")
    if name not in DATASETS:
        raise ConfigError("data.name", name, f"unknown dataset; choose one of {sorted(DATASETS)}")
    DATASETS[name][1](spec)


def load_dataset(spec: dict) -> SegmentationDataset:
    """Load the dataset the ``data`` section describes.

    Example:
        >>> load_dataset({"name": "synthetic", "num_train": 4, "num_val": 2}).class_names[:2]
        ['background', 'disc']
    """
    check_data_spec(spec)
    return DATASETS[spec["name"]][0](spec)
