"""Comparisons: several methods' studies under one budget, their best configurations rerun over
the same seeds, and one report (``reports/compare.py``).

A comparison is a YAML with a ``compare`` section instead of a search (``search_spaces/
compare.yaml``); ``python -m study.run --space search_spaces/compare.yaml`` runs it:

.. code-block:: yaml

    name: compare
    compare:
      studies: [aal.yaml, seam.yaml, sccam.yaml, cam.yaml]   # relative to this file
      seeds: [0, 1, 2]            # each method's best configuration is rerun with these
      set: {}                     # dotted overrides applied to every study, e.g. fixed.train.epochs: 4
    budget: {samples: 8, concurrency: 2}                      # the same for every study

For each study: its search in ``<output>/<study>``, then a grid over ``train.seed`` of its best
trial's configuration, without early stopping, in ``<output>/<study>-seeds``; finally
``comparison.md``, ``comparison.parquet``, ``cam_quality.parquet`` and the bar chart.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from study.space import SpaceError, StudySpec, apply_override, load_spec, parse_document, read_document
from trainables.settings.tree import flatten, merge, unflatten

COMPARE_KEYS = ("name", "description", "compare", "budget")
COMPARE_FILE = "compare.json"


@dataclass
class CompareSpec:
    """A validated comparison: the studies (budget applied) and the seeds."""

    path: str
    name: str
    studies: list[StudySpec]
    seeds: list[int]
    description: str = ""


def is_comparison(path: str | Path) -> bool:
    """True when the YAML is a comparison (has a ``compare`` section)."""
    try:
        return "compare" in read_document(path)
    except SpaceError:
        return False


def load_compare(path: str | Path, overrides: list[str] | None = None, num_samples: int | None = None) -> CompareSpec:
    """Read and validate a comparison and every study it names (before anything runs)."""
    doc = read_document(path)
    for a in overrides or []:
        key = a.split("=", 1)[0].strip()
        if key.split(".")[0] not in COMPARE_KEYS:
            raise SpaceError(path, f"--set {a}", key, f"a comparison's keys are {', '.join(COMPARE_KEYS)}")
        apply_override(doc, a, path)
    for k in doc:
        if k not in COMPARE_KEYS:
            raise SpaceError(path, str(k), doc[k], f"unknown key in a comparison; known: {', '.join(COMPARE_KEYS)}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise SpaceError(path, "name", name, "is required")
    section = doc["compare"]
    if not isinstance(section, dict):
        raise SpaceError(path, "compare", section, "must be a mapping with studies and seeds")
    for k in section:
        if k not in ("studies", "seeds", "set"):
            raise SpaceError(path, f"compare.{k}", section[k], "unknown key; allowed: studies, seeds, set")
    studies, seeds = section.get("studies"), section.get("seeds", [0, 1, 2])
    if not isinstance(studies, list) or not studies or not all(isinstance(s, str) for s in studies):
        raise SpaceError(path, "compare.studies", studies, "must be a non-empty list of search-space files")
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise SpaceError(path, "compare.seeds", seeds, "must be a non-empty list of distinct whole numbers >= 0")
    common = section.get("set") or {}
    if not isinstance(common, dict):
        raise SpaceError(path, "compare.set", common, "must be a mapping of dotted keys to values")
    budget = doc.get("budget") or {}
    if not isinstance(budget, dict):
        raise SpaceError(path, "budget", budget, "must be a mapping")
    if num_samples is not None:
        budget = {**budget, "samples": num_samples}
    for k, v in budget.items():
        if k not in ("samples", "concurrency") or isinstance(v, bool) or not isinstance(v, int) or v < 1:
            key = "--num-samples" if (k == "samples" and num_samples is not None) else f"budget.{k}"
            raise SpaceError(path, key, v, "budget takes samples and concurrency, whole numbers >= 1")
    shared = [f"{k}={json.dumps(v)}" for k, v in flatten(common).items()]
    shared += [f"budget.{k}={json.dumps(v)}" for k, v in budget.items()]
    specs = []
    for rel in studies:
        p = Path(path).parent / rel
        if not p.is_file():
            raise SpaceError(path, "compare.studies", rel, f"no such search-space file ({p})")
        try:
            specs.append(load_spec(p, shared))
        except SpaceError as e:  # name both files: the comparison and the study it reached
            raise SpaceError(path, f"compare.studies: {rel}: {e.key}", e.value, e.message) from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpaceError(path, "compare.studies", names, "two studies share a name")
    return CompareSpec(str(path), name, specs, list(seeds), str(doc.get("description", "")))


def seeds_spec(spec: StudySpec, best_params: dict, seeds: list[int]) -> StudySpec:
    """The best configuration of ``spec`` with every seed: a grid over ``train.seed``, no early
    stopping. The data (``data.seed``) stays the same; the seed changes the start weights (the
    classification checkpoint is trained per seed), the batches and the new layers."""
    doc = copy.deepcopy(spec.document)
    plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in best_params.items()}
    fixed = merge(unflatten(flatten(doc.get("fixed") or {})), unflatten(plain))
    fixed.get("train", {}).pop("seed", None)
    doc.update({
        "name": f"{spec.name}-seeds",
        "fixed": fixed,
        "search": {"train.seed": {"type": "categorical", "choices": list(seeds)}},
        "budget": {"samples": len(seeds), "concurrency": spec.concurrency},
        "scheduler": {"type": "none"},
        "sampler": "grid",
    })
    return parse_document(doc, spec.path)


def plan_text(cspec: CompareSpec, output: Path) -> str:
    """What ``--dry-run`` prints for a comparison."""
    s0 = cspec.studies[0]
    lines = [f"comparison {cspec.name}  ({cspec.path})",
             f"budget     {s0.samples} trials per method ({s0.concurrency} at once), then the best "
             f"configuration with seeds {cspec.seeds}",
             f"output     {output}"]
    for s in cspec.studies:
        lines.append(f"  {s.name:<10} method {s.method:<6} {s.epochs} epochs, searches "
                     + (", ".join(p.name for p in s.params) or "nothing") + f"  -> {output / s.name}")
    return "\n".join(lines)


def _finished(out: Path, samples: int) -> bool:
    """A study folder whose report lists the whole budget as ended (skipped on --resume)."""
    import pandas as pd

    path = out / "trials.parquet"
    if not path.is_file():
        return False
    trials = pd.read_parquet(path)
    return int(trials["status"].isin(["COMPLETE", "PRUNED", "FAILED"]).sum()) >= samples


def run_comparison(cspec: CompareSpec, output: Path, address: str = "local", tracking_uri: str | None = None,
                   resume: bool = False, log=print) -> Path:
    """Run every study and its seed reruns, then write the comparison report; returns its path."""
    from reports.build import build_report
    from reports.compare import build_comparison
    from study.runner import RunOptions, StudyExistsError, run_study

    meta_path = output / COMPARE_FILE
    if meta_path.exists() and not resume:
        raise StudyExistsError(f"{output} already holds a comparison ({COMPARE_FILE}); pass --resume to continue it "
                               f"or --output to start a new one")
    output.mkdir(parents=True, exist_ok=True)
    meta = {"name": cspec.name, "path": str(Path(cspec.path).resolve()), "seeds": cspec.seeds,
            "samples": cspec.studies[0].samples, "concurrency": cspec.studies[0].concurrency, "methods": []}
    for spec in cspec.studies:
        search_dir, seeds_dir = output / spec.name, output / f"{spec.name}-seeds"
        meta["methods"].append({"study": spec.name, "method": spec.method, "search": spec.name,
                                "seeds": seeds_dir.name, "epochs": spec.epochs})
        meta_path.write_text(json.dumps(meta, indent=2))
        for kind, s, d in (("search", spec, search_dir), ("seeds", None, seeds_dir)):
            if s is None:  # the best trial by reports.selection.best_trial, as every report picks it
                best = build_report(search_dir).best
                if best is None:
                    log(f"[wsss-study] {spec.name}: no scored trial, no seed reruns")
                    break
                s = seeds_spec(spec, {k[len("param."):]: v for k, v in best.items() if k.startswith("param.")},
                               cspec.seeds)
            if resume and _finished(d, s.samples):
                log(f"[wsss-study] {s.name}: already complete in {d}, kept")
                continue
            log(f"[wsss-study] === {s.name} ({kind}) -> {d}")
            run_study(s, RunOptions(output=d, address=address, tracking_uri=tracking_uri,
                                    resume=resume and (d / "study.json").exists()), log=log)
    for spec in cspec.studies:  # each study's report.md now gets the baselines' same-data rows
        if (output / spec.name / "study.json").is_file():
            build_report(output / spec.name)
    path = build_comparison(output)
    _log_comparison(output, cspec, tracking_uri, path)
    return path


def _log_comparison(output: Path, cspec: CompareSpec, tracking_uri: str | None, markdown: Path) -> None:
    """One MLflow run (experiment = the comparison's name) holding the report, its tables and
    figure, and each method's seed-mean scores as metrics."""
    import pandas as pd

    from study.tracking import StudyTracker

    tracking = tracking_uri or f"sqlite:///{output.resolve() / 'mlflow.db'}"
    artifacts = None if tracking_uri else (output.resolve() / "mlartifacts").as_uri()
    tracker = StudyTracker(tracking, cspec.name, artifact_location=artifacts)
    files = [markdown, output / "comparison.parquet", output / "cam_quality.parquet"]
    run = tracker.start_parent(run_name=f"comparison {cspec.name}", tags={},
                               params={"seeds": cspec.seeds, "samples": cspec.studies[0].samples,
                                       "studies": [s.name for s in cspec.studies]},
                               artifacts=[f for f in files if f.is_file()])
    tracker.client.set_tag(run, "wsss.role", "comparison")
    for png in sorted((output / "figures").glob("*.png")):
        tracker.client.log_artifact(run, str(png), artifact_path="figures")
    quality = pd.read_parquet(output / "cam_quality.parquet")
    metrics = {}
    for _, q in quality.iterrows():
        for col in ("val_miou", "train_cam_miou", "val_cam_miou"):
            if col in q and pd.notna(q[col]):
                metrics[f"{q['key']}/{col}"] = float(q[col])
    tracker.log_metrics(run, metrics)
    tracker.end(run, "FINISHED")
