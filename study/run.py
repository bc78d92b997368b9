"""``python -m study.run --space PATH.yaml``: run a hyperparameter study (see ../README.md).

Exit codes (docs/contract.md): 0 success; 2 bad input (YAML, data, arguments) with one line on
stderr naming the file, key and value; 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every bad input
        sys.stderr.write(f"study.run: {message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m study.run", description="Run a WSSS hyperparameter study.")
    p.add_argument("--space", required=True, help="search-space YAML file")
    p.add_argument("--output", help="output folder (default: studies/<space name>)")
    p.add_argument("--num-samples", type=int, help="override budget.samples")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value by dotted key, e.g. --set fixed.train.epochs=2")
    p.add_argument("--address", default="local", help="local (embedded Ray), auto, or ray://HOST:PORT")
    p.add_argument("--storage-path", help="Ray Tune experiment storage shared by every node of a cluster: an NFS "
                   "path or a cloud URI (default: the output folder)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<output>/mlflow.db)")
    p.add_argument("--resume", action="store_true", help="continue the study in the output folder")
    p.add_argument("--dry-run", action="store_true", help="validate the YAML and data, print the plan, run nothing")
    return p


def _quiet_libraries() -> None:
    """Quiet third-party chatter; the study prints its own progress lines."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="optuna")


def _run_comparison(cspec, args) -> int:
    """A comparison YAML (``compare`` section): every study, seed reruns, one report."""
    from study.compare import plan_text, run_comparison
    from study.runner import StudyExistsError

    output = Path(args.output) if args.output else Path("studies") / cspec.name
    if args.dry_run:
        print(plan_text(cspec, output))
        print("dry run: the comparison and its studies are valid; nothing was run")
        return EXIT_OK
    _quiet_libraries()
    try:
        path = run_comparison(cspec, output, address=args.address, tracking_uri=args.tracking_uri, resume=args.resume)
    except StudyExistsError as e:
        sys.stderr.write(f"error: --output: {e}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: the studies' records so far are kept; --resume continues\n")
        return 130
    print(f"[wsss-study] comparison report: {path.resolve()}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imports after argument parsing: --help stays fast and argument errors need no Ray.
    from study.compare import is_comparison, load_compare
    from study.space import SpaceError, load_spec

    if not (args.address in ("local", "auto") or args.address.startswith("ray://")):
        sys.stderr.write(f"error: --address: must be local, auto or ray://HOST:PORT (got {args.address!r})\n")
        return EXIT_BAD_INPUT
    if args.tracking_uri:  # a tracking server must answer before anything starts
        from study.endpoints import TrackingUnreachable, check_tracking_uri

        try:
            check_tracking_uri(args.tracking_uri)
        except TrackingUnreachable as e:
            sys.stderr.write(f"error: --tracking-uri: {e}\n")
            return EXIT_BAD_INPUT
    try:
        if is_comparison(args.space):
            return _run_comparison(load_compare(args.space, args.set, args.num_samples), args)
        spec = load_spec(args.space, args.set, args.num_samples)
    except SpaceError as e:
        sys.stderr.write(f"error: {e}\n")
        return EXIT_BAD_INPUT

    from study.runner import RunOptions, StorageNotShared, StudyExistsError, plan_text, run_study

    output = Path(args.output) if args.output else Path("studies") / spec.name
    storage = args.storage_path
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().absolute())
    opts = RunOptions(output=output, address=args.address, tracking_uri=args.tracking_uri, resume=args.resume,
                      storage_path=storage)
    if args.dry_run:
        print(plan_text(spec, opts))
        print("dry run: the search space and data are valid; nothing was run")
        return EXIT_OK
    _quiet_libraries()

    try:
        summary = run_study(spec, opts)
    except StudyExistsError as e:
        sys.stderr.write(f"error: --output: {e}\n")
        return EXIT_BAD_INPUT
    except StorageNotShared as e:
        sys.stderr.write(f"error: --storage-path: {e}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: the study's records so far are kept; --resume continues it\n")
        return 130
    report = summary["report"]
    print()
    print(f"[wsss-study] {summary['trials']} trials, {summary['errors']} failed")
    print(f"[wsss-study] report: {report.markdown.resolve()}")
    if report.best is not None:
        print(f"[wsss-study] best trial {report.best['trial_id']}: {spec.metric} = {report.best['score']:.4f}")
    from study.review import review_hint

    print(f"[wsss-study] review in MLflow:  {review_hint(output)}")  # the runs table, trials listed flat
    return EXIT_OK if summary["errors"] < summary["trials"] else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
