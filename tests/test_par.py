"""PAR (trainables/pseudo/par.py) and the reliable-label rule with ``refiner: par``: hand-made
images with one edge, the propagation matrix, batching, devices, and a study that searches the
refiner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from trainables.pseudo.labels import PseudoLabelConfig, batch_reliable_labels, reliable_labels
from trainables.pseudo.par import neighbour_offsets, par_affinity, par_propagate, par_refine

ROOT = Path(__file__).resolve().parents[1]
IGN = 255


def _edge_image(h: int = 8, w: int = 32, edge: int = 16) -> torch.Tensor:
    """(1, 3, h, w): a dark flat region left of column ``edge``, a bright one from it on."""
    img = torch.full((1, 3, h, w), 40.0)
    img[..., edge:] = 200.0
    return img


def _seeded(h: int, w: int, seeds: dict[int, int]) -> torch.Tensor:
    """(1, 2, h, w) probabilities: undecided (0.5, 0.5) except whole columns seeded to a class."""
    p = torch.full((1, 2, h, w), 0.5)
    for col, cls in seeds.items():
        p[0, :, :, col] = 0.0
        p[0, cls, :, col] = 1.0
    return p


def test_labels_spread_within_a_region_and_stop_at_the_edge():
    # Class 0 is seeded two columns left of the edge, class 1 twelve columns right of it. On a
    # flat image class 0 is nearer, so it spreads over the edge; with the edge it stops there.
    seeds, dil = {14: 0, 28: 1}, [1, 2, 4]
    flat = par_refine(torch.full((1, 3, 8, 32), 40.0), _seeded(8, 32, seeds), dil, 10, scale=1.0)[0].argmax(0)
    assert (flat[:, 16:22] == 0).all() and (flat[:, 22:] == 1).all()  # nothing stops class 0 on a flat image
    out = par_refine(_edge_image(), _seeded(8, 32, seeds), dil, 10, scale=1.0)[0]
    labels = out.argmax(0)
    assert (labels[:, :16] == 0).all() and (labels[:, 16:] == 1).all()
    # spread: no pixel is undecided any more (ten steps move the far ones only a little)
    assert (out.max(0).values > 0.5).all()


def test_output_rows_are_distributions_and_the_matrix_rows_sum_to_one():
    torch.manual_seed(0)
    h, w, dil = 5, 6, [1, 2, 4]
    img = torch.rand(1, 3, h, w) * 255
    aff = par_affinity(img, dil)
    assert aff.shape == (1, 8 * len(dil), h, w) and (aff >= 0).all()
    torch.testing.assert_close(aff.sum(1), torch.ones(1, h, w))
    # The propagation matrix A itself: channel j starts as the one-hot of pixel j, so after one
    # step channel j at pixel i is A[i, j] (replicate padding folds the border's weights back in).
    basis = torch.eye(h * w).view(1, h * w, h, w)
    a = par_propagate(basis, aff, dil, 1)[0].flatten(1).T  # (pixels i, pixels j)
    torch.testing.assert_close(a.sum(1), torch.ones(h * w))
    assert (a >= 0).all()
    # and ten steps of it keep a distribution a distribution
    p = torch.softmax(torch.randn(1, 3, h, w), 1)
    torch.testing.assert_close(par_refine(img, p, dil, 10, scale=1.0).sum(1), torch.ones(1, h, w))


def test_affinity_ignores_the_colour_scale_and_weights_near_neighbours_more():
    torch.manual_seed(1)
    img = torch.rand(1, 3, 12, 12)
    aff = par_affinity(img, [1, 2])
    # per-channel affine changes of colour (uint8 RGB vs the normalised input) change nothing
    scaled = img * torch.tensor([255.0, 20.0, 3.0]).view(1, 3, 1, 1) + torch.tensor([5.0, -1.0, 0.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(par_affinity(scaled, [1, 2]), aff, atol=1e-5, rtol=1e-4)
    # a flat image: only the position prior differs between neighbours, and dilation 1 wins
    flat = par_affinity(torch.ones(1, 3, 6, 6), [1, 2])[0, :, 3, 3]
    assert flat[:8].sum() > flat[8:].sum()
    assert neighbour_offsets([1, 2])[8] == (-2, -2)


def test_batched_equals_per_image():
    torch.manual_seed(2)
    img = torch.rand(3, 3, 20, 24) * 255
    p = torch.softmax(torch.randn(3, 4, 20, 24), 1)
    p[1, 3] = 0.0  # a padded class channel: stays zero
    batch = par_refine(img, p, scale=0.5)
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], par_refine(img[i : i + 1], p[i : i + 1], scale=0.5))
    assert (batch[1, 3] == 0).all()


def test_rule_with_par_batched_equals_per_image():
    # Images with different class sets (one with none): the batch packs them with zero padding.
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (4, 16, 20, 3)).astype(np.uint8)
    cams = torch.from_numpy(rng.random((4, 3, 16, 20)).astype(np.float32) ** 2)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    cfg = PseudoLabelConfig(refiner="par", fg_percentile=0.3, crf_confidence=0.5)
    out, conf = batch_reliable_labels(rgb, cams, labels, cfg, return_confidence=True)
    for i in range(4):
        ref, ref_conf = reliable_labels(rgb[i], cams[i].numpy(), labels[i].numpy(), cfg, return_confidence=True)
        np.testing.assert_array_equal(out[i].numpy(), ref)
        np.testing.assert_allclose(conf[i].numpy(), ref_conf, atol=1e-6)
    assert set(torch.unique(out[1]).tolist()) <= {0, 2, IGN} and set(torch.unique(out[3]).tolist()) <= {0, IGN}


def test_rule_with_par_keeps_a_bleeding_cam_out_of_the_other_region():
    # A CAM of class 1 covers the bright region and bleeds two columns into the dark one. Used
    # as they are, the scores label those two columns class 1; PAR pulls them to their region's
    # background. (RRM's pruning keeps them: their CAM survives the cut, and the rule's "sure"
    # mask is per pixel, not per label.)
    rgb = np.full((8, 16, 3), 40, np.uint8)
    rgb[:, 8:] = 200
    cams = np.zeros((1, 8, 16), np.float32)
    cams[0, :, 6:] = 0.9
    base = dict(fg_percentile=0.0, cam_floor=0.1, crf_confidence=0.5, bg_cutoff=0.5, par_scale=1.0)
    raw = reliable_labels(rgb, cams, np.array([1]), PseudoLabelConfig(crf=False, **base))
    par = reliable_labels(rgb, cams, np.array([1]), PseudoLabelConfig(refiner="par", **base))
    assert (raw[:, 6:] == 1).all() and (raw[:, :6] == 0).all()
    assert (par[:, 8:] == 1).all() and (par[:, :6] == 0).all()
    assert (par[:, 6:8] == 0).all()


def test_par_is_the_same_on_every_thread_count_and_device():
    torch.manual_seed(3)
    img = torch.rand(2, 3, 33, 40) * 255
    p = torch.softmax(torch.randn(2, 3, 33, 40), 1)
    ref = par_refine(img, p)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.testing.assert_close(par_refine(img, p), ref)
    finally:
        torch.set_num_threads(threads)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the CPU-vs-device comparison runs where there is one")
    got = par_refine(img.cuda(), p.cuda()).cpu()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_aal_voc_documents_par_variants_that_need_no_crf_workers(tmp_path):
    from study.runner import pseudo_plan
    from study.space import load_spec
    from voc_fixture import make_voc

    make_voc(tmp_path, n_train=2, n_aug=2, n_val=1, size=(24, 32), with_real=False)
    path = ROOT / "search_spaces" / "aal_voc.yaml"
    root = [f"data.root={tmp_path}"]
    assert pseudo_plan(load_spec(path, root)) == [
        "pseudo     densecrf: 7 CRF worker process(es) per trial (pseudo.workers=auto)"]
    # the variants exactly as the YAML's comments write them
    variants = [line.split("#", 1)[1].split("--set")[1:] for line in path.read_text().splitlines()
                if "--set fixed.pseudo.refiner=par" in line]
    assert len(variants) == 2
    for sets in variants:
        spec = load_spec(path, root + [s.strip() for s in sets])
        assert spec.trainable_config()["pseudo"]["refiner"] == "par" and spec.resources["cpu"] == 2
        assert pseudo_plan(spec) == ["pseudo     par: refined inside the training step on the trial's device; "
                                     "no CRF workers"]
    assert spec.resources["gpu"] == 0.25


@pytest.mark.e2e
def test_study_searches_the_refiner(tmp_path):
    doc = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    doc.update(name="refiner", sampler="grid", budget={"samples": 2, "concurrency": 2}, scheduler={"type": "none"},
               search={"pseudo.refiner": {"type": "categorical", "choices": ["densecrf", "par"]}})
    doc["fixed"]["eval"] = {"crf": True, "refiner": "par"}
    space = tmp_path / "refiner.yaml"
    space.write_text(yaml.safe_dump(doc))
    out = tmp_path / "study"
    dry = subprocess.run([sys.executable, "-m", "study.run", "--space", str(space), "--output", str(out), "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "pseudo     par: refined inside the training step" in dry.stdout
    assert "pseudo     densecrf: 0 CRF worker" in dry.stdout
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(space), "--output", str(out),
                           "--address", "local"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import pandas as pd

    trials = pd.read_parquet(out / "trials.parquet")
    assert (trials["status"] == "COMPLETE").all()
    col = next(c for c in trials.columns if c.endswith("pseudo.refiner"))
    assert sorted(trials[col]) == ["densecrf", "par"]
    assert trials["miou"].between(0, 1).all()
