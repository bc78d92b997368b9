"""Tests for trainables/data/synthetic.py: determinism, label/mask consistency, the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.data import synthetic
from trainables.data.synthetic import (
    CLASS_NAMES,
    DEFAULTS,
    cache_dir,
    generate_synthetic,
    labels_from_mask,
    load_synthetic,
)

SIZE = 32
SMALL = {**DEFAULTS, "num_train": 6, "num_val": 3, "image_size": SIZE, "seed": 0}


@pytest.fixture(scope="module")
def ds():
    return generate_synthetic(SMALL)


def _assert_split_equal(a, b):
    assert a.ids == b.ids
    assert len(a.images) == len(b.images)
    for x, y in zip(a.images, b.images):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.masks, b.masks):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_same_seed_gives_identical_arrays(ds):
    again = generate_synthetic(dict(SMALL))
    _assert_split_equal(ds.train, again.train)
    _assert_split_equal(ds.val, again.val)


def test_different_seed_gives_different_images(ds):
    other = generate_synthetic({**SMALL, "seed": 1})
    assert len(other.train) == len(ds.train)
    assert all(not np.array_equal(a, b) for a, b in zip(ds.train.images, other.train.images))


def test_image_i_does_not_depend_on_num_train(ds):
    fewer = generate_synthetic({**SMALL, "num_train": 4})
    assert len(fewer.train) == 4
    for i in range(4):
        np.testing.assert_array_equal(fewer.train.images[i], ds.train.images[i])
        np.testing.assert_array_equal(fewer.train.masks[i], ds.train.masks[i])
    # the val split does not depend on num_train either
    _assert_split_equal(fewer.val, ds.val)


def test_train_and_val_differ(ds):
    for v in ds.val.images:
        assert all(not np.array_equal(v, t) for t in ds.train.images)
    assert ds.train.ids[0].startswith("train_") and ds.val.ids[0].startswith("val_")


def test_image_and_mask_format(ds):
    for split in (ds.train, ds.val):
        assert len(split.images) == len(split.masks) == len(split.ids) == len(split.labels)
        for img, mask in zip(split.images, split.masks):
            assert img.dtype == np.uint8 and img.shape == (SIZE, SIZE, 3)
            assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
            values = set(np.unique(mask).tolist())
            assert values <= set(range(len(CLASS_NAMES))) | {255}
            assert img.std() > 0  # not a blank image


def test_labels_consistent_with_masks(ds):
    num_fg = len(CLASS_NAMES) - 1
    for split in (ds.train, ds.val):
        assert split.labels.shape == (len(split), num_fg)
        assert split.labels.dtype == np.float32
        for label, mask in zip(split.labels, split.masks):
            from_mask = set(np.unique(mask).tolist()) - {0, 255}
            from_label = {int(k) + 1 for k in np.flatnonzero(label)}
            assert from_label == from_mask
            assert set(np.unique(label).tolist()) <= {0.0, 1.0}


def test_every_image_has_at_least_one_label(ds):
    for split in (ds.train, ds.val):
        assert (split.labels.sum(axis=1) >= 1).all()


def test_labels_from_mask_hand_case():
    mask = np.array([[0, 2, 2], [255, 5, 0]], dtype=np.uint8)
    assert labels_from_mask(mask, 6).tolist() == [0, 1, 0, 0, 1, 0]
    assert labels_from_mask(np.zeros((2, 2), np.uint8), 3).tolist() == [0, 0, 0]


def test_class_names():
    assert CLASS_NAMES[0] == "background"
    assert len(CLASS_NAMES) - 1 >= 5
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    ds_names = generate_synthetic({**SMALL, "num_train": 1, "num_val": 1}).class_names
    assert ds_names == CLASS_NAMES and ds_names is not CLASS_NAMES


def test_cache_dir_follows_environment(wsss_cache_dir):
    assert cache_dir() == wsss_cache_dir


def test_load_synthetic_cache_round_trip(ds, wsss_cache_dir, monkeypatch):
    cfg = {**SMALL, "seed": 0}
    first = load_synthetic(cfg)  # generates and writes the cache
    files = sorted(wsss_cache_dir.glob("synthetic-*.npz"))
    assert files, "load_synthetic wrote no cache file"
    assert not list(wsss_cache_dir.glob("*.tmp*"))

    # the second call must come from the cache: generation is disabled
    def no_generation(cfg):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(synthetic, "generate_synthetic", no_generation)
    second = load_synthetic(cfg)
    for loaded in (first, second):
        _assert_split_equal(loaded.train, ds.train)
        _assert_split_equal(loaded.val, ds.val)
        assert loaded.class_names == CLASS_NAMES
        assert loaded.train.images[0].dtype == np.uint8


def test_load_synthetic_name_key_is_ignored_and_other_keys_matter(ds, wsss_cache_dir):
    a = load_synthetic({"name": "synthetic", "num_train": 6, "num_val": 3, "image_size": SIZE})
    _assert_split_equal(a.train, ds.train)
    b = load_synthetic({"num_train": 6, "num_val": 3, "image_size": SIZE, "seed": 1})
    assert not np.array_equal(a.train.images[0], b.train.images[0])


def test_corrupt_cache_is_regenerated(ds, wsss_cache_dir):
    cfg = {**SMALL, "num_val": 2}
    load_synthetic(cfg)
    before = set(wsss_cache_dir.glob("synthetic-*.npz"))
    load_synthetic(cfg)
    assert set(wsss_cache_dir.glob("synthetic-*.npz")) == before  # same key, no new file
    # corrupt every cache file, then load again: the arrays still match a fresh generation
    for path in before:
        path.write_bytes(b"not an npz file")
    again = load_synthetic(cfg)
    _assert_split_equal(again.train, ds.train)
    np.testing.assert_array_equal(again.val.images[0], ds.val.images[0])
