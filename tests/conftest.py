"""Shared test setup: the dataset cache goes to a per-session temporary folder, never ~/.cache."""

from __future__ import annotations

import os
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
