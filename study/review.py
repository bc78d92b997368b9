"""``python -m study.review --study DIR``: open a study's runs in the MLflow UI (see ../README.md).

For a local tracking store (the default ``sqlite:///<DIR>/mlflow.db``, another SQL database, or an
``mlruns`` folder) it starts ``mlflow ui`` over that store, waits until it answers, prints the landing
URL and serves until Ctrl-C. For a study tracked on a server (``--tracking-uri http...``) it prints
the landing URL on that server.

The landing page is MLflow 3's model-training runs table (``workflowType=machine_learning``; without
it the UI opens an experiment on its GenAI trace overview). It opens the experiment's saved view
"wsss study review" (MLflow's own saved/shared views: an experiment tag
``mlflow.sharedViewState.<key>`` that the URL names with ``viewStateShareKey``): every run listed
flat, sorted by the study's metric, with that metric and the searched parameters as columns. The UI
nests child runs under a collapsed parent only when the table is sorted by creation time, and a
URL can choose the sort but not the columns, so the view is written into the store first; where
that fails the URL falls back to the sort alone.

Exit codes (docs/contract.md): 0 success; 2 bad input (folder, host, port, experiment) with one line
on stderr naming the option and value; 1 anything else (the UI failed to start or died).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode, urlparse

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2

VIEW_KEY = "wsss-review"
VIEW_NAME = "wsss study review"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # where the MLflow UI keeps saved and shared views


class ReviewError(Exception):
    """Bad input: ``option`` names the command-line option at fault."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def landing_url(base_url: str, experiment_id: str, view_key: str | None = VIEW_KEY,
                metric: str = "val/miou", mode: str = "max") -> str:
    """The MLflow UI page listing an experiment's runs: the saved view ``view_key`` or, with none,
    every run listed flat and sorted by ``metric`` (best first).

    >>> landing_url("http://127.0.0.1:5000", "1")
    'http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=wsss-review&workflowType=machine_learning'
    >>> landing_url("https://mlflow.example.org/team/", "7", view_key=None)
    'https://mlflow.example.org/team/#/experiments/7/runs?workflowType=machine_learning&orderByKey=metrics.%60val%2Fmiou%60&orderByAsc=false'
    """
    if view_key:  # the UI ignores a shared view when the URL also names a sort or filter
        query = {"viewStateShareKey": view_key, "workflowType": "machine_learning"}
    else:
        query = {"workflowType": "machine_learning", "orderByKey": _column("metrics", metric),
                 "orderByAsc": "true" if mode == "min" else "false"}
    return f"{base_url.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs?{urlencode(query, quote_via=quote)}"


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of one run (the study's parent run: its description, metrics, artifacts).

    >>> run_url("http://127.0.0.1:5000", "1", "3e7b12")
    'http://127.0.0.1:5000/#/experiments/1/runs/3e7b12?workflowType=machine_learning'
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _column(group: str, key: str) -> str:
    """A runs-table column (and sort key) as the MLflow UI names it: ``metrics.`val/miou```."""
    return f"{group}.`{key}`"


def view_state(metric: str = "val/miou", mode: str = "max", params: list[str] = ()) -> dict:
    """The runs-table state of the review view: every run flat (sorted by ``metric``, best first),
    the metric and the parameters as columns.

    >>> view_state("val/miou", "max", ["train.lr"])["selectedColumns"]
    ['metrics.`val/miou`', 'params.`train.lr`']
    """
    return {
        # search facets (what a URL could say)
        "searchFilter": "", "orderByKey": _column("metrics", metric), "orderByAsc": mode == "min",
        "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        # table state (what only a saved view can say)
        "selectedColumns": [_column("metrics", metric)] + [_column("params", p) for p in params],
    }


def save_view(client, experiment_id: str, state: dict, key: str = VIEW_KEY, name: str = VIEW_NAME) -> str:
    """Write ``state`` as the experiment's saved view ``key`` (listed under "Views" in the UI)."""
    now = int(time.time() * 1000)
    created = now
    old = client.get_experiment(experiment_id).tags.get(VIEW_TAG_PREFIX + key)
    if old:
        try:
            created = int(json.loads(old)["createdAt"])
        except (ValueError, KeyError, TypeError):
            pass
    envelope = {"name": name, "createdAt": created, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope))
    return key


def is_server(tracking_uri: str) -> bool:
    """Whether the study was tracked on an MLflow server (else a store ``mlflow ui`` can serve).

    >>> is_server("sqlite:////tmp/s/mlflow.db"), is_server("/tmp/s/mlruns"), is_server("https://mlflow:5000")
    (False, False, True)
    """
    return urlparse(tracking_uri).scheme in ("http", "https")


def load_study(study_dir: str | Path) -> dict:
    """The study's ``study.json`` (``tracking_uri``, ``name``, ``metric``, ...)."""
    path = Path(study_dir) / "study.json"
    if not path.is_file():
        raise ReviewError("--study", f"{study_dir}: no study.json there (not a study output folder)")
    try:
        meta = json.loads(path.read_text())
        missing = [k for k in ("tracking_uri", "name") if not isinstance(meta.get(k), str)]
    except (ValueError, AttributeError) as e:
        raise ReviewError("--study", f"{path}: not a study record ({e})") from None
    if missing:
        raise ReviewError("--study", f"{path}: no {' or '.join(missing)}")
    return meta


def experiment_id(meta: dict) -> str:
    """The id of the study's MLflow experiment (named after the study)."""
    from mlflow.tracking import MlflowClient

    from study.endpoints import TrackingUnreachable, check_tracking_uri

    uri = meta["tracking_uri"]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():  # else MLflow creates it
        raise ReviewError("--study", f"no MLflow store at {uri}")
    try:  # a server that does not answer fails now, not after MLflow's minutes of retries
        check_tracking_uri(uri)
    except TrackingUnreachable as e:
        raise ReviewError("--study", f"the study's tracking server: {e}") from None
    try:
        exp = MlflowClient(meta["tracking_uri"]).get_experiment_by_name(meta["name"])
    except Exception as e:  # unreachable server, unreadable store
        raise ReviewError("--study", f"tracking store {meta['tracking_uri']}: {str(e).splitlines()[0]}") from None
    if exp is None:
        raise ReviewError("--study", f"tracking store {meta['tracking_uri']} has no experiment {meta['name']!r}")
    return exp.experiment_id


def prepare_landing(meta: dict, base_url: str | None = None) -> tuple[str, str]:
    """(experiment id, landing URL) of a study; saves the review view, else falls back to the sort.

    ``base_url`` defaults to the tracking server's URL (a study tracked on a server).
    """
    from mlflow.tracking import MlflowClient

    exp_id = experiment_id(meta)
    metric, mode = meta.get("metric", "val/miou"), meta.get("mode", "max")
    params = [p["name"] for p in meta.get("params", []) if isinstance(p, dict) and "name" in p]
    try:
        key = save_view(MlflowClient(meta["tracking_uri"]), exp_id, view_state(metric, mode, params))
    except Exception as e:  # e.g. no permission to write experiment tags on the server
        sys.stderr.write(f"warning: could not save the review view ({str(e).splitlines()[0]}); "
                         f"the runs are listed sorted by {metric}, without its column\n")
        key = None
    return exp_id, landing_url(base_url or meta["tracking_uri"], exp_id, key, metric, mode)


def _check_port(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ReviewError("--host", f"{host}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is free
        try:
            s.bind(address)
        except OSError as e:
            raise ReviewError("--port", f"{port} is not free on {host} ({e.strerror}); choose another") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now."""
    with socket.socket(socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0], socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for our own server
    try:
        with opener.open(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_ui(tracking_uri: str, host: str = "127.0.0.1", port: int = 0, timeout: float = 180.0,
             artifacts: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow ui`` over a local tracking store; return (process, base URL) once it answers.

    ``port=0`` picks a free port. The server runs in its own process group with one worker and without
    MLflow's GenAI job runner (a review needs neither); :func:`stop_ui` ends the whole group.
    Raises :class:`ReviewError` for a port in use, ``RuntimeError`` if the server does not come up.
    """
    port = port or free_port(host)
    _check_port(host, port)
    log = tempfile.NamedTemporaryFile(prefix="wsss-mlflow-ui-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if artifacts is not None:  # where runs created through this UI would keep artifacts (not ./mlartifacts)
        cmd += ["--artifacts-destination", str(artifacts)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    base = f"http://{url_host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        while not _answers(f"{base}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = _log_tail(proc)
                if "address already in use" in tail.lower():
                    raise ReviewError("--port", f"{port} is not free on {host}; choose another")
                raise RuntimeError(f"mlflow ui did not answer at {base} within {timeout:.0f} s: {tail}")
            time.sleep(0.5)
    except BaseException:  # Ctrl-C while waiting too
        stop_ui(proc)
        raise
    return proc, base


def _log_tail(proc: subprocess.Popen, lines: int = 5) -> str:
    try:
        return " | ".join(Path(proc.log_path).read_text(errors="replace").strip().splitlines()[-lines:])
    except (AttributeError, OSError):
        return ""


def stop_ui(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """End a server started by :func:`start_ui` (its whole process group) and remove its log."""
    def signal_group(sig):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError, AttributeError):
            if proc.poll() is None:
                proc.send_signal(sig)

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait()
    # workers left behind by the server (same group) go too
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        pass
    try:
        os.unlink(proc.log_path)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        pass


def start_review(study_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                 timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start the MLflow UI over a study's local store; return (process, landing URL).

    For tests and scripts; end it with :func:`stop_ui`.
    """
    meta = load_study(study_dir)
    if is_server(meta["tracking_uri"]):
        raise ReviewError("--study", f"{study_dir} is tracked on the server {meta['tracking_uri']}; "
                                     "nothing to start")
    experiment_id(meta)  # a wrong store or experiment fails before any server starts
    proc, base = start_ui(meta["tracking_uri"], host, port, timeout, artifacts=Path(study_dir).resolve() / "mlartifacts")
    try:
        _, url = prepare_landing(meta, base)
    except BaseException:
        stop_ui(proc)
        raise
    return proc, url


def review_hint(study_dir: str | Path) -> str:
    """What the end of a study prints to open it: the review command, or the landing URL on a
    tracking server."""
    command = f"{_python()} -m study.review --study {_quote(Path(study_dir).resolve())}"
    try:
        meta = load_study(study_dir)
        return prepare_landing(meta)[1] if is_server(meta["tracking_uri"]) else command
    except Exception:  # the server went away: the command still finds the study later
        return command


def _python() -> str:
    """How to call this interpreter: ``python`` when that is it, else its path (relative if under cwd)."""
    import shutil

    exe = Path(sys.executable).absolute()
    found = shutil.which("python")
    if found and Path(found).absolute() == exe:
        return "python"
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every bad input
        sys.stderr.write(f"study.review: {message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m study.review",
                description="Open a study's runs in the MLflow UI (a local store is served until Ctrl-C).")
    p.add_argument("--study", required=True, help="the study's output folder (holds study.json)")
    p.add_argument("--host", default="127.0.0.1", help="interface the MLflow UI listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port of the MLflow UI (default 5000)")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    for name in ("mlflow", "alembic"):  # the store's migrations chatter otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    if not 0 < args.port < 65536:
        sys.stderr.write(f"error: --port: {args.port} is not a port number (1-65535)\n")
        return EXIT_BAD_INPUT
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server as Ctrl-C does
    proc = None
    try:
        meta = load_study(args.study)
        if is_server(meta["tracking_uri"]):
            print(f"[wsss-study] review in MLflow: {prepare_landing(meta)[1]}")
            return EXIT_OK
        print(f"[wsss-study] starting the MLflow UI over {meta['tracking_uri']} ...", flush=True)
        proc, url = start_review(args.study, args.host, args.port)
        print(f"[wsss-study] review in MLflow: {url}")
        print("[wsss-study] serving until Ctrl-C", flush=True)
        code = proc.wait()
    except ReviewError as e:
        sys.stderr.write(f"error: {e.option}: {e}\n")
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        sys.stderr.write(f"error: {e}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        if proc is not None:  # (start_review stops a server it was still waiting for)
            stop_ui(proc)
        print("\n[wsss-study] MLflow UI stopped" if proc is not None else "\n[wsss-study] interrupted")
        return EXIT_OK if proc is not None else 130
    sys.stderr.write(f"error: the MLflow UI exited ({code}): {_log_tail(proc)}\n")
    stop_ui(proc)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
