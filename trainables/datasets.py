"""Datasets by name. ``load_dataset(spec)`` turns the YAML ``data`` section into a
:class:`~trainables.data.SegmentationDataset`; ``check_data_spec`` validates it up front so that
a bad data section, or a bad file in the dataset, fails before any trial starts.

- ``synthetic``: the built-in benchmark (trainables/synthetic.py), generated and cached.
- ``voc``: PASCAL VOC 2012 with SBD's train_aug (trainables/voc.py).
- ``folder``: the generic folder format for a user's own data (trainables/folder.py).

The file-based datasets check every file when loaded (:func:`trainables.imagefiles.scan`,
cached), raising :class:`~trainables.imagefiles.DataError` with the list of problems.
"""

from __future__ import annotations

import math
from typing import Callable

from trainables.config import ConfigError
from trainables.data import SegmentationDataset
from trainables.folder import describe_folder, load_folder
from trainables.synthetic import DEFAULTS as SYNTHETIC_DEFAULTS
from trainables.synthetic import load_synthetic
from trainables.voc import describe_voc, load_voc


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


def _describe_synthetic(spec: dict) -> str:
    cfg = {**SYNTHETIC_DEFAULTS, **spec}
    return (f"synthetic benchmark: {cfg['num_train']:,} train and {cfg['num_val']:,} val images of "
            f"{cfg['image_size']} px, 7 classes (seed {cfg['seed']}; generated once, then cached)")


def _check_synthetic_and_describe(spec: dict) -> str:
    _check_synthetic(spec)
    return _describe_synthetic(spec)


def _load_synthetic(spec: dict) -> SegmentationDataset:
    _check_synthetic(spec)
    return load_synthetic(spec)


def _check_files(load: Callable[[dict], SegmentationDataset], describe: Callable[[SegmentationDataset], str]):
    return lambda spec: describe(load(spec))


# name -> (load, check): both raise ConfigError (DataError for the files); ``check(spec)`` returns
# the one-line description the plan prints.
DATASETS: dict[str, tuple[Callable[[dict], SegmentationDataset], Callable[[dict], str]]] = {
    "synthetic": (_load_synthetic, _check_synthetic_and_describe),
    "voc": (load_voc, _check_files(load_voc, describe_voc)),
    "folder": (load_folder, _check_files(load_folder, describe_folder)),
}
# Keys of the data section that name files: made absolute when a study is read, since trials
# run in their own working directories.
PATH_KEYS = ("root",)


def check_data_spec(spec: dict) -> str:
    """Raise :class:`ConfigError` (naming the ``data.*`` key) if ``spec`` cannot be loaded, or
    :class:`~trainables.imagefiles.DataError` listing the dataset's problems; else return a
    one-line description of the data."""
    name = spec.get("name")
    if name not in DATASETS:
        raise ConfigError("data.name", name, f"unknown dataset; choose one of {sorted(DATASETS)}")
    return DATASETS[name][1](spec)


def load_dataset(spec: dict) -> SegmentationDataset:
    """Load the dataset the ``data`` section describes.

    Example:
        >>> load_dataset({"name": "synthetic", "num_train": 4, "num_val": 2}).class_names[:2]
        ['background', 'disc']
    """
    name = spec.get("name")
    if name not in DATASETS:
        raise ConfigError("data.name", name, f"unknown dataset; choose one of {sorted(DATASETS)}")
    return DATASETS[name][0](spec)  # a file-based one checks its files as it loads (cached)
