"""Saliency maps: MCIS's pseudo ground-truth rule (trainables/pseudo/saliency.py) on hand-made
maps, and ``data.saliency`` on the datasets that read files (VOC, folder): loading, the checks of
the scan (missing, undecodable, colour, wrong size), the scan cache, and the CLI's exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from voc_fixture import make_voc  # noqa: E402

from trainables.data.dataset import Split  # noqa: E402
from trainables.data.folder import load_folder, write_folder  # noqa: E402
from trainables.data.imagefiles import DataError, ImageFiles, read_saliency  # noqa: E402
from trainables.data.registry import load_dataset  # noqa: E402
from trainables.data.voc import load_voc  # noqa: E402
from trainables.pseudo.saliency import saliency_pseudo_gt, split_pseudo_gt  # noqa: E402
from trainables.settings.tree import ConfigError  # noqa: E402

ROOT = TESTS.parent
X = 255  # ignored


# --- the rule on hand-made maps -------------------------------------------------------------------

def test_salient_squares_get_their_class_and_absent_classes_are_not_used():
    # classes 0 and 2 present (labels 1 and 3); class 1 absent, its map high on the bottom rows
    sal = np.array([
        [0, 0, 0, 0, 0, 0],
        [0, 255, 255, 0, 0, 0],
        [0, 255, 255, 0, 255, 255],
        [0, 0, 0, 0, 255, 255],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 100],
    ], dtype=np.uint8)
    cams = np.zeros((3, 6, 6))
    cams[0, 1:3, 1:3] = 1.0
    cams[1, 4:] = 1.0
    cams[2, 2:4, 4:6] = 1.0
    out = saliency_pseudo_gt(cams, np.array([1, 0, 1]), sal)
    expected = np.array([
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 0, 3, 3],
        [0, 0, 0, 0, 3, 3],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, X],  # no class, saliency 100 >= 32: not trusted as background
    ], dtype=np.uint8)
    assert out.dtype == np.uint8 and out.shape == (6, 6)
    np.testing.assert_array_equal(out, expected)
    # each present map is min-max normalised: scale and offset do not matter
    np.testing.assert_array_equal(saliency_pseudo_gt(cams * 7.0 + 3.0, np.array([1, 0, 1]), sal), expected)


def test_conflict_pixels_are_ignored():
    sal = np.full((4, 4), 255, dtype=np.uint8)
    sal[3, 3] = 0  # background score 1.0 there
    cams = np.zeros((2, 4, 4))
    cams[0, :, :2] = 1.0
    cams[1, :, 2:] = 1.0
    cams[1, 0, 1] = 1.0  # (0, 1): both classes at 1.0
    out = saliency_pseudo_gt(cams, np.array([1, 1]), sal)
    expected = np.array([
        [1, X, 2, 2],
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [1, 1, 2, X],  # (3, 3): background 1.0 and class 1 at 1.0
    ], dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)
    # scores of 0.98 are not near-certain: the higher one wins, no conflict
    cams[1, 0, 1] = 0.98
    assert saliency_pseudo_gt(cams, np.array([1, 1]), sal)[0, 1] == 1


def test_salient_background_and_class_peaks_are_ignored():
    sal = np.array([
        [0, 31, 32, 200],
        [0, 0, 0, 0],
        [255, 255, 0, 0],
        [255, 255, 0, 0],
    ], dtype=np.uint8)
    cam = np.array([[
        [0, 0, 0, 0],
        [0, 0.97, 0.9, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
    ]])
    out = saliency_pseudo_gt(cam, np.array([1]), sal)
    expected = np.array([
        [0, 0, X, X],  # saliency 31 < 32 stays background; 32 and 200 are salient
        [0, X, 0, 0],  # 0.97 > salient_fg: background there is not trusted; 0.9 is not a peak
        [1, 1, 0, 0],
        [1, 1, 0, 0],
    ], dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)
    # the thresholds are the keyword arguments
    out = saliency_pseudo_gt(cam, np.array([1]), sal, salient_bg=201, salient_fg=0.99)
    np.testing.assert_array_equal(out, np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]))


@pytest.mark.parametrize("size,kept", [(10, True), (11, False)])
def test_under_one_percent_foreground_ignores_the_whole_image(size, kept):
    sal = np.zeros((size, size), dtype=np.uint8)
    sal[4, 4] = 255
    cam = np.zeros((1, size, size))
    cam[0, 4, 4] = 1.0
    out = saliency_pseudo_gt(cam, np.array([1]), sal)
    if kept:  # 1 of 100 pixels: exactly 1 %, not under it
        expected = np.zeros((size, size), dtype=np.uint8)
        expected[4, 4] = 1
    else:  # 1 of 121 pixels
        expected = np.full((size, size), X, dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)
    out = saliency_pseudo_gt(cam, np.array([1]), sal, min_foreground=0.005)
    assert out[4, 4] == 1 and (np.delete(out.reshape(-1), 4 * size + 4) == 0).all()


def test_no_class_present_ignores_the_whole_image():
    sal = np.zeros((4, 4), dtype=np.uint8)
    out = saliency_pseudo_gt(np.ones((3, 4, 4)), np.zeros(3), sal)
    np.testing.assert_array_equal(out, np.full((4, 4), X, dtype=np.uint8))


def test_fg_cutoff_zeroes_a_weak_score():
    sal = np.array([[230, 0], [0, 255]], dtype=np.uint8)  # background scores 0.098, 1, 1, 0
    cam = np.array([[[0.25, 0.0], [0.0, 1.0]]])
    # the class's 0.25 is cut (as the background's 0.098): background wins, and is salient
    np.testing.assert_array_equal(saliency_pseudo_gt(cam, np.array([1]), sal), [[X, 0], [0, 1]])
    # with a lower cutoff the class's 0.25 beats the background's cut score
    np.testing.assert_array_equal(saliency_pseudo_gt(cam, np.array([1]), sal, fg_cutoff=0.2), [[1, 0], [0, 1]])


@pytest.mark.parametrize("cams,labels,sal,phrase", [
    (np.zeros((4, 4)), np.ones(1), np.zeros((4, 4)), "(C_fg, H, W)"),
    (np.zeros((2, 4, 4)), np.ones(3), np.zeros((4, 4)), "labels must be (2,)"),
    (np.zeros((2, 4, 4)), np.ones(2), np.zeros((4, 5)), "saliency must be (H, W) = (4, 4)"),
    (np.full((1, 4, 4), np.nan), np.ones(1), np.zeros((4, 4)), "finite"),
])
def test_bad_inputs_are_refused(cams, labels, sal, phrase):
    with pytest.raises(ValueError) as e:
        saliency_pseudo_gt(cams, labels, sal)
    assert phrase in str(e.value)


def test_split_pseudo_gt_labels_each_image_of_a_split():
    sal = np.zeros((2, 4, 4), dtype=np.uint8)
    sal[0, :2, :2] = 255
    sal[1, 2:, 2:] = 255
    cams = np.zeros((2, 2, 4, 4))
    cams[0, 0, :2, :2] = 1.0
    cams[1, 1, 2:, 2:] = 1.0
    split = Split(["a", "b"], [np.zeros((4, 4, 3), np.uint8)] * 2, np.array([[1, 0], [0, 1]], np.float32),
                  saliency=list(sal))
    got = dict(split_pseudo_gt(split, cams))
    assert sorted(got) == [0, 1]
    assert (got[0][:2, :2] == 1).all() and got[0].sum() == 4
    assert (got[1][2:, 2:] == 2).all() and got[1].sum() == 8
    assert [i for i, _ in split_pseudo_gt(split, cams, indices=[1])] == [1]
    # the rule's thresholds pass through: no image reaches 50 % foreground
    assert all((m == X).all() for _, m in split_pseudo_gt(split, cams, min_foreground=0.5))
    with pytest.raises(ValueError, match="no saliency maps"):
        next(split_pseudo_gt(Split(["a"], [np.zeros((4, 4, 3), np.uint8)], np.ones((1, 1), np.float32)), cams))


# --- data.saliency: fixtures ----------------------------------------------------------------------------

def small_voc(tmp_path: Path) -> dict:
    """A tiny VOC tree (train 2008_00000{0,1,2}, SBD-only 2009_10000{0,1}, val 2010_00000{0,1};
    val 0 is 24x32 HxW, val 1 32x24) with a saliency map per image in VOC2012/Saliency."""
    v = make_voc(tmp_path / "data", n_train=3, n_aug=2, n_val=2, size=(24, 32), with_real=False)
    v["saliency"] = write_saliency(v["root"] / "Saliency", {i: rgb.shape[:2] for i, rgb in v["images"].items()})
    return v


def small_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The synthetic benchmark (6 train, 3 val, 64x64) in the folder format, with saliency/."""
    from trainables.data.synthetic import DEFAULTS, load_synthetic

    ds = load_synthetic({**DEFAULTS, "num_train": 6, "num_val": 3})
    root = write_folder(ds, tmp_path / "folder")
    sizes = {i: ds.train.size(k) for k, i in enumerate(ds.train.ids)}
    sizes.update({i: ds.val.size(k) for k, i in enumerate(ds.val.ids)})
    return root, write_saliency(root / "saliency", sizes)


def write_saliency(folder: Path, sizes: dict[str, tuple[int, int]], seed: int = 1) -> dict[str, np.ndarray]:
    """A random greyscale PNG ``<id>.png`` per id at its size; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for image_id, (h, w) in sizes.items():
        out[image_id] = rng.integers(0, 256, (h, w)).astype(np.uint8)
        Image.fromarray(out[image_id], mode="L").save(folder / f"{image_id}.png")
    return out


def assert_saliency_equal(ds, written: dict[str, np.ndarray]) -> None:
    for split in (ds.train, ds.val):
        assert split.saliency is not None and len(split.saliency) == len(split)
        for k, image_id in enumerate(split.ids):
            got = split.saliency[k]
            assert got.dtype == np.uint8 and got.shape == split.size(k)
            np.testing.assert_array_equal(got, written[image_id])


def voc_problems(spec: dict) -> list[str]:
    with pytest.raises(DataError) as info:
        load_voc(spec)
    return info.value.problems


def folder_problems(spec: dict) -> list[str]:
    with pytest.raises(DataError) as info:
        load_folder(spec)
    return info.value.problems


# --- data.saliency: loading ------------------------------------------------------------------------------

def test_voc_loads_saliency_for_train_and_val(tmp_path):
    v = small_voc(tmp_path)
    ds = load_dataset({"name": "voc", "root": str(v["root"]), "saliency": "Saliency"})
    assert ds.train.ids == sorted(v["train"] + v["aug"]) and ds.val.ids == v["val"]
    assert_saliency_equal(ds, v["saliency"])
    assert isinstance(ds.val.saliency, ImageFiles)  # lazy: paths, decoded on access
    assert [p.name for p in ds.val.saliency.paths] == [f"{i}.png" for i in v["val"]]
    # images and masks are unchanged by it
    np.testing.assert_array_equal(ds.val.images[1], v["images"][v["val"][1]])
    np.testing.assert_array_equal(ds.val.masks[1], v["masks"][v["val"][1]])


def test_voc_saliency_is_relative_to_the_voc_folder_or_absolute(tmp_path):
    v = small_voc(tmp_path)
    # data.root at the level above VOC2012: the relative folder still resolves against VOC2012/
    ds = load_voc({"root": str(v["root"].parent), "saliency": "Saliency", "train_split": "train"})
    assert ds.train.ids == v["train"]
    assert_saliency_equal(ds, v["saliency"])
    elsewhere = tmp_path / "maps"
    (v["root"] / "Saliency").rename(elsewhere)
    ds = load_voc({"root": str(v["root"]), "saliency": str(elsewhere)})
    assert_saliency_equal(ds, v["saliency"])
    assert all(p.parent == elsewhere for p in ds.train.saliency.paths)


def test_folder_loads_saliency_for_train_and_val(tmp_path):
    root, written = small_folder(tmp_path)
    ds = load_dataset({"name": "folder", "root": str(root), "saliency": "saliency"})
    assert (len(ds.train), len(ds.val)) == (6, 3)
    assert_saliency_equal(ds, written)
    assert all(p.parent == root / "saliency" for p in ds.val.saliency.paths)


def test_folder_round_trip_writes_saliency(tmp_path):
    root, written = small_folder(tmp_path)
    ds = load_folder({"root": str(root), "saliency": "saliency"})
    again = write_folder(ds, tmp_path / "copy")
    assert sorted(p.stem for p in (again / "saliency").iterdir()) == sorted(written)
    assert_saliency_equal(load_folder({"root": str(again), "saliency": "saliency"}), written)


def test_grey_palette_png_reads_its_grey_levels(tmp_path):
    v = small_voc(tmp_path)
    i = v["val"][0]
    levels = np.arange(256, dtype=np.uint8)[::-1]  # index k is grey 255 - k
    img = Image.fromarray((255 - v["saliency"][i]).astype(np.uint8), mode="P")
    img.putpalette(np.repeat(levels, 3).tolist())
    img.save(v["root"] / "Saliency" / f"{i}.png")
    assert Image.open(v["root"] / "Saliency" / f"{i}.png").mode == "P"
    np.testing.assert_array_equal(read_saliency(v["root"] / "Saliency" / f"{i}.png"), v["saliency"][i])
    assert_saliency_equal(load_voc({"root": str(v["root"]), "saliency": "Saliency"}), v["saliency"])


@pytest.mark.parametrize("spec", [{}, {"saliency": None}, {"saliency": ""}])
def test_without_saliency_splits_have_none(tmp_path, spec):
    v = make_voc(tmp_path / "data", n_train=2, n_aug=1, n_val=1, size=(24, 32), with_real=False)
    ds = load_voc({"root": str(v["root"]), **spec})
    assert ds.train.saliency is None and ds.val.saliency is None
    root, _ = small_folder(tmp_path)
    ds = load_folder({"root": str(root), **spec})  # a saliency/ folder there is not used unless named
    assert ds.train.saliency is None and ds.val.saliency is None


def test_synthetic_data_has_no_saliency():
    ds = load_dataset({"name": "synthetic", "num_train": 4, "num_val": 2})
    assert ds.train.saliency is None and ds.val.saliency is None


@pytest.mark.parametrize("value,phrase", [(3, "must be a valid string"), (True, "must be a valid string")])
def test_saliency_setting_is_a_string(value, phrase):
    with pytest.raises(ConfigError) as e:
        load_dataset({"name": "voc", "root": "x", "saliency": value})
    assert e.value.key == "data.saliency" and phrase in str(e.value)


# --- data.saliency: problems ------------------------------------------------------------------------------

def break_saliency(path: Path, how: str) -> str:
    """Break one saliency file; returns the phrase its problem must contain."""
    if how == "missing":
        path.unlink()
        return "saliency map missing"
    if how == "rgb":
        Image.open(path).convert("RGB").save(path)
        return "not mode RGB"
    if how == "colour palette":
        img = Image.open(path).convert("P")
        pal = np.zeros((256, 3), np.uint8)
        pal[:, 0] = np.arange(256)  # reds
        img.putpalette(pal.reshape(-1).tolist())
        img.save(path)
        return "palette has colours"
    if how == "wrong size":
        arr = np.asarray(Image.open(path))
        Image.fromarray(np.ascontiguousarray(arr[:-2]), mode="L").save(path)  # two rows short
        h, w = arr.shape
        return f"saliency map is {w}x{h - 2} but its image is {w}x{h} (WxH)"
    if how == "undecodable":
        path.write_bytes(b"\x89PNG not really" * 10)
        return "not a readable image"
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "unreadable saliency map"
    raise AssertionError(how)


BREAKAGES = ["missing", "rgb", "colour palette", "wrong size", "undecodable", "truncated"]


@pytest.mark.parametrize("how", BREAKAGES)
@pytest.mark.parametrize("image_id", ["2008_000001", "2010_000000"])  # a train and a val image
def test_voc_broken_saliency_is_one_problem_naming_the_file(tmp_path, how, image_id):
    v = small_voc(tmp_path)
    phrase = break_saliency(v["root"] / "Saliency" / f"{image_id}.png", how)
    problems = voc_problems({"root": str(v["root"]), "saliency": "Saliency"})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"Saliency/{image_id}.png: ") and phrase in problems[0], problems
    # without data.saliency the same tree loads
    assert load_voc({"root": str(v["root"])}).train.saliency is None


@pytest.mark.parametrize("how", BREAKAGES)
def test_folder_broken_saliency_is_one_problem_naming_the_file(tmp_path, how):
    root, _ = small_folder(tmp_path)
    phrase = break_saliency(root / "saliency" / "train_00002.png", how)
    problems = folder_problems({"root": str(root), "saliency": "saliency"})
    assert len(problems) == 1, problems
    assert problems[0].startswith("saliency/train_00002.png: ") and phrase in problems[0], problems


def test_every_broken_saliency_file_is_listed_with_the_other_problems(tmp_path):
    v = small_voc(tmp_path)
    sal = v["root"] / "Saliency"
    break_saliency(sal / "2008_000000.png", "missing")
    break_saliency(sal / "2009_100001.png", "rgb")
    break_saliency(sal / "2010_000001.png", "wrong size")
    (v["root"] / "JPEGImages" / "2010_000000.jpg").unlink()  # an image problem, reported alongside
    problems = voc_problems({"root": str(v["root"]), "saliency": "Saliency"})
    assert len(problems) == 4, problems
    for name in ("Saliency/2008_000000.png", "Saliency/2009_100001.png", "Saliency/2010_000001.png",
                 "JPEGImages/2010_000000.jpg"):
        assert any(p.startswith(name + ": ") for p in problems), (name, problems)


def test_missing_saliency_folder_is_one_problem(tmp_path):
    v = small_voc(tmp_path)
    problems = voc_problems({"root": str(v["root"]), "saliency": "NoSuchFolder"})
    assert problems == ["NoSuchFolder/: saliency folder not found (data.saliency)"]
    root, _ = small_folder(tmp_path)
    problems = folder_problems({"root": str(root), "saliency": str(tmp_path / "nowhere")})
    assert len(problems) == 1 and str(tmp_path / "nowhere") in problems[0] and "saliency folder not found" in problems[0]


def test_scan_cache_key_changes_with_saliency_and_forgets_fixed_files(tmp_path):
    from trainables.data.dataset import cache_dir

    v = small_voc(tmp_path)
    path = v["root"] / "Saliency" / "2010_000001.png"
    good = path.read_bytes()
    break_saliency(path, "rgb")
    spec = {"root": str(v["root"])}
    scans = cache_dir() / "scans"
    assert load_voc(spec).val.saliency is None  # cached without saliency...
    before = set(scans.glob("*.npz"))
    first = voc_problems({**spec, "saliency": "Saliency"})  # ...which must not answer for it
    assert len(first) == 1, first
    assert first[0].startswith("Saliency/2010_000001.png: ") and "not mode RGB" in first[0]
    assert set(scans.glob("*.npz")) > before  # a scan of its own, cached
    assert voc_problems({**spec, "saliency": "Saliency"}) == first
    path.write_bytes(good)
    ds = load_voc({**spec, "saliency": "Saliency"})
    np.testing.assert_array_equal(ds.val.saliency[1], v["saliency"]["2010_000001"])


def test_the_scan_decodes_each_file_once(tmp_path, monkeypatch):
    import PIL.Image

    v = small_voc(tmp_path)
    opened: list[str] = []
    real_open = PIL.Image.open

    def counting_open(fp, *a, **kw):
        opened.append(Path(fp).name if isinstance(fp, (str, os.PathLike)) else "?")
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    load_voc({"root": str(v["root"]), "saliency": "Saliency"})
    n_items = len(v["images"])
    # one image, one mask and one saliency map per item: no second pass over the images
    assert sum(n.endswith(".jpg") for n in opened) == n_items, opened
    assert sum(n.endswith(".png") for n in opened) == 2 * n_items, opened


# --- the CLI ---------------------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.run", "--space", "search_spaces/aal_voc.yaml", "--dry-run",
                           "--address", "local", *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env=os.environ.copy())


def test_cli_dry_run_checks_saliency_and_exits_2_naming_the_file(tmp_path):
    v = small_voc(tmp_path)
    out = tmp_path / "out"
    args = ("--set", f"data.root={v['root']}", "--set", "data.saliency=Saliency", "--output", str(out))
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "saliency maps in" in r.stdout and str(v["root"] / "Saliency") in r.stdout
    break_saliency(v["root"] / "Saliency" / "2010_000001.png", "wrong size")
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert "data.root: 1 problem" in lines[0], r.stderr
    assert lines[1:] == ["  - Saliency/2010_000001.png: saliency map is 24x30 but its image is 24x32 (WxH)"], r.stderr
    assert not out.exists()
