"""Datasets by name (the YAML ``data.name``): each is a typed ``data`` section, a loader and a
one-line description for the plan. ``load_dataset(spec)`` turns a ``data`` section into a
:class:`~trainables.data.dataset.SegmentationDataset`; ``check_data_spec`` validates it up front
so that a bad data section, or a bad file in the dataset, fails before any trial starts.

- ``synthetic``: the built-in benchmark (data/synthetic.py), generated and cached.
- ``voc``: PASCAL VOC 2012 with SBD's train_aug (data/voc.py).
- ``folder``: the generic folder format for a user's own data (data/folder.py).

The file-based datasets check every file when loaded (:func:`trainables.data.imagefiles.scan`,
cached), raising :class:`~trainables.data.imagefiles.DataError` with the list of problems.
A new dataset is one module (its section model and loader) and one entry in :data:`DATASETS`
and :data:`DataSection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Union

from pydantic import Field

from trainables.data.dataset import SegmentationDataset
from trainables.data.folder import FolderData, describe_folder, load_folder
from trainables.data.imagefiles import check_data_section
from trainables.data.synthetic import SyntheticData, load_synthetic
from trainables.data.voc import VocData, describe_voc, load_voc
from trainables.settings.sections import Section
from trainables.settings.tree import ConfigError

# The ``data`` section of every method: one of the datasets' sections, chosen by ``name``.
DataSection = Annotated[Union[SyntheticData, VocData, FolderData], Field(discriminator="name")]


def _describe_synthetic(cfg: dict) -> str:
    return (f"synthetic benchmark: {cfg['num_train']:,} train and {cfg['num_val']:,} val images of "
            f"{cfg['image_size']} px, 7 classes (seed {cfg['seed']}; generated once, then cached)")


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: its section model, ``load(section)`` and ``describe(section)``
    (the plan's line; for a file-based dataset it loads, which checks every file)."""

    section: type[Section]
    load: Callable[[dict], SegmentationDataset]
    describe: Callable[[dict], str]


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset(SyntheticData, load_synthetic, _describe_synthetic),
    "voc": Dataset(VocData, load_voc, lambda cfg: describe_voc(load_voc(cfg))),
    "folder": Dataset(FolderData, load_folder, lambda cfg: describe_folder(load_folder(cfg))),
}
# Keys of the data section that name files: made absolute when a study is read, since trials
# run in their own working directories.
PATH_KEYS = ("root",)


def _section(spec: dict) -> tuple[Dataset, dict]:
    name = spec.get("name", "synthetic")
    if name not in DATASETS:
        raise ConfigError("data.name", name, f"unknown dataset; choose one of {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    return dataset, check_data_section(spec, dataset.section)


def check_data_spec(spec: dict) -> str:
    """Raise :class:`ConfigError` (naming the ``data.*`` key) if ``spec`` cannot be loaded, or
    :class:`~trainables.data.imagefiles.DataError` listing the dataset's problems; else return a
    one-line description of the data."""
    dataset, cfg = _section(spec)
    return dataset.describe(cfg)


def load_dataset(spec: dict) -> SegmentationDataset:
    """Load the dataset the ``data`` section describes.

    Example:
        >>> load_dataset({"name": "synthetic", "num_train": 4, "num_val": 2}).class_names[:2]
        ['background', 'disc']
    """
    dataset, cfg = _section(spec)
    return dataset.load(cfg)  # a file-based one checks its files as it loads (cached)
