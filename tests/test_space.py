"""Tests for study/space.py and the CLI's bad-input path: every YAML error is one line, exit 2."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study.space import SpaceError, apply_override, load_spec, read_document

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"

# A small valid document; each error case mutates a copy of it.
BASE = {
    "name": "tiny",
    "method": "aal",
    "data": {"name": "synthetic", "num_train": 8, "num_val": 4},
    "fixed": {"train": {"epochs": 4}},
    "search": {
        "train.lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-1},
        "pseudo.crf": {"type": "categorical", "choices": [True, False]},
        "pseudo.crf_iterations": {"type": "int", "low": 2, "high": 10, "when": {"pseudo.crf": True}},
    },
    "budget": {"samples": 2, "concurrency": 1},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "metric": "val/miou",
    "mode": "max",
    "seed": 0,
}


def mutate(fn):
    doc = copy.deepcopy(BASE)
    fn(doc)
    return doc


def _later_when(d):
    # crf_iterations (first) refers to pseudo.crf, which is searched after it
    d["search"] = {
        "pseudo.crf_iterations": {"type": "int", "low": 2, "high": 10, "when": {"pseudo.crf": True}},
        "pseudo.crf": {"type": "categorical", "choices": [True, False]},
    }


def _loguniform_zero(d):
    d["search"]["train.momentum"] = {"type": "loguniform", "low": 0.0, "high": 0.9}


# id -> (document or raw YAML text, the key the error must name)
ERROR_CASES = {
    "yaml_syntax": ("name: tiny\nsearch: {train.lr: [1, 2\n", "line 3, column 1"),
    "duplicate_key": ("name: tiny\nmethod: aal\nname: again\n", "line 3, column 1"),
    "not_a_mapping": ("- name\n- tiny\n", "(document)"),
    "unknown_top_level": (mutate(lambda d: d.update(epochs=3)), "epochs"),
    "missing_name": (mutate(lambda d: d.pop("name")), "name"),
    "bad_name": (mutate(lambda d: d.update(name="has space")), "name"),
    "unknown_method": (mutate(lambda d: d.update(method="seam++")), "method"),
    "unknown_data_name": (mutate(lambda d: d["data"].update(name="voc2099")), "data.name"),
    "bad_data_value": (mutate(lambda d: d["data"].update(num_train=-3)), "data.num_train"),
    "unknown_data_key": (mutate(lambda d: d["data"].update(colour=1)), "data.colour"),
    "unknown_fixed_key": (mutate(lambda d: d.update(fixed={"train": {"lrr": 0.1}})), "fixed.train.lrr"),
    "unknown_fixed_dotted_key": (mutate(lambda d: d.update(fixed={"train.lrr": 0.1})), "fixed.train.lrr"),
    "fixed_value_type": (mutate(lambda d: d["fixed"]["train"].update(epochs="many")), "fixed.train.epochs"),
    "fixed_not_integer": (mutate(lambda d: d["fixed"]["train"].update(epochs=2.5)), "fixed.train.epochs"),
    "fixed_bool_type": (mutate(lambda d: d["fixed"]["train"].update(flip="yes please")), "fixed.train.flip"),
    "fixed_workers_negative": (mutate(lambda d: d["fixed"].update(pseudo={"workers": -2})), "fixed.pseudo.workers"),
    "fixed_workers_word": (mutate(lambda d: d["fixed"].update(pseudo={"workers": "many"})), "fixed.pseudo.workers"),
    "fixed_section_as_value": (mutate(lambda d: d["fixed"].update(train=3)), "fixed.train"),
    "unknown_search_key": (
        mutate(lambda d: d["search"].update({"train.lrr": {"type": "uniform", "low": 0.1, "high": 0.2}})),
        "search.train.lrr"),
    "bad_param_type": (mutate(lambda d: d["search"]["train.lr"].update(type="gaussian")), "search.train.lr.type"),
    "low_ge_high": (mutate(lambda d: d["search"]["train.lr"].update(low=0.1, high=0.01)), "search.train.lr.high"),
    "low_eq_high": (mutate(lambda d: d["search"]["train.lr"].update(low=0.01, high=0.01)), "search.train.lr.high"),
    "missing_high": (mutate(lambda d: d["search"]["train.lr"].pop("high")), "search.train.lr.high"),
    "loguniform_low_zero": (mutate(_loguniform_zero), "search.train.momentum.low"),
    "categorical_without_choices": (mutate(lambda d: d["search"]["pseudo.crf"].pop("choices")),
                                    "search.pseudo.crf.choices"),
    "categorical_choice_type": (mutate(lambda d: d["search"]["pseudo.crf"].update(choices=[True, "no"])),
                                "search.pseudo.crf.choices"),
    "float_type_for_int_setting": (
        mutate(lambda d: d["search"]["pseudo.crf_iterations"].update(type="uniform")),
        "search.pseudo.crf_iterations.type"),
    "when_unknown_param": (
        mutate(lambda d: d["search"]["pseudo.crf_iterations"].update(when={"pseudo.nope": True})),
        "search.pseudo.crf_iterations.when.pseudo.nope"),
    "when_later_param": (mutate(_later_when), "search.pseudo.crf_iterations.when.pseudo.crf"),
    "when_value_not_a_choice": (
        mutate(lambda d: d["search"]["pseudo.crf_iterations"].update(when={"pseudo.crf": "maybe"})),
        "search.pseudo.crf_iterations.when.pseudo.crf"),
    "fixed_and_searched": (mutate(lambda d: d["fixed"]["train"].update(lr=0.01)), "search.train.lr"),
    "budget_samples_zero": (mutate(lambda d: d["budget"].update(samples=0)), "budget.samples"),
    "budget_unknown_key": (mutate(lambda d: d["budget"].update(trials=3)), "budget.trials"),
    "scheduler_type": (mutate(lambda d: d["scheduler"].update(type="bogus")), "scheduler.type"),
    "grace_period_gt_epochs": (mutate(lambda d: d["scheduler"].update(grace_period=5)), "scheduler.grace_period"),
    "reduction_factor_one": (mutate(lambda d: d["scheduler"].update(reduction_factor=1)),
                             "scheduler.reduction_factor"),
    "resources_cpu_negative": (mutate(lambda d: d["resources"].update(cpu=-1)), "resources.cpu"),
    "metric": (mutate(lambda d: d.update(metric="bogus")), "metric"),
    "mode": (mutate(lambda d: d.update(mode="bogus")), "mode"),
    "seed_negative": (mutate(lambda d: d.update(seed=-1)), "seed"),
    "sampler": (mutate(lambda d: d.update(sampler="cmaes")), "sampler"),
    # Values outside a closed set or a bound, fixed or searched (typed settings, issue 13).
    "fixed_closed_set": (mutate(lambda d: d["fixed"]["train"].update(optimizer="adamm")), "fixed.train.optimizer"),
    "fixed_literal_supervision": (mutate(lambda d: d["fixed"]["train"].update(supervision="ful")),
                                  "fixed.train.supervision"),
    "fixed_bound": (mutate(lambda d: d["fixed"].update(pseudo={"cam_floor": 1.5})), "fixed.pseudo.cam_floor"),
    "range_outside_bounds": (
        mutate(lambda d: d["search"].update({"pseudo.fg_percentile": {"type": "uniform", "low": 0.2, "high": 1.5}})),
        "search.pseudo.fg_percentile.high"),
    "choice_not_allowed": (
        mutate(lambda d: d["search"].update({"loss.affinity.confidence": {"type": "categorical",
                                                                          "choices": ["crf", "crff"]}})),
        "search.loss.affinity.confidence.choices"),
    "choice_breaks_a_check_across_settings": (
        mutate(lambda d: d.update(method="sccam", search={"sccam.rounds": {"type": "categorical", "choices": [1, 9]}})),
        "search.sccam.rounds.choices"),
}

# Representative cases through the real CLI in a subprocess (each costs ~3 s of imports; with the
# bad --set and the missing file below, six subprocesses in all). Every case also goes through the
# CLI's main() in-process (test_main_bad_space_exits_2_with_one_line).
CLI_CASES = ["yaml_syntax", "duplicate_key", "unknown_fixed_key", "low_ge_high"]


def write_space(folder: Path, name: str, content) -> Path:
    path = folder / f"{name}.yaml"
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


def test_base_document_is_valid(tmp_path):
    spec = load_spec(write_space(tmp_path, "ok", BASE))
    assert spec.name == "tiny" and spec.epochs == 4 and spec.samples == 2
    assert [p.name for p in spec.params] == ["train.lr", "pseudo.crf", "pseudo.crf_iterations"]
    assert spec.params[2].when == (("pseudo.crf", (True,)),)


def test_every_documented_value_is_accepted(tmp_path):
    for key, value in [("loss.dense.impl", "exact"), ("loss.dense.impl", "lattice"), ("train.autocast", "bf16"),
                       ("train.supervision", "full"), ("loss.affinity.confidence", "pred")]:
        doc = mutate(lambda d: d["fixed"].update({key: value}))
        spec = load_spec(write_space(tmp_path, key.replace(".", "_") + str(value), doc))
        node = spec.trainable_config()
        for part in key.split("."):
            node = node[part]
        assert node == value


def test_workers_take_auto_or_a_count(tmp_path):
    for value in ("auto", 0, 6):
        doc = mutate(lambda d: d["fixed"].update(pseudo={"workers": value}))
        spec = load_spec(write_space(tmp_path, f"w{value}", doc))
        assert spec.trainable_config()["pseudo"]["workers"] == value


def test_smoke_space_loads():
    spec = load_spec(SMOKE)
    assert spec.name == "smoke"
    assert spec.method == "aal"
    assert spec.data == {"name": "synthetic", "num_train": 48, "num_val": 16, "image_size": 48}
    assert spec.epochs == 2
    assert spec.samples == 2 and spec.concurrency == 2
    assert spec.scheduler == {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    assert spec.metric == "val/miou" and spec.mode == "max"
    by_name = {p.name: p for p in spec.params}
    assert list(by_name) == ["train.lr", "pseudo.fg_percentile", "pseudo.crf", "pseudo.crf_iterations"]
    assert by_name["train.lr"].type == "loguniform"
    assert (by_name["train.lr"].low, by_name["train.lr"].high) == (1.0e-3, 3.0e-2)
    assert by_name["pseudo.crf"].choices == (True, False)
    assert by_name["pseudo.crf_iterations"].when == (("pseudo.crf", (True,)),)
    assert spec.fixed["train"]["seed"] == 0  # the study seed reaches the trials
    assert spec.trainable_config()["data"]["num_train"] == 48


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_load_spec_error_names_file_and_key(tmp_path, case):
    content, key = ERROR_CASES[case]
    path = write_space(tmp_path, case, content)
    with pytest.raises(SpaceError) as info:
        load_spec(path)
    err = info.value
    assert err.key == key
    assert err.path == str(path)
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: ")


def test_duplicate_key_error_names_the_key(tmp_path):
    with pytest.raises(SpaceError, match="duplicate key 'name'"):
        read_document(write_space(tmp_path, "dup", ERROR_CASES["duplicate_key"][0]))


def test_nested_duplicate_key_is_refused(tmp_path):
    path = write_space(tmp_path, "dup2", "name: x\nbudget:\n  samples: 2\n  samples: 3\n")
    with pytest.raises(SpaceError, match="duplicate key 'samples'") as info:
        load_spec(path)
    assert info.value.key == "line 4, column 3"


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, wsss_cache_dir):
    """Run the CLI on every CLI case at once (in parallel: each run is mostly import time)."""
    folder = tmp_path_factory.mktemp("bad-spaces")
    procs = {}
    for case in CLI_CASES:
        path = write_space(folder, case, ERROR_CASES[case][0])
        procs[case] = (path, _start(["--space", str(path), "--dry-run"]))
    ok_path = write_space(folder, "ok", BASE)
    procs["bad_set"] = (ok_path, _start(["--space", str(ok_path), "--set", "budget.samples", "--dry-run"]))
    procs["missing_file"] = (folder / "nope.yaml", _start(["--space", str(folder / "nope.yaml"), "--dry-run"]))
    results = {}
    for case, (path, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        results[case] = (path, proc.returncode, out, err)
    return results


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_one_line_error(result, key: str):
    path, rc, out, err = result
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    assert key in lines[0]
    assert "dry run" not in out


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_bad_space_exits_2_with_one_line(cli_results, case):
    _check_one_line_error(cli_results[case], ERROR_CASES[case][1])


def test_cli_set_without_equals_exits_2(cli_results):
    _check_one_line_error(cli_results["bad_set"], "--set budget.samples")
    assert "KEY=VALUE" in cli_results["bad_set"][3]


def test_cli_missing_space_file_exits_2(cli_results):
    _check_one_line_error(cli_results["missing_file"], "(file)")


# The CLI's own main(), in-process (cheap): the same exit codes without a new interpreter.

def _main(args, capsys):
    from study.run import main

    try:
        rc = main(args)
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_main_bad_space_exits_2_with_one_line(tmp_path, capsys, case):
    content, key = ERROR_CASES[case]
    path = write_space(tmp_path, case, content)
    rc, out, err = _main(["--space", str(path), "--dry-run"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err.startswith(f"error: {path}: {key}: ")
    assert "dry run" not in out


def test_main_num_samples_zero_exits_2(tmp_path, capsys):
    path = write_space(tmp_path, "ok", BASE)
    rc, out, err = _main(["--space", str(path), "--num-samples", "0", "--dry-run"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "--num-samples" in err and str(path) in err


def test_main_bad_set_and_missing_file_exit_2(tmp_path, capsys):
    path = write_space(tmp_path, "ok", BASE)
    rc, _, err = _main(["--space", str(path), "--set", "fixed.train.epochs", "--dry-run"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "expected KEY=VALUE" in err
    rc, _, err = _main(["--space", str(tmp_path / "missing.yaml"), "--dry-run"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "missing.yaml" in err
    rc, _, err = _main(["--space", str(path), "--num-samples", "many"], capsys)  # argparse
    assert rc == 2 and err.count("\n") == 1 and "--num-samples" in err


def test_main_bad_set_value_exits_2(tmp_path, capsys):
    path = write_space(tmp_path, "ok", BASE)
    rc, _, err = _main(["--space", str(path), "--set", "budget.samples=0", "--dry-run"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "budget.samples" in err


def test_main_dry_run_of_valid_space_prints_plan(tmp_path, capsys):
    path = write_space(tmp_path, "ok", BASE)
    rc, out, err = _main(["--space", str(path), "--set", "budget.samples=5", "--dry-run",
                          "--output", str(tmp_path / "out")], capsys)
    assert rc == 0, err
    assert "5 trials" in out and "4 epochs each" in out
    assert "train.lr" in out and "loguniform" in out
    assert "dry run" in out
    assert not (tmp_path / "out").exists()  # nothing was run or written


# --set overrides

def test_set_budget_samples():
    assert load_spec(SMOKE, ["budget.samples=5"]).samples == 5


def test_set_fixed_nested_key():
    spec = load_spec(SMOKE, ["fixed.train.epochs=3"])
    assert spec.epochs == 3
    assert spec.fixed["train"]["epochs"] == 3
    assert spec.fixed["train"]["batch_size"] == 16  # the rest of the section is kept


def test_set_reaches_dotted_param_name():
    spec = load_spec(SMOKE, ["search.train.lr.high=0.1"])
    lr = next(p for p in spec.params if p.name == "train.lr")
    assert lr.high == 0.1 and lr.low == 1.0e-3
    assert "train" not in spec.document["search"]  # no new 'train' section was made
    assert spec.document["search"]["train.lr"]["high"] == 0.1


def test_set_value_is_parsed_as_yaml():
    spec = load_spec(SMOKE, ["search.pseudo.crf.choices=[true]", "scheduler.type=none", "seed=7"])
    crf = next(p for p in spec.params if p.name == "pseudo.crf")
    assert crf.choices == (True,)
    assert spec.scheduler["type"] == "none"
    assert spec.seed == 7 and spec.fixed["train"]["seed"] == 7


def test_set_new_key_in_fixed_and_later_set_wins():
    spec = load_spec(SMOKE, ["fixed.loss.ce.weight=0.5", "budget.samples=3", "budget.samples=4"])
    assert spec.fixed["loss"]["ce"]["weight"] == 0.5
    assert spec.samples == 4


def test_set_errors():
    with pytest.raises(SpaceError) as info:
        load_spec(SMOKE, ["budget.samples"])
    assert info.value.key == "--set budget.samples"
    with pytest.raises(SpaceError) as info:
        load_spec(SMOKE, ["bogus.key=1"])
    assert info.value.key == "bogus.key"
    with pytest.raises(SpaceError) as info:
        load_spec(SMOKE, ["fixed.train.lrr=0.1"])
    assert info.value.key == "fixed.train.lrr"
    with pytest.raises(SpaceError) as info:
        load_spec(SMOKE, ["metric.sub=1"])  # 'metric' is a value, not a section
    assert info.value.key == "metric.sub"


def test_apply_override_on_raw_document():
    doc = {"search": {"train.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, "budget": {"samples": 1}}
    apply_override(doc, "search.train.lr.low=0.05", "x.yaml")
    apply_override(doc, "budget.concurrency=2", "x.yaml")
    apply_override(doc, "name=abc", "x.yaml")
    assert doc == {"search": {"train.lr": {"type": "uniform", "low": 0.05, "high": 0.2}},
                   "budget": {"samples": 1, "concurrency": 2}, "name": "abc"}
    # the longest run of segments naming an existing key wins over a shorter prefix
    doc = {"fixed": {"a": {"x": 1}, "a.b": {"c": 2}}}
    apply_override(doc, "fixed.a.b.c=3", "x.yaml")
    assert doc == {"fixed": {"a": {"x": 1}, "a.b": {"c": 3}}}


def test_num_samples_override():
    assert load_spec(SMOKE, num_samples=7).samples == 7
    with pytest.raises(SpaceError) as info:
        load_spec(SMOKE, num_samples=0)
    assert info.value.key == "--num-samples"


def test_missing_file():
    with pytest.raises(SpaceError) as info:
        load_spec(ROOT / "search_spaces" / "does-not-exist.yaml")
    assert info.value.key == "(file)"
    assert "does-not-exist.yaml" in str(info.value)


def test_spec_digest_changes_with_overrides():
    a, b = load_spec(SMOKE), load_spec(SMOKE, ["budget.samples=5"])
    assert a.digest() != b.digest()
    assert a.digest() == load_spec(SMOKE).digest()
    assert yaml.safe_load(b.resolved_yaml())["budget"]["samples"] == 5


# Non-finite numbers once escaped as a traceback (exit 1) instead of a SpaceError (exit 2).
SOURCE_BUG_CASES = {
    # study/space.py _check_value_type: int(value) raises OverflowError for .inf
    "fixed_epochs_inf": (mutate(lambda d: d["fixed"]["train"].update(epochs=float("inf"))), "fixed.train.epochs"),
    # trainables/data/registry.py _check_synthetic: int(value) raises ValueError / OverflowError
    "data_num_train_nan": (mutate(lambda d: d["data"].update(num_train=float("nan"))), "data.num_train"),
    "data_num_train_inf": (mutate(lambda d: d["data"].update(num_train=float("inf"))), "data.num_train"),
}


@pytest.mark.parametrize("case", sorted(SOURCE_BUG_CASES))
def test_non_finite_values_are_space_errors(tmp_path, case):
    content, key = SOURCE_BUG_CASES[case]
    with pytest.raises(SpaceError) as info:
        load_spec(write_space(tmp_path, case, content))
    assert info.value.key == key


def test_non_utf8_file_is_a_space_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(BASE, sort_keys=False).replace("tiny", "t\xe9ny").encode("latin-1"))
    with pytest.raises(SpaceError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_train_epochs_cannot_be_searched(tmp_path):
    # ASHA's max_t and the PRUNED detection need one epoch count for the whole study.
    content = mutate(lambda d: d.setdefault("search", {}).update({"train.epochs": {"type": "int", "low": 2, "high": 6}}))
    with pytest.raises(SpaceError) as info:
        load_spec(write_space(tmp_path, "epochs", content))
    assert info.value.key == "search.train.epochs"


def test_empty_budget_section_accepts_overrides(tmp_path):
    content = mutate(lambda d: d.update(budget=None))
    path = write_space(tmp_path, "empty_budget", content)
    assert load_spec(path, num_samples=3).samples == 3
    assert load_spec(path, ["budget.samples=5"]).samples == 5


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_loads(path, tmp_path):
    from study.compare import is_comparison, load_compare

    if is_comparison(path):  # compare.yaml: every study it names loads
        assert load_compare(path).studies
        return
    overrides = []
    if read_document(path)["data"].get("name") == "voc":  # needs a VOC folder: a tiny one
        from voc_fixture import make_voc

        make_voc(tmp_path, n_train=2, n_aug=2, n_val=1, size=(24, 32), with_real=False)
        overrides = [f"data.root={tmp_path}"]
    spec = load_spec(path, overrides)
    assert spec.name == path.stem and spec.params


def test_rrm_is_aal_without_the_aalr_losses():
    aal, rrm = load_spec(ROOT / "search_spaces" / "aal.yaml"), load_spec(ROOT / "search_spaces" / "rrm.yaml")
    a, r = aal.trainable_config(), rrm.trainable_config()
    assert a["loss"]["affinity"]["enabled"] and a["loss"]["reassign"]["enabled"] and a["loss"]["dense"]["enabled"]
    assert r["loss"]["dense"]["enabled"]
    assert not r["loss"]["affinity"]["enabled"] and not r["loss"]["reassign"]["enabled"]
    names = {p.name for p in aal.params if not p.name.startswith(("loss.affinity.", "loss.reassign."))}
    assert names == {p.name for p in rrm.params}
    assert (a["model"], a["train"], aal.data) == (r["model"], r["train"], rrm.data)


def test_aal_voc_is_the_realistic_gpu_study(tmp_path):
    from voc_fixture import make_voc

    make_voc(tmp_path, n_train=2, n_aug=2, n_val=1, size=(24, 32), with_real=False)
    spec = load_spec(ROOT / "search_spaces" / "aal_voc.yaml", [f"data.root={tmp_path}"])
    cfg = spec.trainable_config()
    assert spec.data["name"] == "voc" and spec.data["train_split"] == "train_aug"
    assert cfg["model"]["backbone"] == "efficientnet_lite0" and cfg["model"].get("weights") is None  # packaged ImageNet
    assert cfg["train"]["crop"] == 321 and cfg["train"]["batch_size"] >= 4
    assert spec.resources["gpu"] == 1
    assert "train_aug 4 images" in spec.data_summary and "val 1 image (" in spec.data_summary
    with pytest.raises(SpaceError, match="data.root: is required"):
        load_spec(ROOT / "search_spaces" / "aal_voc.yaml")
