"""Comparisons: validation of the comparison YAML, the seed reruns' study, equal budgets in the
shipped search spaces, and one tiny comparison through the real CLI (four methods, two seeds)."""

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

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
EXTRA = {"aal": {"pseudo.fg_percentile": {"type": "uniform", "low": 0.3, "high": 0.8}},
         "seam": {"seam.scale": {"type": "uniform", "low": 0.4, "high": 0.7}},
         "sccam": {"sccam.k": {"type": "int", "low": 2, "high": 4}}, "cam": {}}


def _write_tiny(tmp: Path, seeds=(0, 1), samples: int = 1) -> Path:
    for m, extra in EXTRA.items():
        fixed = {"model": {"backbone": "small_cnn", "width": 16, "seg_hidden": 32},
                 "pretrain": {"epochs": 1, "batch_size": 16}, "train": {"epochs": 2, "batch_size": 16, "crop": 32}}
        if m == "sccam":
            fixed["sccam"] = {"rounds": 2}
        doc = {"name": f"tiny-{m}", "method": m, "data": {"name": "synthetic", "num_train": 32, "num_val": 8,
                                                          "image_size": 32},
               "fixed": fixed, "search": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}, **extra},
               "budget": {"samples": 4, "concurrency": 1},
               "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}
        (tmp / f"{m}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    cmp = {"name": "tiny-compare", "compare": {"studies": [f"{m}.yaml" for m in EXTRA], "seeds": list(seeds)},
           "budget": {"samples": samples, "concurrency": 2}}
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(cmp, sort_keys=False))
    return path


def test_the_comparison_budget_overrides_every_study(tmp_path):
    c = load_compare(_write_tiny(tmp_path), num_samples=3)
    assert [s.method for s in c.studies] == ["aal", "seam", "sccam", "cam"]
    assert {(s.samples, s.concurrency) for s in c.studies} == {(3, 2)}
    assert c.seeds == [0, 1]


@pytest.mark.parametrize("override,key", [("compare.seeds=[1, 1]", "compare.seeds"),
                                          ("compare.studies=[nope.yaml]", "compare.studies"),
                                          ("compare.extra=1", "compare.extra"),
                                          ("budget.samples=0", "budget.samples"),
                                          ("fixed.train.lr=1", "--set fixed.train.lr=1"),
                                          ("compare.set.fixed.train.crop=abc", "compare.studies: aal.yaml: fixed.train.crop")])
def test_bad_comparisons_name_the_key(tmp_path, override, key):
    with pytest.raises(SpaceError) as e:
        load_compare(_write_tiny(tmp_path), [override])
    assert e.value.key == key


def test_seed_reruns_fix_the_best_configuration_and_grid_the_seed(tmp_path):
    spec = load_compare(_write_tiny(tmp_path)).studies[1]  # seam
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
    """cam/seam/sccam.yaml: same data, backbone, start weights, epochs, optimizer, batch, crop,
    trials, concurrency and scheduler as aal.yaml (the shared checkpoint needs the first four)."""
    docs = {m: yaml.safe_load((SPACES / f"{m}.yaml").read_text()) for m in ("aal", "cam", "seam", "sccam")}
    ref = docs["aal"]
    for m, d in docs.items():
        for key in ("data", "budget", "scheduler", "resources", "metric", "seed"):
            assert d[key] == ref[key], (m, key)
        for key in ("model", "pretrain"):
            assert d["fixed"][key] == ref["fixed"][key], (m, key)
        for key in ("epochs", "batch_size", "crop", "optimizer"):
            assert d["fixed"]["train"][key] == ref["fixed"]["train"][key], (m, key)
        assert d["search"]["train.lr"] == ref["search"]["train.lr"], m
    c = load_compare(SPACES / "compare.yaml")
    assert [s.method for s in c.studies] == ["aal", "seam", "sccam", "cam"] and len(c.seeds) >= 3


@pytest.mark.e2e
def test_one_command_runs_the_comparison_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(_write_tiny(tmp_path)), "--output",
                           str(out), "--address", "local"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"comparison report: {(out / 'comparison.md').resolve()}" in proc.stdout
    md = (out / "comparison.md").read_text()
    for label in ("single-stage (aal)", "SEAM", "SC-CAM", "CAM"):
        assert f"| {label} " in md
    assert "mean ± std (2 seeds)" in md and "### Δ against SEAM" in md and "### Δ against SC-CAM" in md
    assert "NOT comparable" in md and "## CAM quality" in md and "SC-CAM by round" in md
    assert (out / "figures" / "per_class_comparison.png").stat().st_size > 1000
    # The single-stage study's own report gets the same-data SEAM and SC-CAM rows.
    own = (out / "tiny-aal" / "report.md").read_text()
    assert "SEAM (best trial of `tiny-seam`)" in own and "SC-CAM (best trial of `tiny-sccam`)" in own
    table = pd.read_parquet(out / "comparison.parquet")
    assert set(table.columns) == {"method", "row", "class_name", "iou"}
    assert set(table["row"]) == {"best trial", "seed mean", "seed std"}
    seeds = pd.read_parquet(out / "tiny-cam-seeds" / "trials.parquet")
    assert len(seeds) == 2 and set(seeds["status"]) == {"COMPLETE"}
    assert sorted(seeds["param.train.seed"]) == [0, 1]
    # The CAM row's seed mean is the mean of its two seed runs.
    cam_mean = table[(table["method"] == "CAM") & (table["row"] == "seed mean") & (table["class_name"] == "mIoU")]
    assert cam_mean["iou"].item() == pytest.approx(seeds["miou"].mean())
    # The report, tables and figure are also in MLflow, in an experiment named after the comparison.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tiny-compare").experiment_id])[0]
    assert run.data.tags["wsss.role"] == "comparison" and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"comparison.md", "figures"}
    assert run.data.metrics["cam/val_miou"] == pytest.approx(seeds["miou"].mean())
    # --resume keeps finished studies and rebuilds the report.
    again = subprocess.run([sys.executable, "-m", "study.run", "--space", str(tmp_path / "compare.yaml"), "--output",
                            str(out), "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("already complete") == 8, again.stdout[-2000:]
