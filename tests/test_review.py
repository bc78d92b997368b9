"""The review panels (trainables/evaluation/review.py) and their figure grids (reports/grids.py):
the same images in every trial and method, the CAMs of the image's classes, the output the
evaluation scored, the pseudo labels of training images with ignored pixels hatched."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from PIL import Image

from reports.grids import IGNORE, TILE, colour_mask, comparison_grid, pseudo_grid, render_panel, trial_grid
from trainables.data.imagefiles import read_mask
from trainables.data.registry import load_dataset
from trainables.evaluation.review import load_confusions, load_panel, review_indices
from trainables.loop.reporting import Reporter
from trainables.loop.train import run
from trainables.loop.trial import _set_up, load_start_weights
from trainables.methods.registry import METHODS

TINY = {"data": {"num_train": 24, "num_val": 8, "image_size": 40}, "model.width": 8, "pretrain.epochs": 1,
        "train.epochs": 1, "train.batch_size": 8, "train.crop": 40}


def test_review_images_cover_classes_and_depend_on_the_labels_only():
    labels = np.zeros((10, 4), dtype=int)
    labels[:, 0] = 1
    labels[7, 2] = labels[3, 3] = labels[5, 1] = 1
    chosen = review_indices(labels, 3)
    assert sorted(chosen) == [3, 5, 7]  # the only images with classes 1, 2 and 3
    assert review_indices(labels.copy(), 3) == chosen  # deterministic
    assert len(set(review_indices(labels, 10))) == 10


def _train_with_panel(method: str, tmp_path, **overrides):
    cfg = METHODS[method].resolve({**TINY, **overrides})
    ds = load_dataset(cfg["data"])
    device = _set_up(cfg)

    @contextlib.contextmanager
    def outputs(kind, final):
        folder = tmp_path / kind
        folder.mkdir(exist_ok=True)
        yield folder if (kind == "review" or cfg["eval"]["save_predictions"]) else None

    history, _ = run(METHODS[method].trainer(cfg, ds, device), Reporter(),
                     start_weights=lambda m: load_start_weights(m, cfg, ds, device), outputs=outputs)
    return cfg, ds, history, load_panel(tmp_path / "review" / "panel.npz")


@pytest.mark.parametrize("method", ["cam", "aal"])
def test_panel_holds_the_evaluated_output_and_the_cams_of_the_image_classes(method, tmp_path):
    cfg, ds, history, panel = _train_with_panel(method, tmp_path, **{"eval.save_predictions": True})
    assert [v["id"] for v in panel["val"]] == [ds.val.ids[i] for i in review_indices(ds.val.labels, 4)]
    assert panel["info"]["epoch"] == 1 and panel["info"]["val_miou"] == pytest.approx(history[-1]["val/miou"])
    for v in panel["val"]:
        i = list(ds.val.ids).index(v["id"])
        present = np.flatnonzero(ds.val.labels[i]) + 1
        assert v["cam_classes"].tolist() == present.tolist()
        assert v["cams"].shape == (len(present), 40, 40) and v["cams"].dtype == np.uint8
        # The output in the panel is the prediction the evaluation scored and saved.
        saved = read_mask(tmp_path / "predictions" / f"{v['id']}.png")
        np.testing.assert_array_equal(v["pred"], saved)
        np.testing.assert_array_equal(v["gt"], ds.val.masks[i])
    if method == "aal":  # the single-stage model also shows the pseudo labels of training images
        assert len(panel["train"]) == cfg["eval"]["review_pseudo_images"] == 3
        pseudo = np.concatenate([t["pseudo"].ravel() for t in panel["train"]])
        assert IGNORE in pseudo and set(np.unique(pseudo)) <= set(range(ds.num_classes)) | {IGNORE}
    else:
        assert panel["train"] == []


def test_review_images_zero_draws_no_grid_but_keeps_the_confusions(tmp_path):
    cfg = METHODS["cam"].resolve({**TINY, "eval.review_images": 0})
    ds = load_dataset(cfg["data"])

    @contextlib.contextmanager
    def outputs(kind, final):
        yield tmp_path if kind == "review" else None

    run(METHODS["cam"].trainer(cfg, ds, _set_up(cfg)), Reporter(), outputs=outputs)
    assert load_panel(tmp_path / "panel.npz")["val"] == []
    assert [p.name for p in render_panel(tmp_path / "panel.npz", tmp_path / "png")] == []
    assert load_confusions(tmp_path / "confusion.npz")["output"].shape == (8, ds.num_classes, ds.num_classes)


@pytest.mark.parametrize("method, kinds", [("cam", {"output", "cam"}), ("aal", {"output", "cam"})])
def test_per_image_confusions_sum_to_the_reported_miou(method, kinds, tmp_path):
    """Every val image's confusion matrix, per kind of mask: their sum gives the mIoU the
    evaluation reported (the output's val/miou, the CAM masks' val/cam_miou)."""
    from trainables.evaluation.metrics import mean_iou

    _, ds, history, _ = _train_with_panel(method, tmp_path)
    conf = load_confusions(tmp_path / "review" / "confusion.npz")
    assert set(conf) - {"ids", "class_names"} == kinds and conf["ids"] == [str(i) for i in ds.val.ids]
    assert mean_iou(conf["output"].sum(0)) == pytest.approx(history[-1]["val/miou"])
    assert mean_iou(conf["cam"].sum(0)) == pytest.approx(history[-1]["val/cam_miou"])
    assert (conf["output"].sum(axis=(1, 2)) == [(np.asarray(m) != IGNORE).sum() for m in ds.val.masks]).all()


def _panel(pred: np.ndarray, train: bool = True) -> dict:
    image = np.full((8, 8, 3), 200, dtype=np.uint8)
    gt = np.zeros((8, 8), dtype=np.uint8)
    gt[2:6, 2:6] = 1
    panel = {"class_names": ["background", "disc", "square"], "dataset": "toy", "info": {"epoch": 3, "val_miou": 0.5},
             "val": [{"id": "a", "image": image, "gt": gt, "pred": pred, "cams": np.zeros((1, 8, 8), np.uint8),
                      "cam_classes": np.array([1])}], "train": []}
    if train:
        pseudo = np.full((8, 8), IGNORE, dtype=np.uint8)
        pseudo[3:5, 3:5] = 1
        panel["train"] = [{"id": "t", "image": image, "gt": gt, "pseudo": pseudo}]
    return panel


def _tile(grid: Image.Image, row: int, col: int) -> np.ndarray:
    """The picture in the grid's cell (row, col), as drawn by reports.grids.draw_grid."""
    from reports.grids import CAPTION, HEADER, PAD

    x, y = 110 + col * (TILE + PAD), 2 * HEADER + row * (TILE + CAPTION + PAD)
    return np.asarray(grid)[y : y + TILE, x : x + TILE]


def test_trial_grid_draws_the_output_mask_in_the_voc_palette():
    pred = np.zeros((8, 8), dtype=np.uint8)
    pred[:, 4:] = 2
    grid = trial_grid(_panel(pred), "trial x")
    out = _tile(grid, 0, 3)  # image, ground truth, one CAM, output
    assert out[:, : TILE // 2 - 2].reshape(-1, 3).tolist().count([0, 0, 0]) > 0.9 * TILE * (TILE // 2 - 2)
    assert (out[:, TILE // 2 + 2 :] == colour_mask(np.full((1, 1), 2, np.uint8))[0, 0]).all()


def test_pseudo_grid_hatches_ignored_pixels_and_states_coverage():
    grid = pseudo_grid(_panel(np.zeros((8, 8), np.uint8)))
    tile = _tile(grid, 0, 2)
    corner = tile[:30, :30].reshape(-1, 3)
    assert {tuple(p) for p in corner.tolist()} == {(224, 224, 224), (96, 96, 96)}  # hatched: ignored
    assert (tile[TILE // 2, TILE // 2] == colour_mask(np.ones((1, 1), np.uint8))[0, 0]).all()
    assert pseudo_grid(_panel(np.zeros((8, 8), np.uint8), train=False)) is None


def test_comparison_grid_has_a_column_per_method():
    a, b = np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)
    grid = comparison_grid({"CAM": _panel(a), "AAL": _panel(b)}, "same images")
    assert (_tile(grid, 0, 2)[TILE // 2, TILE // 2] == 0).all()
    assert (_tile(grid, 0, 3)[TILE // 2, TILE // 2] == colour_mask(np.ones((1, 1), np.uint8))[0, 0]).all()


def test_render_panel_writes_both_grids(tmp_path):
    cfg, ds, _, _ = _train_with_panel("aal", tmp_path)
    paths = render_panel(tmp_path / "review" / "panel.npz", tmp_path / "png", label="trial x")
    assert [p.name for p in paths] == ["val_grid.png", "pseudo_labels.png"]
    assert Image.open(paths[0]).size[1] > 4 * TILE  # four val rows
