"""The editor schema (study/schema.py): every shipped YAML validates against its method's schema,
and a typo in a key or a value fails it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from study.compare import is_comparison
from study.schema import method_schema
from study.space import read_document
from trainables.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted(p for p in (ROOT / "search_spaces").glob("*.yaml") if not is_comparison(p))


def _errors(doc: dict) -> list[str]:
    schema = method_schema(doc.get("method", "aal"))
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_each_shipped_space_validates_against_its_schema(path):
    assert _errors(read_document(path)) == []


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_has_a_valid_schema(method):
    jsonschema.Draft202012Validator.check_schema(method_schema(method))


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["fixed"]["train"].update(optimizer="adamm"), "'adamm' is not one of"),
    (lambda d: d["fixed"].update(trian={"lr": 0.1}), "'trian' was unexpected"),
    (lambda d: d["fixed"].update({"train.lrr": 0.1}), "'train.lrr' was unexpected"),
    (lambda d: d["search"]["loss.affinity.confidence"].update(choices=["crf", "crff"]), "'crff' is not one of"),
    (lambda d: d["search"].update({"loss.affinty.weight": {"type": "uniform", "low": 0, "high": 1}}),
     "'loss.affinty.weight' was unexpected"),
    (lambda d: d["search"]["train.lr"].update(type="gauss"), "'gauss' is not one of"),
    (lambda d: d["budget"].update(sampels=3), "'sampels' was unexpected"),
    (lambda d: d["data"].update(num_trian=3), "num_trian"),
    (lambda d: d.update(mode="maximum"), "'maximum' is not one of"),
])
def test_a_typo_in_a_key_or_value_fails(mutate, needle):
    doc = copy.deepcopy(read_document(ROOT / "search_spaces" / "aal.yaml"))
    mutate(doc)
    assert any(needle in e for e in _errors(doc)), _errors(doc)


def test_the_cli_prints_the_schema_and_refuses_an_unknown_method():
    out = subprocess.run([sys.executable, "-m", "study.schema", "aal"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and json.loads(out.stdout)["properties"]["method"] == {"const": "aal"}
    bad = subprocess.run([sys.executable, "-m", "study.schema", "rrmm"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "rrmm" in bad.stderr and bad.stderr.count("\n") == 1
