"""Figure grids of the review panels trials save (``trainables/evaluation/review.py``): what the
CAMs, the pseudo labels and the predictions look like, drawn with PIL (fast enough for the study
driver to render every trial's grid as the trial ends).

- :func:`trial_grid`: per val image, the image, its ground truth, the CAM of each of its classes
  over the image, and the method's output (mask or prediction).
- :func:`pseudo_grid`: per training image, the image, its ground truth and the reliable pseudo
  labels; ignored pixels are hatched.
- :func:`comparison_grid`: the same val images with one output column per method.

Masks use the VOC palette; class 255 (ignored / unreliable) is a grey hatch. Each grid ends with
a legend of the classes it shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from trainables.data.imagefiles import voc_palette

TILE = 144  # each picture is fitted into a TILE x TILE box
PAD, HEADER, CAPTION = 6, 22, 16
IGNORE = 255


def _font(size: int = 12):
    return ImageFont.load_default(size=size)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 in the VOC palette, 255 as a grey diagonal hatch.

    Example:
        >>> m = colour_mask(np.array([[0, 1, 0, 0, 0, 0], [255] * 6], dtype=np.uint8))
        >>> m[0, :2].tolist(), [int(v) for v in m[1, :, 0]]  # the hatch: stripes 3 pixels wide
        ([[0, 0, 0], [128, 0, 0]], [224, 224, 96, 96, 96, 224])
    """
    mask = np.asarray(mask)
    out = voc_palette()[mask].astype(np.uint8)
    yy, xx = np.indices(mask.shape)
    hatch = np.where(((xx + yy) // 3) % 2 == 0, 224, 96).astype(np.uint8)
    out[mask == IGNORE] = np.repeat(hatch[mask == IGNORE][:, None], 3, axis=1)
    return out


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A CAM (H, W) uint8 (0-255) drawn over the image (H, W, 3) with matplotlib's jet colours."""
    from matplotlib import colormaps

    heat = (colormaps["jet"](np.asarray(cam) / 255.0)[..., :3] * 255).astype(np.float32)
    return ((1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * heat).round().astype(np.uint8)


def _fit(picture: np.ndarray, is_mask: bool) -> Image.Image:
    """A picture fitted into the TILE box: an RGB image resized bilinearly; a class mask resized
    by nearest neighbour, then coloured (so the hatch of ignored pixels has the same stripes at
    every image size)."""
    img = Image.fromarray(np.asarray(picture, dtype=np.uint8))
    scale = TILE / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.NEAREST if is_mask else Image.BILINEAR)
    return Image.fromarray(colour_mask(np.asarray(img))) if is_mask else img


Cell = tuple[np.ndarray, str, bool] | None  # (RGB image or class mask, caption, is a mask) or empty


def draw_grid(title: str, columns: list[str], rows: list[tuple[str, list[Cell]]], classes: list[str],
              shown: set[int], hatch: bool = False) -> Image.Image:
    """Rows of captioned pictures under column titles, a row label at the left of each row and a
    legend of the ``shown`` classes (and the hatch, with ``hatch``) at the bottom."""
    label_w, ncol = 110, len(columns)
    cell_h = TILE + CAPTION + PAD
    legend_h = 24 * (1 + (len(shown) + 1) // 6)
    width = max(label_w + ncol * (TILE + PAD) + PAD, int(_font(14).getlength(title)) + 2 * PAD)
    height = HEADER * 2 + len(rows) * cell_h + legend_h + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 4), title, fill="black", font=_font(14))
    for c, name in enumerate(columns):
        draw.text((label_w + c * (TILE + PAD), HEADER + 2), name, fill="black", font=_font(12))
    for r, (label, cells) in enumerate(rows):
        y = 2 * HEADER + r * cell_h
        draw.text((PAD, y + TILE // 2 - 6), label[:16], fill="black", font=_font(11))
        for c, cell in enumerate(cells):
            if cell is None:
                continue
            picture, caption, is_mask = cell
            x = label_w + c * (TILE + PAD)
            canvas.paste(_fit(picture, is_mask), (x, y))
            draw.text((x, y + TILE + 1), caption[:24], fill="#333333", font=_font(11))
    _legend(draw, canvas, classes, shown, hatch, (PAD, height - legend_h))
    return canvas


def _legend(draw: ImageDraw.ImageDraw, canvas: Image.Image, classes: list[str], shown: set[int], hatch: bool,
            at: tuple[int, int]) -> None:
    items = [(colour_mask(np.full((12, 12), k, dtype=np.uint8)), classes[k] if k < len(classes) else str(k))
             for k in sorted(shown) if k != IGNORE]
    if hatch:
        items.append((colour_mask(np.full((12, 12), IGNORE, dtype=np.uint8)), "ignored (unreliable)"))
    x, y = at
    for swatch, name in items:
        if x + 150 > canvas.width:
            x, y = at[0], y + 20
        canvas.paste(Image.fromarray(swatch), (x, y + 2))
        draw.text((x + 16, y), name, fill="black", font=_font(11))
        x += 24 + int(draw.textlength(name, font=_font(11)))


def _present(*masks) -> set[int]:
    return set().union(*(set(np.unique(m).tolist()) for m in masks if m is not None))


def trial_grid(panel: dict, label: str = "") -> Image.Image:
    """The val images of a loaded panel (``review.load_panel``): image, ground truth, CAM of each
    class of the image over it, and the method's output."""
    names = panel["class_names"]
    ncam = max((len(v.get("cam_classes", [])) for v in panel["val"]), default=0)
    rows, shown = [], set()
    for v in panel["val"]:
        cams = [(cam_overlay(v["image"], _resized(m, v["image"])), f"CAM: {names[int(k)]}", False)
                for m, k in zip(v.get("cams", []), v.get("cam_classes", []))]
        gt, pred = v.get("gt"), v.get("pred")
        shown |= _present(gt, pred)
        rows.append((v["id"], [(v["image"], "", False), _mask_cell(gt), *cams, *[None] * (ncam - len(cams)),
                               _mask_cell(pred)]))
    columns = ["image", "ground truth", *[f"CAM {k + 1}" for k in range(ncam)], "output"]
    return draw_grid(_title(panel, "val", label), columns, rows, names, shown, hatch=IGNORE in shown)


def pseudo_grid(panel: dict, label: str = "") -> Image.Image | None:
    """The training images of a panel with their reliable pseudo labels (None if it has none)."""
    items = [t for t in panel["train"] if "pseudo" in t]
    if not items:
        return None
    rows, shown = [], set()
    for t in items:
        kept = float(np.mean(t["pseudo"] != IGNORE))
        shown |= _present(t.get("gt"), t["pseudo"])
        rows.append((t["id"], [(t["image"], "", False), _mask_cell(t.get("gt")),
                               _mask_cell(t["pseudo"], f"reliable: {100 * kept:.0f}% of pixels")]))
    return draw_grid(_title(panel, "train: reliable pseudo labels", label), ["image", "ground truth", "pseudo label"],
                     rows, panel["class_names"], shown, hatch=True)


def comparison_grid(panels: dict[str, dict], title: str) -> Image.Image:
    """One row per val image of the first panel, one output column per method (``panels``:
    column title -> loaded panel); images a method's panel lacks stay empty."""
    first = next(iter(panels.values()))
    by_id = {label: {v["id"]: v for v in p["val"]} for label, p in panels.items()}
    rows, shown = [], set()
    for v in first["val"]:
        outs = [by_id[label].get(v["id"], {}).get("pred") for label in panels]
        shown |= _present(v.get("gt"), *outs)
        rows.append((v["id"], [(v["image"], "", False), _mask_cell(v.get("gt")), *[_mask_cell(o) for o in outs]]))
    return draw_grid(title, ["image", "ground truth", *panels], rows, first["class_names"], shown,
                     hatch=IGNORE in shown)


def _mask_cell(mask, caption: str = "") -> Cell:
    return None if mask is None else (np.asarray(mask, dtype=np.uint8), caption, True)


def _resized(cam: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A CAM at the image's size (they are stored at the same size; this guards old panels)."""
    if cam.shape == image.shape[:2]:
        return cam
    return np.asarray(Image.fromarray(cam).resize(image.shape[1::-1], Image.BILINEAR))


def _title(panel: dict, what: str, label: str = "") -> str:
    info = panel["info"]
    parts = [f"{label + ': ' if label else ''}{panel.get('dataset') or 'data'} {what}"]
    if "epoch" in info:
        parts.append(f"epoch {info['epoch']}")
    if "val_miou" in info:
        parts.append(f"val mIoU {100 * info['val_miou']:.1f}")
    if "train_cam_threshold" in info:
        parts.append(f"CAM threshold {info['train_cam_threshold']:.2f}")
    return ", ".join(parts)


def render_panel(panel_path: str | Path, out_dir: str | Path, label: str = "", prefix: str = "") -> list[Path]:
    """``<prefix>val_grid.png`` (and ``<prefix>pseudo_labels.png`` when the panel has training
    images) of a saved panel, written into ``out_dir``; returns the paths."""
    from trainables.evaluation.review import load_panel

    panel = load_panel(panel_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    val = trial_grid(panel, label) if panel["val"] else None  # eval.review_images: 0 shows none
    for name, image in (("val_grid.png", val), ("pseudo_labels.png", pseudo_grid(panel, label))):
        if image is not None:
            image.save(out_dir / f"{prefix}{name}", optimize=True)
            paths.append(out_dir / f"{prefix}{name}")
    return paths

