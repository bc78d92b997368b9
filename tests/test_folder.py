"""The generic folder format (images/, labels.csv, classes.txt, optional masks/)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainables.data.registry import load_dataset
from trainables.data.folder import main as folder_main
from trainables.data.folder import write_folder
from trainables.data.synthetic import DEFAULTS as SYN
from trainables.data.synthetic import load_synthetic


@pytest.fixture(scope="module")
def synthetic():
    return load_synthetic({**SYN, "num_train": 8, "num_val": 4})


def test_round_trip_keeps_ids_pixels_masks_labels_and_classes(synthetic, tmp_path):
    root = write_folder(synthetic, tmp_path / "data")
    ds = load_dataset({"name": "folder", "root": str(root)})
    assert ds.class_names == synthetic.class_names
    for mine, src in ((ds.train, synthetic.train), (ds.val, synthetic.val)):
        assert mine.ids == src.ids
        np.testing.assert_array_equal(mine.labels, src.labels)
        for i in range(len(src)):
            np.testing.assert_array_equal(mine.images[i], src.images[i])
            np.testing.assert_array_equal(mine.masks[i], src.masks[i])
    # masks are palette PNGs a viewer shows in VOC colours
    assert Image.open(root / "masks" / f"{synthetic.val.ids[0]}.png").mode == "P"


def test_without_split_column_val_is_a_seeded_draw_of_images_with_masks(synthetic, tmp_path):
    root = write_folder(synthetic, tmp_path / "data")
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(",".join(ln.split(",")[:2]) for ln in lines) + "\n")
    # train images without masks: only the masked ones can go to val
    for image_id in synthetic.train.ids[:4]:
        (root / "masks" / f"{image_id}.png").unlink()
    spec = {"name": "folder", "root": str(root), "val_fraction": 0.25, "seed": 3}
    ds = load_dataset(spec)
    masked = synthetic.train.ids[4:] + synthetic.val.ids
    assert len(ds.val) == round(0.25 * len(masked)) == 2
    assert set(ds.val.ids) <= set(masked)
    assert sorted(ds.train.ids + ds.val.ids) == sorted(synthetic.train.ids + synthetic.val.ids)
    assert ds.train.masks is None  # some train images have none: masks are for evaluation only
    assert load_dataset(spec).val.ids == ds.val.ids
    assert load_dataset({**spec, "seed": 4}).val.ids != ds.val.ids or len(masked) < 3


def test_classes_txt_may_name_background_first_and_csv_may_name_files(synthetic, tmp_path):
    root = write_folder(synthetic, tmp_path / "data")
    (root / "classes.txt").write_text("background\n" + (root / "classes.txt").read_text())
    text = (root / "labels.csv").read_text().splitlines()
    text = [text[0]] + [f"{ln.split(',', 1)[0]}.png,{ln.split(',', 1)[1]}" for ln in text[1:]]
    (root / "labels.csv").write_text("\n".join(text) + "\n")
    ds = load_dataset({"name": "folder", "root": str(root)})
    assert ds.class_names == synthetic.class_names and ds.train.ids == synthetic.train.ids


def test_export_command_writes_the_layout(tmp_path):
    assert folder_main(["--synthetic", str(tmp_path / "ex"), "--num-train", "3", "--num-val", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "ex").iterdir())
    assert names == ["classes.txt", "images", "labels.csv", "masks"]
    ds = load_dataset({"name": "folder", "root": str(tmp_path / "ex")})
    assert (len(ds.train), len(ds.val)) == (3, 2)


@pytest.mark.parametrize("spec, key, phrase", [
    ({"name": "folder"}, "data.root", "is required"),
    ({"name": "folder", "root": "x", "val_fraction": 1.0}, "data.val_fraction", "must be less than 1"),
    ({"name": "folder", "root": "x", "val_fraction": True}, "data.val_fraction", "must be a valid number"),
    ({"name": "folder", "root": "x", "max_val": -1}, "data.max_val", "greater than or equal to 0"),
    ({"name": "folder", "root": "x", "train_split": "train"}, "data.train_split", "unknown setting"),
    ({"name": "voc", "root": "x", "max_train": 2.5}, "data.max_train", "must be a valid integer"),
    ({"name": "voc", "root": 3}, "data.root", "must be a valid string"),
])
def test_data_section_errors_name_the_key(spec, key, phrase):
    from trainables.settings.tree import ConfigError

    with pytest.raises(ConfigError) as e:
        load_dataset(spec)
    assert e.value.key == key and phrase in str(e.value)
