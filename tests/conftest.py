"""Shared test setup: the dataset cache goes to a per-session temporary folder, never ~/.cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def wsss_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point ``WSSS_CACHE_DIR`` at a fresh temporary folder for the whole session.

    Subprocesses started by tests inherit it, so nothing is written under the home folder.
    """
    path = tmp_path_factory.mktemp("wsss-cache")
    old = os.environ.get("WSSS_CACHE_DIR")
    os.environ["WSSS_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("WSSS_CACHE_DIR", None)
    else:
        os.environ["WSSS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory, wsss_cache_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """The smoke study, run once through the real CLI (embedded Ray) for every test that reads it
    (tests/test_e2e.py, tests/test_browser.py): (output folder, the finished process)."""
    out = tmp_path_factory.mktemp("smoke") / "study"
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", "search_spaces/smoke.yaml", "--output",
                           str(out), "--address", "local"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc
