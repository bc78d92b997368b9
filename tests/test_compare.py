"""Comparisons: validation of the comparison YAML, the seed reruns' study, equal budgets in the
shipped search spaces, and one tiny comparison through the real CLI (every registered method,
two seeds). Methods, labels and baselines come from the registry (trainables/methods/registry.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.compare import load_compare, seeds_spec
from study.space import SpaceError, load_spec
from trainables.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
# What a method's tiny study adds to the settings every study shares (a method not listed adds
# nothing): a searched parameter of its own, and for SC-CAM two rounds (a by-round table).
SEARCH = {"aal": {"pseudo.fg_percentile": {"type": "uniform", "low": 0.3, "high": 0.8}},
          "seam": {"seam.scale": {"type": "uniform", "low": 0.4, "high": 0.7}},
          "sccam": {"sccam.k": {"type": "int", "low": 2, "high": 4}},
          "mcis": {"mcis.test_partners": {"type": "int", "low": 1, "high": 3}}}
FIXED = {"sccam": {"sccam": {"rounds": 2}}}
ROUNDS = [m for m, fixed in FIXED.items() if fixed.get(m, {}).get("rounds", 1) > 1]
FIRST = next(iter(METHODS))  # the first study of the tiny comparison


def _write_tiny(tmp: Path, seeds=(0, 1), samples: int = 1) -> Path:
    assert set(SEARCH) | set(FIXED) <= set(METHODS)
    for m in METHODS:
        fixed = {"model": {"backbone": "small_cnn", "width": 16, "seg_hidden": 32},
                 "pretrain": {"epochs": 1, "batch_size": 16}, "train": {"epochs": 2, "batch_size": 16, "crop": 32},
                 **FIXED.get(m, {})}
        doc = {"name": f"tiny-{m}", "method": m, "data": {"name": "synthetic", "num_train": 32, "num_val": 8,
                                                          "image_size": 32},
               "fixed": fixed, "search": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
                                          **SEARCH.get(m, {})},
               "budget": {"samples": 4, "concurrency": 1},
               "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}
        (tmp / f"{m}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    cmp = {"name": "tiny-compare", "compare": {"studies": [f"{m}.yaml" for m in METHODS], "seeds": list(seeds)},
           "budget": {"samples": samples, "concurrency": 2}}
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(cmp, sort_keys=False))
    return path


def test_the_comparison_budget_overrides_every_study(tmp_path):
    c = load_compare(_write_tiny(tmp_path), num_samples=3)
    assert [s.method for s in c.studies] == list(METHODS)
    assert {(s.samples, s.concurrency) for s in c.studies} == {(3, 2)}
    assert c.seeds == [0, 1]


@pytest.mark.parametrize("override,key", [("compare.seeds=[1, 1]", "compare.seeds"),
                                          ("compare.studies=[nope.yaml]", "compare.studies"),
                                          ("compare.extra=1", "compare.extra"),
                                          ("budget.samples=0", "budget.samples"),
                                          ("fixed.train.lr=1", "--set fixed.train.lr=1"),
                                          ("compare.set.fixed.train.crop=abc",
                                           f"compare.studies: {FIRST}.yaml: fixed.train.crop")])
def test_bad_comparisons_name_the_key(tmp_path, override, key):
    with pytest.raises(SpaceError) as e:
        load_compare(_write_tiny(tmp_path), [override])
    assert e.value.key == key


def test_seed_reruns_fix_the_best_configuration_and_grid_the_seed(tmp_path):
    spec = next(s for s in load_compare(_write_tiny(tmp_path)).studies if s.method == "seam")
    s = seeds_spec(spec, {"train.lr": 0.004, "seam.scale": 0.55}, [0, 1, 2])
    assert s.name == "tiny-seam-seeds" and s.sampler == "grid" and s.samples == 3
    assert s.scheduler["type"] == "none" and [p.name for p in s.params] == ["train.seed"]
    assert s.fixed["train"]["lr"] == 0.004 and s.fixed["seam"]["scale"] == 0.55


def test_grid_sampler_takes_categorical_parameters_and_the_grid_size(tmp_path):
    p = tmp_path / "cam.yaml"
    _write_tiny(tmp_path)
    with pytest.raises(SpaceError, match="categorical parameters only"):
        load_spec(p, ["sampler=grid"])
    doc = yaml.safe_load(p.read_text())
    doc["search"] = {"train.seed": {"type": "categorical", "choices": [0, 1, 2]}}
    doc["sampler"] = "grid"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(SpaceError, match="grid's size"):
        load_spec(p)
    assert load_spec(p, ["budget.samples=3"]).samples == 3


def test_shipped_baselines_share_the_single_stage_budget():
    """Every registered method's <method>.yaml: same data, backbone, start weights, epochs,
    optimizer, batch, crop, trials, concurrency and scheduler as aal.yaml (the shared checkpoint
    needs the first four); compare.yaml runs them all."""
    docs = {m: yaml.safe_load((SPACES / f"{m}.yaml").read_text()) for m in METHODS}
    ref = docs["aal"]
    for m, d in docs.items():
        for key in ("data", "budget", "scheduler", "resources", "metric", "seed", "tpe_startup"):
            assert d[key] == ref[key], (m, key)
        for key in ("model", "pretrain"):
            assert d["fixed"][key] == ref["fixed"][key], (m, key)
        for key in ("epochs", "batch_size", "crop", "optimizer"):
            assert d["fixed"]["train"][key] == ref["fixed"]["train"][key], (m, key)
        assert d["search"]["train.lr"] == ref["search"]["train.lr"], m
    c = load_compare(SPACES / "compare.yaml")
    # The single-stage model, then the baselines, then the other methods, each in registry order.
    order = (["aal"] + [m for m, meth in METHODS.items() if meth.baseline]
             + [m for m, meth in METHODS.items() if m != "aal" and not meth.baseline])
    assert [s.method for s in c.studies] == order and len(c.seeds) >= 3


@pytest.mark.e2e
def test_one_command_runs_the_comparison_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(_write_tiny(tmp_path)), "--output",
                           str(out), "--address", "local"], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"comparison report: {(out / 'comparison.md').resolve()}" in proc.stdout
    md = (out / "comparison.md").read_text()
    for m in METHODS.values():
        assert f"| {m.label} " in md
    baselines = [m.label for m in METHODS.values() if m.baseline]
    assert baselines and all(f"### Δ against {label}" in md for label in baselines)
    assert "mean ± std (2 seeds)" in md and "NOT comparable" in md and "## CAM quality" in md
    # A by-round table for each method run in rounds, and for no other.
    assert ROUNDS and all(f"### {METHODS[m].label} by round" in md for m in ROUNDS)
    assert md.count(" by round (") == len(ROUNDS)
    assert (out / "figures" / "per_class_comparison.png").stat().st_size > 1000
    # One review grid: the same val images, a column per method (image, ground truth, then the methods).
    from PIL import Image

    from reports.grids import PAD, TILE

    grid = Image.open(out / "figures" / "review_grid.png")
    assert grid.width == 110 + (2 + len(METHODS)) * (TILE + PAD) + PAD
    assert "![review grid](figures/review_grid.png)" in md
    # The single-stage study's own report gets the same-data rows of the baselines, of no other.
    own = (out / "tiny-aal" / "report.md").read_text()
    for name, m in METHODS.items():
        assert (f"{m.label} (best trial of `tiny-{name}`)" in own) == m.baseline, name
    table = pd.read_parquet(out / "comparison.parquet")
    assert list(table.columns) == ["method", "row", "class_name", "iou", "versus", "low", "high", "resolved"]
    assert {"best trial", "seed mean", "seed std", "difference", "CAM difference"} <= set(table["row"])
    # Every pair of methods: a paired-bootstrap difference per class and in mIoU, with its interval.
    diffs = table[(table["row"] == "difference") & (table["class_name"] == "mIoU")]
    n = len(METHODS)
    assert len(diffs) == n * (n - 1) // 2 and (diffs["low"] <= diffs["iou"]).all() and (diffs["iou"] <= diffs["high"]).all()
    assert (diffs["resolved"] == ((diffs["low"] > 0) | (diffs["high"] < 0))).all()
    assert "## Differences with 95 % intervals" in md
    assert any(v in md for v in ("**holds**", "**reversed**", "**not resolved at this budget**"))
    seed_means = {}
    for name, m in METHODS.items():
        seeds = pd.read_parquet(out / f"tiny-{name}-seeds" / "trials.parquet")
        assert len(seeds) == 2 and set(seeds["status"]) == {"COMPLETE"}, name
        assert sorted(seeds["param.train.seed"]) == [0, 1], name
        # Each method's row of seed means is the mean of its two seed runs.
        mean = table[(table["method"] == m.label) & (table["row"] == "seed mean") & (table["class_name"] == "mIoU")]
        assert mean["iou"].item() == pytest.approx(seeds["miou"].mean()), name
        seed_means[name] = seeds["miou"].mean()
    # The report, tables and figure are also in MLflow, in an experiment named after the comparison.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tiny-compare").experiment_id])[0]
    assert run.data.tags["wsss.role"] == "comparison" and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"comparison.md", "figures"}
    for name, mean in seed_means.items():
        assert run.data.metrics[f"{name}/val_miou"] == pytest.approx(mean), name
    # --resume keeps finished studies and rebuilds the report.
    again = subprocess.run([sys.executable, "-m", "study.run", "--space", str(tmp_path / "compare.yaml"), "--output",
                            str(out), "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("already complete") == 2 * len(METHODS), again.stdout[-2000:]
