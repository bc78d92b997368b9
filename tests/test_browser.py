"""The review a study prints, followed in a real browser: the MLflow UI (``study/review.py``) over the
smoke study, driven by headless Chromium (Debian's ``chromium``) through Playwright.

Screenshots (full pages) land in ``test-artifacts/browser/`` at the repository root for a reviewer.
Without Chromium or Playwright the tests skip, except under CI (``CI`` set), where they fail.
Playwright never downloads a browser here: it drives the system Chromium.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from study.review import experiment_id, load_study, run_url, start_review, stop_ui

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("WSSS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 30_000  # per page: a cold UI on a small CI machine


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set WSSS_CHROMIUM)"
    return None


MISSING = _missing()
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"browser test: {MISSING}")]


def test_browser_is_available():
    """Under CI the browser tests must run: a missing Chromium or Playwright fails here, not skips."""
    assert MISSING is None, MISSING


@pytest.fixture(scope="module")
def review(smoke_study):
    """The MLflow UI over the smoke study, as ``python -m study.review`` serves it: (landing URL,
    UI base URL, experiment id, study folder)."""
    out, _ = smoke_study
    proc, url = start_review(out, host="127.0.0.1", port=0)
    try:
        yield url, url.split("/#/")[0], experiment_id(load_study(out)), out
    finally:
        stop_ui(proc)


@pytest.fixture(scope="module")
def page():
    """A page of headless Chromium (the system's, never a downloaded one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--headless=new", "--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": 1600, "height": 900})
            pg.set_default_timeout(TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


def _screenshot(page, name: str, capsys) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\n[browser] screenshot: {path}")
    return path


def _runs(out: Path) -> tuple[dict, list[dict]]:
    """The study's parent run and its trial runs (name, run id, mIoU) from MLflow and trials.parquet."""
    from mlflow.tracking import MlflowClient

    meta = load_study(out)
    client = MlflowClient(meta["tracking_uri"])
    runs = client.search_runs([experiment_id(meta)])
    parent, = [r for r in runs if r.data.tags.get("wsss.role") == "study"]
    by_trial = {r.data.tags.get("ray.trial_id"): r for r in runs if r.data.tags.get("wsss.role") == "trial"}
    trials = pd.read_parquet(out / "trials.parquet")
    assert set(trials["trial_id"]) == set(by_trial), "every trial of trials.parquet has its MLflow run"
    rows = [{"name": f"trial {t.trial_id}", "run_id": by_trial[t.trial_id].info.run_id, "miou": float(t.miou)}
            for t in trials.itertuples()]
    return {"name": parent.data.tags["mlflow.runName"], "run_id": parent.info.run_id, "tags": parent.data.tags}, rows


def test_landing_page_lists_every_trial_with_its_miou(review, page, capsys):
    url, _, _, out = review
    _, trials = _runs(out)
    assert "workflowType=machine_learning" in url  # the model-training runs table, not the GenAI overview
    page.goto(url)
    for t in trials:  # every trial listed, not folded under a collapsed parent
        page.get_by_text(t["name"], exact=True).wait_for(state="visible")
    metric_col = "metrics.`val/miou`"
    header = page.locator(f'.ag-header-cell[col-id="{metric_col}"]')
    header.wait_for(state="visible")
    assert "val/miou" in header.inner_text()
    shot = _screenshot(page, "landing_runs", capsys)
    for t in trials:  # each trial's row (ag-grid rows carry the run id) shows its val/miou
        cell = page.locator(f'.ag-row[row-id="{t["run_id"]}"] .ag-cell[col-id="{metric_col}"]')
        assert cell.is_visible(), f"{t['name']}: no visible val/miou cell"
        shown = cell.inner_text().strip()
        if not math.isfinite(t["miou"]):
            continue
        assert float(shown) == pytest.approx(t["miou"], abs=1e-6), f"{t['name']}: shows {shown!r}"
    assert shot.stat().st_size > 10_000


def check_parent_page(page, parent: dict, trials: list[dict]) -> None:
    """What the parent run's page must show: the study's run, its child runs and its report.

    REPORT ASSERTIONS GO HERE: the run's description (tag ``mlflow.note.content``, rendered under
    "Description") and the report's figures (its artifacts).
    """
    page.get_by_text(parent["name"], exact=True).first.wait_for(state="visible")
    page.get_by_text(parent["run_id"], exact=True).first.wait_for(state="visible")  # "About this run"
    for t in trials:  # "Child runs" links every trial (loaded after the run itself)
        page.get_by_role("link", name=t["name"]).first.wait_for(state="visible")
    note = parent["tags"].get("mlflow.note.content", "")
    plain = [line.strip("#*_` ") for line in note.splitlines()
             if line.strip("#*_` -") and not any(c in line for c in "[]|<>!")]
    if plain:  # the description (Markdown, rendered): its first line of plain text
        page.get_by_text(plain[0][:40]).first.wait_for(state="visible")
    more = page.get_by_text("Show more", exact=True)
    if more.count():  # MLflow folds a long description
        more.first.click()
    page.get_by_text("This study searched", exact=False).first.wait_for(state="visible")  # the first paragraph
    page.get_by_text("What the best trial's model sees").first.wait_for(state="visible")
    wanted = ["best_trial_val_grid", "best_trial_pseudo_labels", "per_class_iou", "optimisation_history",
              "param_slices", "learning_curves"]
    for name in wanted:  # every figure of the report is in the description, loaded from the run's artifacts
        img = page.locator(f'img[src*="figures%2F{name}.png"]').first
        img.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
        assert img.evaluate("img => img.getBoundingClientRect().height") > 100, name


def _close_assistant(page) -> None:
    """Close MLflow's assistant side panel, when it is open, so screenshots show the page."""
    close = page.locator('button[aria-label="Close"]')
    if close.count():
        close.first.click()


def _artifact_width(out: Path, run_id: str, path: str) -> int:
    """The pixel width of a PNG the run logged (what the UI must display)."""
    import tempfile

    from mlflow.tracking import MlflowClient
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        return Image.open(MlflowClient(load_study(out)["tracking_uri"]).download_artifacts(run_id, path, d)).width


def test_each_trial_run_shows_its_review_grid(review, page, capsys):
    """A trial's artifacts hold its review grid (fixed val images: image, ground truth, CAMs,
    output) and, for the single-stage model, the reliable pseudo labels; the UI displays them."""
    _, base, exp_id, out = review
    _, trials = _runs(out)
    for k, t in enumerate(trials):
        page.goto(run_url(base, exp_id, t["run_id"]).replace("?", "/artifacts/review/val_grid.png?"))
        page.reload()  # a new hash alone does not always re-render the run page
        for name in ("val_grid", "pseudo_labels"):
            page.get_by_text(f"{name}.png", exact=True).first.click()  # the artifact tree
            page.get_by_text(f"review/{name}.png").first.wait_for(state="visible")
            width = _artifact_width(out, t["run_id"], f"review/{name}.png")
            img = page.locator("img[src^='blob:']").first
            img.wait_for(state="visible")
            page.wait_for_function(f"img => img.complete && img.naturalWidth == {width}", arg=img.element_handle())
            if k == 0:
                _close_assistant(page)
                assert _screenshot(page, f"trial_{name}", capsys).stat().st_size > 10_000


def test_parent_run_page_shows_the_study_run(review, page, capsys):
    _, base, exp_id, out = review
    parent, trials = _runs(out)
    page.goto(run_url(base, exp_id, parent["run_id"]))
    page.get_by_text(parent["name"], exact=True).first.wait_for(state="visible")
    _close_assistant(page)
    page.wait_for_timeout(500)  # let late panels (metrics, tags) settle for the screenshot
    assert _screenshot(page, "parent_run", capsys).stat().st_size > 10_000
    check_parent_page(page, parent, trials)  # expands the description and waits for every figure
    page.locator('img[src*="figures%2Fbest_trial_val_grid.png"]').first.scroll_into_view_if_needed()
    assert _screenshot(page, "parent_run_report_grid", capsys).stat().st_size > 10_000
