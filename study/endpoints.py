"""What a study talks to besides its own processes, checked before anything starts: the MLflow
tracking server (``--tracking-uri http://...``). Kept free of heavy imports so that a bad
endpoint is reported in a fraction of a second."""

from __future__ import annotations


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server named by ``--tracking-uri`` does not answer."""


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Before any trial: an ``http(s)://`` tracking URI must answer MLflow's ``/health``
    endpoint; raises :class:`TrackingUnreachable` saying why. Other stores (SQLite, a database
    URL) are created on first use and need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read(100).decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        raise TrackingUnreachable(f"{url} answered HTTP {e.code} {e.reason}: is this an MLflow server? "
                                  "(mlflow server refuses unknown Host headers: see its --allowed-hosts)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnreachable(f"cannot reach the MLflow server at {uri} ({reason}); start it, e.g. "
                                  "mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db") from None
    if body != "OK":
        raise TrackingUnreachable(f"{url} answered {body!r}, not MLflow's 'OK': is this an MLflow server?")
