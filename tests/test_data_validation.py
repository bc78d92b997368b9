"""Validation of real datasets on disk before any trial starts: each test writes a small VOC tree
(tests/voc_fixture.py) or folder-format dataset, breaks one thing, and checks that loading raises
DataError listing a problem that names the file. Also: the message's "... and N more", the scan
cache forgetting fixed files, the dispatch in trainables/data/registry.py and the CLI's exit 2."""

from __future__ import annotations

import csv
import os
import shutil
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

from trainables.settings.tree import ConfigError  # noqa: E402
from trainables.data.dataset import cache_dir  # noqa: E402
from trainables.data.registry import check_data_spec, load_dataset  # noqa: E402
from trainables.data.folder import load_folder, write_folder  # noqa: E402
from trainables.data.imagefiles import DataError, read_mask, write_palette_png  # noqa: E402
from trainables.data.voc import load_voc  # noqa: E402

ROOT = TESTS.parent
VOC_SPACE = "search_spaces/aal_voc.yaml"


# --- builders and helpers ------------------------------------------------------------------------

def small_voc(tmp_path: Path, **kw) -> dict:
    """A tiny VOC tree: train 2008_00000{0,1,2}, SBD-only 2009_10000{0,1}, val 2010_00000{0,1}
    (val 0 is 24x32 HxW, val 1 is 32x24), no real photo."""
    args = dict(n_train=3, n_aug=2, n_val=2, size=(24, 32), with_real=False)
    args.update(kw)
    return make_voc(tmp_path / "data", **args)


def small_folder(tmp_path: Path) -> Path:
    """The synthetic benchmark (6 train, 3 val, 64x64, 6 classes) in the folder format."""
    from trainables.data.synthetic import DEFAULTS, load_synthetic

    ds = load_synthetic({**DEFAULTS, "num_train": 6, "num_val": 3})
    return write_folder(ds, tmp_path / "folder")


def voc_spec(v: dict, **kw) -> dict:
    return {"root": str(v["root"]), **kw}


def voc_problems(spec: dict) -> list[str]:
    with pytest.raises(DataError) as info:
        load_voc(spec)
    assert isinstance(info.value, ConfigError) and info.value.key.startswith("data.")
    return info.value.problems


def folder_problems(root: Path) -> list[str]:
    with pytest.raises(DataError) as info:
        load_folder({"root": str(root)})
    return info.value.problems


def find(problems: list[str], *parts: str) -> list[str]:
    """The problems that contain every one of ``parts``."""
    return [p for p in problems if all(s in p for s in parts)]


def assert_reported(problems: list[str], *parts: str) -> None:
    assert find(problems, *parts), f"no problem containing {parts!r} in {problems!r}"


def read_rows(root: Path) -> list[list[str]]:
    with open(root / "labels.csv", newline="") as f:
        return list(csv.reader(f))


def write_rows(root: Path, rows: list[list[str]]) -> None:
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- the clean datasets load (the baseline every broken case departs from) -------------------------

def test_clean_voc_loads_and_keeps_255_borders(tmp_path):
    v = small_voc(tmp_path)
    # the fixture's masks have 255 object borders: those must be accepted, not counted as a class
    assert any((v["masks"][i] == 255).any() for i in v["val"])
    ds = load_voc(voc_spec(v))
    assert ds.train.ids == sorted(v["train"] + v["aug"]) and ds.val.ids == v["val"]
    for k, i in enumerate(v["val"]):
        np.testing.assert_array_equal(ds.val.masks[k], v["masks"][i])
    assert any((ds.val.masks[k] == 255).any() for k in range(len(ds.val)))


def test_clean_folder_loads_and_accepts_255(tmp_path):
    root = small_folder(tmp_path)
    mask = read_mask(root / "masks" / "val_00000.png").copy()
    mask[:3, :] = 255  # an ignore band is not a class
    write_palette_png(root / "masks" / "val_00000.png", mask)
    ds = load_folder({"root": str(root)})
    assert len(ds.train) == 6 and len(ds.val) == 3
    assert (ds.val.masks[0][:3] == 255).all()


# --- 1. missing folders and roots ------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["JPEGImages", "ImageSets/Segmentation"])
def test_voc_missing_folder(tmp_path, folder):
    v = small_voc(tmp_path)
    shutil.rmtree(v["root"] / folder)
    problems = voc_problems(voc_spec(v))
    assert_reported(problems, f"{folder}/", "folder missing")


def test_voc_root_not_found(tmp_path):
    missing = tmp_path / "no_such_voc"
    problems = voc_problems({"root": str(missing)})
    assert_reported(problems, "no_such_voc", "folder not found")


@pytest.mark.parametrize("name,kind", [("classes.txt", "file"), ("labels.csv", "file"), ("images", "folder")])
def test_folder_missing_part(tmp_path, name, kind):
    root = small_folder(tmp_path)
    target = root / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    problems = folder_problems(root)
    assert_reported(problems, name, f"{kind} missing")
    assert len(problems) == 1


def test_folder_root_not_found(tmp_path):
    problems = folder_problems(tmp_path / "no_such_folder")
    assert_reported(problems, "no_such_folder", "folder not found")


def test_voc_parent_root_missing_jpegimages_reports_only_that(tmp_path):
    v = small_voc(tmp_path)
    shutil.rmtree(v["root"] / "JPEGImages")
    problems = voc_problems({"root": str(v["root"].parent)})  # data.root = the VOCdevkit level
    assert_reported(problems, "JPEGImages", "folder missing")
    assert not find(problems, "ImageSets/Segmentation")


# --- 2. missing list files --------------------------------------------------------------------------

def test_voc_missing_val_list(tmp_path):
    v = small_voc(tmp_path)
    (v["root"] / "ImageSets" / "Segmentation" / "val.txt").unlink()
    problems = voc_problems(voc_spec(v, train_split="train"))
    assert_reported(problems, "ImageSets/Segmentation/val.txt", "list file missing", "'val'")


def test_voc_train_aug_without_list_or_aug_masks(tmp_path):
    v = small_voc(tmp_path)
    shutil.rmtree(v["root"] / "SegmentationClassAug")
    problems = voc_problems(voc_spec(v))  # train_split defaults to train_aug
    assert_reported(problems, "train_aug.txt", "list file missing", "'train_aug'", "SegmentationClassAug")
    # and train_split=train, which needs neither, still loads
    assert len(load_voc(voc_spec(v, train_split="train")).train) == 3


@pytest.mark.parametrize("split", [
    "train",
    "train_aug",
])
def test_voc_explicit_train_list_missing(tmp_path, split):
    v = small_voc(tmp_path)
    problems = voc_problems(voc_spec(v, train_split=split, train_list="lists/mine.txt"))
    assert_reported(problems, "lists/mine.txt", "list file missing")


# --- 3. missing image and mask files ----------------------------------------------------------------

@pytest.mark.parametrize("image_id", ["2008_000001", "2009_100000", "2010_000000"])
def test_voc_missing_image(tmp_path, image_id):
    v = small_voc(tmp_path)
    (v["root"] / "JPEGImages" / f"{image_id}.jpg").unlink()
    problems = voc_problems(voc_spec(v))
    assert_reported(problems, f"JPEGImages/{image_id}.jpg", "image file missing")


def test_voc_missing_val_mask(tmp_path):
    v = small_voc(tmp_path)
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        (v["root"] / folder / "2010_000001.png").unlink()
    problems = voc_problems(voc_spec(v))
    assert_reported(problems, "SegmentationClass/2010_000001.png", "mask file missing", "2010_000001")


def test_voc_missing_train_aug_mask(tmp_path):
    v = small_voc(tmp_path, aug_list=True)  # the id is listed, its SBD mask is gone
    (v["root"] / "SegmentationClassAug" / "2009_100001.png").unlink()
    problems = voc_problems(voc_spec(v))
    assert_reported(problems, "SegmentationClassAug/2009_100001.png", "mask file missing")


def test_folder_missing_image(tmp_path):
    root = small_folder(tmp_path)
    (root / "images" / "train_00001.png").unlink()
    problems = folder_problems(root)
    assert_reported(problems, "images/train_00001", "image file missing", "labels.csv line 3")


def test_folder_val_image_without_mask(tmp_path):
    root = small_folder(tmp_path)
    (root / "masks" / "val_00001.png").unlink()
    problems = folder_problems(root)
    assert_reported(problems, "masks/val_00001.png", "mask file missing")


def test_folder_missing_val_mask_is_one_problem(tmp_path):
    root = small_folder(tmp_path)
    (root / "masks" / "val_00001.png").unlink()
    problems = folder_problems(root)
    assert len(find(problems, "masks/val_00001.png")) == 1, problems
    assert len(problems) == 1


@pytest.mark.parametrize("breakage", ["missing", "rgb"])
def test_voc_broken_mask_is_one_problem(tmp_path, breakage):
    v = small_voc(tmp_path)
    seg = v["root"] / "SegmentationClass" / "2010_000000.png"
    if breakage == "missing":
        seg.unlink()
        (v["root"] / "SegmentationClassAug" / "2010_000000.png").unlink()
    else:
        Image.open(seg).convert("RGB").save(seg)
    problems = voc_problems(voc_spec(v))
    assert find(problems, "SegmentationClass/2010_000000.png")
    assert len(problems) == 1, problems


# --- 4. unreadable and truncated images ---------------------------------------------------------------

@pytest.mark.parametrize("breakage,phrase", [("garbage", "not a readable image"),
                                             ("truncated", "unreadable or truncated image")])
def test_voc_unreadable_image(tmp_path, breakage, phrase):
    v = small_voc(tmp_path)
    path = v["root"] / "JPEGImages" / "2010_000001.jpg"
    if breakage == "garbage":
        path.write_bytes(b"this is not a JPEG\n" * 20)
    else:
        truncate(path)
        with Image.open(path) as img:  # the header still opens: only a full decode finds it
            assert img.size == (24, 32)
    problems = voc_problems(voc_spec(v))
    assert_reported(problems, "JPEGImages/2010_000001.jpg", phrase)


@pytest.mark.parametrize("breakage,phrase", [("garbage", "not a readable image"),
                                             ("truncated", "unreadable or truncated image")])
def test_folder_unreadable_image(tmp_path, breakage, phrase):
    root = small_folder(tmp_path)
    path = root / "images" / "train_00002.png"
    if breakage == "garbage":
        path.write_bytes(os.urandom(500))
    else:
        truncate(path)
    problems = folder_problems(root)
    assert_reported(problems, "images/train_00002.png", phrase)


def test_voc_unreadable_mask(tmp_path):
    v = small_voc(tmp_path)
    (v["root"] / "SegmentationClass" / "2010_000000.png").write_bytes(b"\x89PNG garbage" * 10)
    problems = voc_problems(voc_spec(v))
    assert_reported(problems, "SegmentationClass/2010_000000.png", "not a readable image")


# --- 5. mask values outside the classes ----------------------------------------------------------------

def test_voc_mask_values_outside_classes(tmp_path):
    v = small_voc(tmp_path)
    mask = v["masks"]["2010_000000"].copy()
    mask[0, :4] = 21
    mask[1, :4] = 254  # 255 (kept on the borders) is ignore; 254 is not
    write_palette_png(v["root"] / "SegmentationClass" / "2010_000000.png", mask)
    problems = voc_problems(voc_spec(v))
    hit = find(problems, "SegmentationClass/2010_000000.png", "outside the classes 0..20")
    assert len(hit) == 1 and "21" in hit[0] and "254" in hit[0] and "255]" not in hit[0]
    assert len(problems) == 1


def test_folder_mask_values_outside_classes(tmp_path):
    root = small_folder(tmp_path)
    mask = read_mask(root / "masks" / "train_00003.png").copy()
    mask[-2:, :] = 7  # 6 classes + background: 0..6
    mask[:2, :] = 255
    write_palette_png(root / "masks" / "train_00003.png", mask)
    problems = folder_problems(root)
    hit = find(problems, "masks/train_00003.png", "outside the classes 0..6")
    assert len(hit) == 1 and "[7]" in hit[0]
    assert len(problems) == 1


# --- 6. image/mask size mismatch ------------------------------------------------------------------------

def test_voc_mask_size_mismatch(tmp_path):
    v = small_voc(tmp_path)
    # val 0 is 24x32 (HxW): a transposed mask
    write_palette_png(v["root"] / "SegmentationClass" / "2010_000000.png", v["masks"]["2010_000000"].T.copy())
    problems = voc_problems(voc_spec(v))
    assert_reported(problems, "SegmentationClass/2010_000000.png", "mask is 24x32 but its image is 32x24")


def test_folder_mask_size_mismatch(tmp_path):
    root = small_folder(tmp_path)
    mask = read_mask(root / "masks" / "val_00002.png")
    write_palette_png(root / "masks" / "val_00002.png", mask[:40, :50])
    problems = folder_problems(root)
    assert_reported(problems, "masks/val_00002.png", "mask is 50x40 but its image is 64x64")


# --- 7. empty splits -------------------------------------------------------------------------------------

def test_voc_empty_val_split(tmp_path):
    v = small_voc(tmp_path)
    (v["root"] / "ImageSets" / "Segmentation" / "val.txt").write_text("# no ids\n\n")
    problems = voc_problems(voc_spec(v, train_split="train"))
    assert_reported(problems, "ImageSets/Segmentation/val.txt", "split 'val' is empty")


def test_folder_without_val_rows(tmp_path):
    root = small_folder(tmp_path)
    rows = read_rows(root)
    write_rows(root, [rows[0]] + [[r[0], r[1], "train"] for r in rows[1:]])
    problems = folder_problems(root)
    assert_reported(problems, "labels.csv", "split 'val' is empty")


# --- 8. unknown class names ------------------------------------------------------------------------------

def test_folder_unknown_class(tmp_path):
    root = small_folder(tmp_path)
    rows = read_rows(root)
    rows[2][1] = rows[2][1] + ";unicorn"  # line 3: train_00001
    write_rows(root, rows)
    problems = folder_problems(root)
    assert_reported(problems, "labels.csv line 3", "unknown class 'unicorn'", "train_00001")


def test_voc_label_file_unknown_class(tmp_path):
    from trainables.data.voc import CLASS_NAMES

    v = small_voc(tmp_path)
    label_file = tmp_path / "labels.csv"

    def write(extra: str) -> None:
        lines = ["image,labels"]
        for i in v["train"]:
            names = [CLASS_NAMES[c] for c in np.unique(v["masks"][i]) if 0 < c < 255]
            lines.append(f"{i},{';'.join(names)}{extra if i == v['train'][1] else ''}")
        label_file.write_text("\n".join(lines) + "\n")

    write("")
    spec = voc_spec(v, train_split="train", label_file=str(label_file))
    assert len(load_voc(spec).train) == 3  # the label file itself is fine
    write(";unicorn")
    problems = voc_problems(spec)
    assert_reported(problems, "labels.csv line 3", "unknown class 'unicorn'", v["train"][1])


# --- 9. images without any label -------------------------------------------------------------------------

def test_folder_row_without_labels(tmp_path):
    root = small_folder(tmp_path)
    rows = read_rows(root)
    rows[1][1] = ""  # line 2: train_00000
    write_rows(root, rows)
    problems = folder_problems(root)
    assert_reported(problems, "labels.csv line 2", "train_00000", "has no class")


def test_folder_image_not_in_labels(tmp_path):
    root = small_folder(tmp_path)
    shutil.copy(root / "images" / "train_00000.png", root / "images" / "stray.png")
    problems = folder_problems(root)
    assert_reported(problems, "images/stray.png", "not in labels.csv")


def test_voc_mask_without_foreground(tmp_path):
    v = small_voc(tmp_path)
    i = v["train"][0]
    write_palette_png(v["root"] / "SegmentationClass" / f"{i}.png", np.zeros((24, 32), np.uint8))
    problems = voc_problems(voc_spec(v, train_split="train"))
    assert_reported(problems, i, "no foreground class in its mask")


# --- 10. colour masks ----------------------------------------------------------------------------------------

def test_voc_rgb_mask_refused(tmp_path):
    v = small_voc(tmp_path)
    path = v["root"] / "SegmentationClass" / "2010_000001.png"
    Image.open(path).convert("RGB").save(path)
    assert Image.open(path).mode == "RGB"
    problems = voc_problems(voc_spec(v))
    assert_reported(problems, "SegmentationClass/2010_000001.png", "single-channel", "not mode RGB")


def test_folder_rgb_mask_refused(tmp_path):
    root = small_folder(tmp_path)
    path = root / "masks" / "val_00000.png"
    Image.open(path).convert("RGB").save(path)
    problems = folder_problems(root)
    assert_reported(problems, "masks/val_00000.png", "single-channel", "not mode RGB")


# --- 11. many problems: the first 10 listed, the total counted --------------------------------------------

def test_many_problems_list_first_ten(tmp_path):
    v = small_voc(tmp_path, n_train=15, n_aug=0, n_val=1)
    for i in v["train"]:
        (v["root"] / "JPEGImages" / f"{i}.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError) as info:
        load_voc(voc_spec(v, train_split="train"))
    e = info.value
    assert len(e.problems) == 15
    assert all(find(e.problems, f"JPEGImages/{i}.jpg", "not a readable image") for i in v["train"])
    assert e.details == e.problems[:10] + ["... and 5 more"]
    lines = str(e).splitlines()
    assert "data.root=" in lines[0] and "15 problems in" in lines[0] and "(the first 10 listed)" in lines[0]
    assert lines[1:] == [f"  - {p}" for p in e.problems[:10]] + ["  - ... and 5 more"]
    assert not any(p in str(e) for p in e.problems[10:])


def test_few_problems_are_all_listed(tmp_path):
    v = small_voc(tmp_path)
    (v["root"] / "JPEGImages" / "2010_000000.jpg").unlink()
    (v["root"] / "JPEGImages" / "2010_000001.jpg").unlink()
    with pytest.raises(DataError) as info:
        load_voc(voc_spec(v))
    lines = str(info.value).splitlines()
    assert "2 problems in" in lines[0] and "listed)" not in lines[0]
    assert len(lines) == 3 and not any("more" in ln for ln in lines)


# --- 12. the scan cache forgets fixed files ----------------------------------------------------------------

@pytest.mark.parametrize("what", ["image", "mask"])
def test_fixing_the_file_makes_loading_succeed(tmp_path, what):
    v = small_voc(tmp_path)
    rel = "JPEGImages/2010_000000.jpg" if what == "image" else "SegmentationClass/2010_000000.png"
    path = v["root"] / rel
    good = path.read_bytes()
    if what == "image":
        truncate(path)
    else:
        mask = v["masks"]["2010_000000"].copy()
        mask[:2] = 40
        write_palette_png(path, mask)
    spec = voc_spec(v)
    first = voc_problems(spec)
    assert find(first, rel)
    assert list((cache_dir() / "scans").glob("*.npz"))  # the scan result is cached...
    assert voc_problems(spec) == first  # ...and a second load reports the same
    path.write_bytes(good)
    ds = load_voc(spec)  # the fixed file changes the key: no stale problems
    k = ds.val.ids.index("2010_000000")
    assert ds.val.size(k) == (24, 32)
    np.testing.assert_array_equal(ds.val.masks[k], v["masks"]["2010_000000"])
    np.testing.assert_array_equal(ds.val.images[k], v["images"]["2010_000000"])


def test_fixing_a_folder_mask_makes_loading_succeed(tmp_path):
    root = small_folder(tmp_path)
    path = root / "masks" / "val_00001.png"
    good = path.read_bytes()
    Image.open(path).convert("RGB").save(path)
    assert find(folder_problems(root), "masks/val_00001.png")
    path.write_bytes(good)
    assert len(load_folder({"root": str(root)}).val) == 3


# --- dispatch by data.name ------------------------------------------------------------------------------------

def test_datasets_dispatch_raises_data_error(tmp_path):
    v = small_voc(tmp_path)
    (v["root"] / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(DataError) as info:
        check_data_spec({"name": "voc", "root": str(v["root"])})
    assert find(info.value.problems, "JPEGImages/2008_000002.jpg", "image file missing")
    with pytest.raises(DataError):
        load_dataset({"name": "voc", "root": str(v["root"])})

    root = small_folder(tmp_path)
    assert "folder dataset at" in check_data_spec({"name": "folder", "root": str(root)})
    (root / "classes.txt").unlink()
    with pytest.raises(DataError) as info:
        load_dataset({"name": "folder", "root": str(root)})
    assert find(info.value.problems, "classes.txt", "file missing")


# --- 13. the CLI ------------------------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.run", "--space", VOC_SPACE, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ.copy())


# The broken-data runs are real runs (no --dry-run), so that "nothing written" can fail; should
# the data check ever let them through, an address where no Ray cluster listens keeps them from
# starting a local Ray cluster.
NO_RAY = ("--address", "ray://127.0.0.1:9")


def break_two(v: dict) -> None:
    (v["root"] / "JPEGImages" / "2010_000001.jpg").unlink()
    mask = v["masks"]["2008_000000"].copy()
    mask[0, 0] = 99
    write_palette_png(v["root"] / "SegmentationClass" / "2008_000000.png", mask)


def test_cli_dry_run_on_good_voc(tmp_path):
    v = small_voc(tmp_path)
    r = run_cli("--dry-run", "--set", f"data.root={v['root'].parent}", "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "PASCAL VOC 2012 at" in r.stdout and "every file checked" in r.stdout
    assert "train_aug 5 images" in r.stdout and "val 2 images" in r.stdout


def test_cli_broken_voc_exits_2_and_writes_nothing(tmp_path):
    v = small_voc(tmp_path)
    break_two(v)
    out = tmp_path / "out"
    # no --dry-run: the data must be refused before the output folder is made
    r = run_cli(*NO_RAY, "--set", f"data.root={v['root']}", "--output", str(out))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {VOC_SPACE}: data.root: 2 problems"), r.stderr
    assert len(lines) == 3, r.stderr
    assert any("JPEGImages/2010_000001.jpg: image file missing" in ln and ln.startswith("  - ") for ln in lines)
    assert any("SegmentationClass/2008_000000.png: mask values [99]" in ln and ln.startswith("  - ") for ln in lines)
    assert not out.exists()
    assert r.stdout == ""


def test_cli_resume_on_broken_data_leaves_study_untouched(tmp_path):
    v = small_voc(tmp_path)
    break_two(v)
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    (study / "notes.txt").write_bytes(b"keep me\x00\x01")
    (study / "trials").mkdir()
    (study / "trials" / "t0.json").write_text('{"score": 0.5}')
    before = {p: (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in study.rglob("*")}
    r = run_cli(*NO_RAY, "--resume", "--output", str(study), "--set", f"data.root={v['root']}")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "data.root: 2 problems" in r.stderr and "JPEGImages/2010_000001.jpg" in r.stderr
    after = {p: (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in study.rglob("*")}
    assert after == before
