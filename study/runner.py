"""Running a study: Ray Tune + Optuna + ASHA + MLflow, from a validated :class:`StudySpec`.

The pieces, top to bottom: :func:`plan_text` (what ``--dry-run`` prints), :func:`prepare_output`
(the output folder and its ``study.json``), :func:`build_tuner` (trainable with resources,
searcher, scheduler, callbacks) and :func:`run_study`, which ties them to the MLflow parent run
and builds the report at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from study.private_api import set_restored_callbacks, set_trial_user_attr
from study.progress import ProgressCallback
from study.search import DefineByRunSpace, PrunedAwareOptunaSearch, build_sampler
from study.space import StudySpec
from study.tracking import MlflowTrialCallback, StudyTracker, git_commit, package_versions
from trainables.settings.tree import flatten, merge
from trainables.methods.registry import METHODS

STUDY_FILE = "study.json"
TUNE_DIR = "tune"  # the Ray Tune experiment, under the output folder


class StudyExistsError(RuntimeError):
    """The output folder already holds a study and ``--resume`` was not given."""


@dataclass
class RunOptions:
    """CLI options that are not part of the search space."""

    output: Path
    address: str = "local"
    tracking_uri: str | None = None
    resume: bool = False
    storage_path: str | None = None

    @property
    def tracking(self) -> str:
        """The MLflow tracking URI (default: a SQLite file in the output folder)."""
        return self.tracking_uri or f"sqlite:///{self.output.resolve() / 'mlflow.db'}"

    @property
    def storage(self) -> str:
        """Where Ray Tune keeps the experiment and trial checkpoints: ``--storage-path`` (shared
        by every node: an NFS path or a cloud URI) or the output folder."""
        return self.storage_path or str(self.output.resolve())

    @property
    def tune_name(self) -> str:
        """The experiment's folder under :attr:`storage`: ``tune`` in the output folder, else the
        output folder's name (so studies sharing one storage path stay apart)."""
        return TUNE_DIR if self.storage_path is None else f"{self.output.resolve().name}-tune"

    @property
    def tune_path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.tune_name}"


class StorageNotShared(RuntimeError):
    """A multi-node cluster cannot use the storage path: some node does not see it."""


def _nodes_see(path: str, nodes: list[dict]) -> list[bool]:
    """Whether ``path`` exists, asked of a zero-CPU task pinned to each node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def sees(p: str) -> bool:
        return Path(p).exists()

    return ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(path) for n in nodes], timeout=120)


def check_shared_storage(storage: str, log=print, nodes: list[dict] | None = None, probe=_nodes_see) -> None:
    """On a cluster of more than one node, every node must see the experiment storage (Ray
    Tune syncs checkpoints through it). A cloud URI is taken as shared; a local path is tested:
    a marker file written here must be visible from a task pinned to each node."""
    import uuid

    nodes = [n for n in (ray.nodes() if nodes is None else nodes) if n.get("Alive")]
    if len(nodes) < 2 or "://" in storage:
        return
    marker = Path(storage) / f".wsss-shared-{uuid.uuid4().hex[:12]}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("wsss-study storage check\n")
    try:
        seen = probe(str(marker), nodes)
    finally:
        marker.unlink(missing_ok=True)
    blind = [f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise StorageNotShared(
            f"{storage} is not visible from {len(blind)} of the cluster's {len(nodes)} nodes: {', '.join(blind)}. "
            "A multi-node study needs storage every node shares: pass --storage-path with an NFS path mounted "
            "at the same place on every node, or a cloud URI (s3://..., gs://...)")
    log(f"[wsss-study] storage {storage} is shared by all {len(nodes)} nodes")


def trial_entry(config: dict, fixed: dict, method: str) -> None:
    """The Ray Tune function trainable: fixed settings + the trial's suggestions. Running out of
    memory becomes an error that says so and what to change (the trial is then FAILED with it)."""
    import torch

    try:
        METHODS[method].train(merge(fixed, config))
    except torch.cuda.OutOfMemoryError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise MemoryError(f"out of GPU memory ({first}); lower train.batch_size or train.crop, or give each "
                          f"trial more of a GPU (resources.gpu)") from None
    except MemoryError as e:
        raise MemoryError(f"out of host memory ({e}); lower train.batch_size, eval.batch_size or "
                          f"pseudo.workers, or give each trial more CPUs (resources.cpu)") from None


def pseudo_plan(spec: StudySpec) -> list[str]:
    """What the pseudo labels of each trial cost in processes, for each refiner the study uses
    (none for methods without pseudo labels)."""
    pseudo = METHODS[spec.method].defaults.get("pseudo", {})
    if "refiner" not in pseudo:
        return []
    fixed = flatten(spec.fixed)
    searched = {p.name: p for p in spec.params}
    refiners = (list(searched["pseudo.refiner"].choices) if "pseudo.refiner" in searched
                else [fixed.get("pseudo.refiner", pseudo["refiner"])])
    workers = fixed.get("pseudo.workers", pseudo["workers"])
    lines = []
    for r in refiners:
        if r == "par":
            lines.append("pseudo     par: refined inside the training step on the trial's device; no CRF workers")
            continue
        n = workers if workers != "auto" else (max(0, int(spec.resources["cpu"]) - 1) if spec.resources["gpu"] else 0)
        lines.append(f"pseudo     densecrf: {n} CRF worker process(es) per trial (pseudo.workers={workers})"
                     + ("; the CRFs run in the step, one image after another" if n == 0 else ""))
    return lines


def plan_text(spec: StudySpec, opts: RunOptions) -> str:
    """The plan ``--dry-run`` prints: everything the study would do, nothing run."""
    method = METHODS[spec.method]
    lines = [
        f"study      {spec.name}  ({spec.path})",
        f"method     {spec.method}: {method.summary}",
        "data       " + ", ".join(f"{k}={v}" for k, v in spec.data.items()),
        *([f"           {spec.data_summary}"] if spec.data_summary else []),
        f"budget     {spec.samples} trials, at most {spec.concurrency} at once, {spec.epochs} epochs each",
        *([f"           first trial: the defaults, " + (", ".join(f"{k}={v}" for k, v in spec.defaults.items())
                                                    or "the fixed settings")] if spec.defaults is not None else []),
        ("searcher   grid: every combination of the choices once (Ray Tune grid search)" if spec.sampler == "grid"
         else f"searcher   optuna {spec.sampler} (seed {spec.seed}"
              + (f", the first {spec.tpe_startup} trials random" if spec.sampler == "tpe" else "")
              + f"), study stored in {opts.output / 'optuna.db'}"),
    ]
    if spec.scheduler["type"] == "asha":
        lines.append(f"scheduler  ASHA grace_period={spec.scheduler['grace_period']} "
                     f"reduction_factor={spec.scheduler['reduction_factor']:g} max_t={spec.epochs}")
    else:
        lines.append("scheduler  none (every trial runs all epochs)")
    lines += [
        f"resources  {spec.resources['cpu']:g} cpu, {spec.resources['gpu']:g} gpu per trial; ray address {opts.address}",
        f"objective  {spec.mode} {spec.metric}",
        f"output     {opts.output}",
        f"storage    {opts.tune_path} (Ray Tune experiment and trial checkpoints)",
        f"tracking   {opts.tracking}",
        "searched   " + ("(nothing: every trial uses the fixed settings)" if not spec.params else ""),
    ]
    for p in spec.params:
        lines.append(f"  {p.name:<28} {p.describe()}")
    lines += pseudo_plan(spec)
    fixed = flatten(spec.fixed)
    if fixed:
        lines.append("fixed")
        lines += [f"  {k:<28} {v}" for k, v in fixed.items()]
    return "\n".join(lines)


def refuse_existing(opts: RunOptions) -> None:
    """:class:`StudyExistsError` if the output folder holds a study and ``--resume`` was not given."""
    if (opts.output / STUDY_FILE).exists() and not opts.resume:
        raise StudyExistsError(f"{opts.output} already holds a study ({STUDY_FILE}); pass --resume to continue it "
                               f"or --output to start a new one")


def prepare_output(spec: StudySpec, opts: RunOptions) -> dict:
    """Create the output folder and write ``study.json``; refuse to overwrite a study."""
    refuse_existing(opts)
    out = opts.output
    meta_path = out / STUDY_FILE
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({
        "name": spec.name,
        "method": spec.method,
        "space_path": str(Path(spec.path).resolve()),
        "tracking_uri": opts.tracking,
        "metric": spec.metric,
        "mode": spec.mode,
        "samples": spec.samples,
        "epochs": spec.epochs,
        "scheduler": spec.scheduler,
        "sampler": spec.sampler,
        "data": spec.data,
        "params": [{"name": p.name, "type": p.type} for p in spec.params],
        "optuna_storage": f"sqlite:///{(out / 'optuna.db').resolve()}",
        "tune_path": opts.tune_path,
    })
    (out / "space.resolved.yaml").write_text(spec.resolved_yaml())
    shutil.copyfile(spec.path, out / "space.yaml")
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def init_ray(address: str, spec: StudySpec) -> None:
    """Start an embedded Ray (``local``) or connect to a cluster (``auto``, ``ray://...``)."""
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                  configure_logging=True)
    if address == "local":
        gpus = 0
        if spec.resources["gpu"] > 0:
            import torch

            # Without a physical GPU, one logical GPU lets per-trial GPU scheduling run (docs/harness.md).
            gpus = max(torch.cuda.device_count(), 1)
        ray.init(address="local", num_gpus=gpus, **kwargs)
    else:
        ray.init(address=address, **kwargs)


def _optuna_searcher(spec: StudySpec, opts: RunOptions) -> ConcurrencyLimiter:
    """Optuna (TPE or random) behind a concurrency limit, its study stored in the output folder."""
    import warnings

    storage = optuna.storages.RDBStorage(f"sqlite:///{(opts.output / 'optuna.db').resolve()}")
    # Created (or, on --resume, loaded) here, before Ray's OptunaSearch loads it by name
    # (create_study with load_if_exists), so that the stored study carries the objective's name:
    # optuna-dashboard and trials_dataframe() then show "val/miou" rather than "Objective 0".
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                direction="maximize" if spec.mode == "max" else "minimize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.metric])
    existing = len(study.trials)
    if spec.defaults is not None and existing == 0:  # budget.include_defaults: the first trial
        study.enqueue_trial(spec.defaults, user_attrs={"wsss.defaults": True})
    # A resumed study must not replay the same suggestions: offset the seed by trials stored.
    sampler = build_sampler(spec.sampler, spec.seed + existing, spec.tpe_startup)
    searcher = PrunedAwareOptunaSearch(
        space=DefineByRunSpace(spec.params),
        metric=spec.metric,
        mode=spec.mode,
        sampler=sampler,
        study_name=spec.name,
        storage=storage,
        max_t=spec.epochs,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.concurrency)


def _trainable(spec: StudySpec):
    """The trial function with the study's fixed settings and per-trial resources."""
    return tune.with_resources(
        tune.with_parameters(trial_entry, fixed=spec.trainable_config(), method=spec.method),
        {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]},
    )


class DefaultsToHorizonASHA(ASHAScheduler):
    """ASHA that never stops the defaults trial (``budget.include_defaults``) before the horizon,
    so that the tuning gain (best trial minus defaults, reports) compares equally trained runs.
    The defaults trial still reports at every rung and counts in the rungs' cut-offs like any
    other trial; only its own stop is turned into a continue. ``defaults`` None: plain ASHA."""

    def __init__(self, defaults: dict | None, **kwargs):
        super().__init__(**kwargs)
        self._defaults = defaults

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if (action == TrialScheduler.STOP and self._defaults is not None
                and result.get(self._time_attr, 0) < self._max_t and flatten(trial.config) == self._defaults):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


def build_tuner(spec: StudySpec, opts: RunOptions, callbacks: list) -> Tuner:
    """The Tuner: trainable with resources, Optuna searcher behind a concurrency limit, ASHA."""
    if spec.sampler == "grid":
        # Every combination once, no searcher (seed reruns of a chosen configuration).
        searcher, param_space = None, {p.name: tune.grid_search(list(p.choices)) for p in spec.params}
    else:
        searcher, param_space = _optuna_searcher(spec, opts), {}
    if spec.scheduler["type"] == "asha":
        scheduler = DefaultsToHorizonASHA(
            spec.defaults,
            time_attr="training_iteration",
            max_t=spec.epochs,
            grace_period=spec.scheduler["grace_period"],
            reduction_factor=spec.scheduler["reduction_factor"],
        )
    else:
        scheduler = FIFOScheduler()
    trainable = _trainable(spec)
    return Tuner(
        trainable,
        param_space=param_space,
        tune_config=TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=searcher, scheduler=scheduler,
                               num_samples=1 if spec.sampler == "grid" else spec.samples,
                               max_concurrent_trials=spec.concurrency if spec.sampler == "grid" else None,
                               # One trial after another in the same worker process: saves the
                               # process start and imports, about 7 s a trial (benchmarks/
                               # harness_overhead.py). WSSS_REUSE_ACTORS=0 starts a fresh one each time.
                               reuse_actors=os.environ.get("WSSS_REUSE_ACTORS", "1") != "0"),
        run_config=RunConfig(
            name=opts.tune_name,
            storage_path=opts.storage,
            callbacks=callbacks,
            verbose=0,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=spec.max_failures),
        ),
    )


def restore_tuner(spec: StudySpec, tune_path: str, callbacks: list) -> Tuner:
    """The interrupted experiment, restored: the same trials (unfinished ones resume from their
    last checkpoint, errored ones get their retries), the searcher's state (so Optuna repeats no
    configuration) and this run's callbacks (the pickled ones hold the old run's counters)."""
    trainable = _trainable(spec)
    tuner = Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=True)
    set_restored_callbacks(tuner, callbacks)  # Tuner.restore takes no callbacks (ray 2.60)
    return tuner


def reconcile_records(spec: StudySpec, opts: RunOptions, tracker: StudyTracker, parent: str, known: set[str],
                      log=print) -> None:
    """After a resumed study: records of trials Ray never saved (the
    driver was killed between the searcher's suggestion and Ray's next experiment checkpoint)
    are closed, so nothing is left RUNNING. Their Optuna trials are told FAIL with the
    ``wsss.lost`` attribute; their MLflow child runs are deleted (they never trained past the
    kill and Ray will never report them again)."""
    lost_runs = [r for r in tracker.child_runs(parent) if r.data.tags.get("ray.trial_id") not in known]
    for r in lost_runs:
        tracker.client.delete_run(r.info.run_id)
    lost_trials = 0
    if spec.sampler != "grid" and (opts.output / "optuna.db").exists():
        storage = optuna.storages.RDBStorage(f"sqlite:///{(opts.output / 'optuna.db').resolve()}")
        try:
            study = optuna.load_study(study_name=spec.name, storage=storage)
        except KeyError:
            study = None
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if study else []
        for t in running:
            if t.user_attrs.get("ray.trial_id") not in known:
                set_trial_user_attr(study, t, "wsss.lost", "driver stopped before Ray saved the trial")
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                lost_trials += 1
    if lost_runs or lost_trials:
        log(f"[wsss-study] closed records of trials lost when the driver stopped: {len(lost_runs)} MLflow "
            f"runs deleted, {lost_trials} Optuna trials marked FAIL (wsss.lost)")


def run_study(spec: StudySpec, opts: RunOptions, log=print) -> dict:
    """Run the whole study; returns a summary dict (best trial, report path, counts)."""
    from reports.build import build_report

    refuse_existing(opts)  # before Ray starts: refused at once
    # Ray first: a cluster whose nodes do not share the storage is refused before anything is written.
    log(f"[wsss-study] starting Ray ({opts.address}) ...")
    init_ray(opts.address, spec)
    try:
        check_shared_storage(opts.storage, log)
        return _run_on_ray(spec, opts, log, build_report)
    finally:
        ray.shutdown()


def _prepare_data(spec: StudySpec, opts: RunOptions, log) -> tuple[dict, object]:
    """Once, before any trial: the output folder, the data cache and the shared classification
    checkpoint; returns the study's metadata (written to study.json) and the dataset."""
    meta = prepare_output(spec, opts)
    log(f"[wsss-study] preparing data and shared checkpoints ({spec.data.get('name')}) ...")
    t0 = time.perf_counter()
    ds = METHODS[spec.method].prepare(spec.trainable_config(), log=lambda m: log(f"[wsss-study]   {m}"))
    meta["class_names"] = ds.class_names
    meta["dataset"] = ds.name
    (opts.output / STUDY_FILE).write_text(json.dumps(meta, indent=2))
    log(f"[wsss-study] data ready: {len(ds.train)} train / {len(ds.val)} val images, "
        f"{ds.num_classes} classes ({time.perf_counter() - t0:.1f}s)")
    return meta, ds


def _parent_run(spec: StudySpec, opts: RunOptions, meta: dict, ds, tracker: StudyTracker) -> str:
    """The study's MLflow parent run: the one of study.json on --resume, else a new one."""
    parent = tracker.resume_parent(meta.get("parent_run_id")) if opts.resume else None
    parent = parent or tracker.start_parent(
        run_name=f"study {spec.name}",
        tags={"wsss.git_commit": git_commit(Path(__file__).parent), "wsss.space_sha256": spec.digest(),
              "wsss.output": str(opts.output.resolve()), "wsss.method": spec.method,
              "wsss.dataset": ds.name,
              **{f"wsss.version.{k}": v for k, v in package_versions().items()}},
        params={"method": spec.method, "samples": spec.samples, "concurrency": spec.concurrency,
                "metric": spec.metric, "mode": spec.mode, "seed": spec.seed, "sampler": spec.sampler,
                "scheduler": spec.scheduler["type"],
                **{f"data.{k}": v for k, v in spec.data.items()},
                **{f"search.{p.name}": p.describe() for p in spec.params}},
        artifacts=[opts.output / "space.yaml", opts.output / "space.resolved.yaml"],
    )
    meta["parent_run_id"] = parent
    (opts.output / STUDY_FILE).write_text(json.dumps(meta, indent=2))
    return parent


def _run_on_ray(spec: StudySpec, opts: RunOptions, log, build_report) -> dict:
    meta, ds = _prepare_data(spec, opts, log)
    artifacts = None if opts.tracking_uri else (opts.output.resolve() / "mlartifacts").as_uri()
    tracker = StudyTracker(opts.tracking, spec.name, artifact_location=artifacts)
    parent = _parent_run(spec, opts, meta, ds, tracker)

    status = "FAILED"
    try:
        mlflow_cb = MlflowTrialCallback(tracker, parent, spec.trainable_config(), spec.epochs, defaults=spec.defaults)
        progress = ProgressCallback(spec.samples, spec.metric, spec.mode, spec.epochs, log=log)
        callbacks = [mlflow_cb, progress]
        tune_path = opts.tune_path
        # Save the experiment state at every step of Tune's loop (local files: cheap), so a killed
        # driver loses as little as possible; Ray's default is every 10 s or more.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
        if opts.resume and Tuner.can_restore(tune_path):
            tuner = restore_tuner(spec, tune_path, callbacks)
            log(f"[wsss-study] resuming the Ray Tune experiment in {tune_path} ...")
        else:
            tuner = build_tuner(spec, opts, callbacks)
            log(f"[wsss-study] running {spec.samples} trials ({spec.concurrency} at once) ...")
        results = tuner.fit()
        # Every trial, finished or not, is in the ResultGrid; "trial_id" is one of Tune's
        # auto-filled metrics, set even for a trial that never reported.
        trial_ids = {r.metrics["trial_id"] for r in results}
        unfinished = len(results) - results.num_terminated - results.num_errors
        if unfinished or len(results) < spec.samples:  # Ray Tune returns on SIGINT after saving its state
            status = "KILLED"
            raise KeyboardInterrupt
        errors = sum(1 for r in results if r.error is not None)
        status = "FINISHED" if errors < len(results) else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            tracker.end(parent, status)
    if opts.resume:  # only a stopped driver can leave records Ray never saved
        reconcile_records(spec, opts, tracker, parent, trial_ids, log)

    report = build_report(opts.output)
    _log_report(tracker, parent, report, spec.metric)
    if status == "FINISHED":
        tracker.end(parent, status)
    return {"status": status, "errors": errors, "trials": len(results), "report": report}


def _log_report(tracker: StudyTracker, parent: str, report, metric: str) -> None:
    """The study reads from its parent run alone: report.md as the run's description (MLflow
    renders it as Markdown, figures included), the report and its figures as artifacts, and the
    best trial's final metrics (val mIoU, per-class IoU, CAM scores) under their own names, so the
    parent row of the runs table shows them in the trials' columns."""
    client = tracker.client
    client.log_artifact(parent, str(report.markdown))
    for png in report.figures:
        client.log_artifact(parent, str(png), artifact_path="figures")
    client.set_tag(parent, "mlflow.note.content", run_note(report.markdown.read_text(), parent))
    if report.best is None:
        return
    best = client.get_run(report.best["run_id"])
    summary = {k: v for k, v in best.data.metrics.items() if k.startswith(("val/", "train/cam"))}
    tracker.log_metrics(parent, {**summary, f"best/{metric}": report.best["score"]})
    client.set_tag(parent, "wsss.best_trial", report.best["trial_id"])
    client.set_tag(parent, "wsss.best_run_id", report.best["run_id"])


NOTE_LIMIT = 8000  # MLflow's limit on a tag value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH)


def run_note(markdown: str, run_id: str, limit: int = NOTE_LIMIT) -> str:
    """report.md as a run description: its figure links (``](figures/x.png)``) point at the
    run's artifacts through the MLflow server's ``get-artifact`` route (relative, so the same
    note works on ``mlflow ui`` and on a tracking server). When the report is longer than a tag
    may be, whole sections are left out, the summary, best trial and figures last, and the note
    names them (the artifact report.md has everything).

    Example:
        >>> run_note("# R\\n\\n![h](figures/history.png)", "abc")
        '# R\\n\\n![h](get-artifact?path=figures%2Fhistory.png&run_uuid=abc)'
        >>> print(run_note("# R\\n## Best trial\\nb\\n## Top trials\\n" + "x" * 300, "abc", limit=250))
        # R
        ## Best trial
        b
        <BLANKLINE>
        *Left out here (MLflow's size limit), in the artifact report.md: Top trials.*
    """
    import re

    note = re.sub(r"\]\((figures/[^)\s]+\.png)\)",
                  lambda m: f"](get-artifact?path={m.group(1).replace('/', '%2F')}&run_uuid={run_id})", markdown)
    if len(note) <= limit:
        return note
    sections = re.split(r"\n(?=## )", note)
    first = [0] + [i for i, sec in enumerate(sections) if sec.startswith(("## Best trial", "## Figures"))]
    budget, kept = limit - 200, set()
    for i in first + list(range(len(sections))):
        if i not in kept and len(sections[i]) + 1 <= budget:
            kept.add(i)
            budget -= len(sections[i]) + 1
    left = [sections[i].splitlines()[0].lstrip("# ") for i in range(len(sections)) if i not in kept]
    return ("\n".join(sections[i] for i in sorted(kept))
            + f"\n\n*Left out here (MLflow's size limit), in the artifact report.md: {', '.join(left)}.*")
