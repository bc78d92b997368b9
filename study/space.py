"""Search-space YAML: parsing, ``--set`` overrides and validation into a :class:`StudySpec`.

Every error is a :class:`SpaceError` naming the file, the dotted key and the value at fault, so
the CLI can print one line and exit 2. The schema (README "Search-space YAML"):

.. code-block:: yaml

    name: aal-synthetic           # study name: MLflow experiment, default output folder
    method: aal                   # a registered method (trainables.methods.registry)
    data: {name: synthetic}       # dataset section, checked by the dataset's own validator
    fixed: {train: {epochs: 8}}   # trainable settings shared by every trial (nested or dotted)
    search:                       # searched settings, by dotted key, in suggestion order
      train.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-1}
      pseudo.crf: {type: categorical, choices: [true, false]}
      pseudo.crf_iterations: {type: int, low: 2, high: 10, when: {pseudo.crf: true}}
    budget: {samples: 12, concurrency: 2}
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}
    metric: val/miou
    mode: max
    seed: 0
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.methods.registry import METHODS
from trainables.settings.tree import ConfigError, check_keys, flatten, merge, unflatten
from trainables.nets.backbones import BackboneError, check_backbone_weights
from trainables.data.registry import PATH_KEYS, check_data_spec


class SpaceError(ValueError):
    """Bad input: names the file, the key and the value. ``str()`` is the one-line message,
    followed, for a dataset's files, by one indented line per problem listed (``details``)."""

    def __init__(self, path: str | Path, key: str, value: Any, message: str, details: tuple | list = ()):
        self.path, self.key, self.value, self.message = str(path), key, value, message
        self.details = list(details)
        shown = "" if value is _MISSING else f" (got {value!r})"
        line = f"{self.path}: {key}: {message}{shown}"
        # One message: the line, then (for a dataset's problems) one indented line per problem.
        lines = [line, *(f"  - {d}" for d in self.details)]
        super().__init__("\n".join(x.replace("\r", "\\r").replace("\n", "\\n") for x in lines))


_MISSING = object()
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PARAM_TYPES = ("uniform", "loguniform", "int", "categorical")
TOP_LEVEL = ("name", "description", "method", "data", "fixed", "search", "budget", "scheduler",
             "resources", "metric", "mode", "seed", "sampler", "max_failures")


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter. ``when`` maps earlier parameters to the values that enable it."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()

    def describe(self) -> str:
        """Human-readable range, e.g. ``loguniform [0.001, 0.1]``."""
        cond = ""
        if self.when:
            cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when)
        if self.type == "categorical":
            return f"categorical {list(self.choices)}{cond}"
        step = f" step {self.step}" if self.step else ""
        return f"{self.type} [{self.low}, {self.high}]{step}{cond}"


@dataclass
class StudySpec:
    """A validated study: everything the runner needs, nothing left to check."""

    path: str
    name: str
    method: str
    data: dict
    fixed: dict
    params: list[ParamSpec]
    samples: int
    concurrency: int
    scheduler: dict
    resources: dict
    metric: str
    mode: str
    seed: int
    sampler: str
    max_failures: int
    description: str = ""
    document: dict = field(default_factory=dict)
    data_summary: str = ""

    @property
    def epochs(self) -> int:
        """Training epochs per trial (ASHA's max_t)."""
        return int(merge(METHODS[self.method].defaults, self.fixed)["train"]["epochs"])

    def trainable_config(self) -> dict:
        """The fixed part of every trial's configuration, data section included."""
        return merge(self.fixed, {"data": self.data})

    def resolved_yaml(self) -> str:
        """The document after ``--set`` overrides, as YAML."""
        return yaml.safe_dump(self.document, sort_keys=False)

    def digest(self) -> str:
        """sha256 of the resolved document (tagged on the MLflow parent run)."""
        return hashlib.sha256(self.resolved_yaml().encode()).hexdigest()


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one) and takes
    only true/false as booleans, as YAML 1.2 does: YAML 1.1 also reads on/off/yes/no as
    booleans, which turns ``autocast: off`` or ``--set ...=no`` into False for a string setting."""


# YAML 1.2 booleans: drop PyYAML's 1.1 bool resolver and add one for true/false only.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = loader.construct_object(value_node, deep=deep)
    return seen


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_document(path: str | Path) -> dict:
    """Parse the YAML file into a mapping, with errors that name the file and position."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(p, "(file)", _MISSING, "no such search-space file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(p, "(file)", _MISSING, f"cannot be read as UTF-8 text: {type(e).__name__}") from None
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(syntax)"
        raise SpaceError(p, where, _MISSING, f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SpaceError(p, "(syntax)", _MISSING, f"invalid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise SpaceError(p, "(document)", doc, "must be a mapping of study settings")
    return doc


def parse_value(raw: str) -> Any:
    """A ``--set`` value as YAML, except that numbers YAML 1.1 leaves as strings (``3e-3``,
    ``1e5``: no dot) are numbers here too.

    Example:
        >>> parse_value("3e-3"), parse_value("[1, 2]"), parse_value("adam")
        (0.003, [1, 2], 'adam')
    """
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            pass
    return value


def apply_override(doc: dict, assignment: str, path: str | Path) -> None:
    """Apply one ``--set KEY=VALUE`` (VALUE parsed as YAML) to the raw document in place.

    Dotted keys follow the document: at each level the longest run of segments that names an
    existing key wins, so ``search.train.lr.high=0.1`` reaches the parameter ``train.lr``.
    """
    if "=" not in assignment:
        raise SpaceError(path, f"--set {assignment}", _MISSING, "expected KEY=VALUE")
    key, raw = assignment.split("=", 1)
    value = parse_value(raw)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise SpaceError(path, f"--set {assignment}", _MISSING, "empty key")
    node: Any = doc
    i = 0
    while i < len(parts):
        if isinstance(node, dict):
            for j in range(len(parts), i, -1):  # an empty section (`budget:`) is an empty mapping
                name = ".".join(parts[i:j])
                if name in node and node[name] is None and j < len(parts):
                    node[name] = {}
                    break
        if not isinstance(node, dict):
            raise SpaceError(path, key, value, f"'{'.'.join(parts[:i])}' is not a section")
        match = next((j for j in range(len(parts), i, -1) if ".".join(parts[i:j]) in node), None)
        if match is None:
            if i == 0 and parts[0] not in TOP_LEVEL:
                raise SpaceError(path, key, value, f"unknown top-level key; known: {', '.join(TOP_LEVEL)}")
            # A new key: under 'fixed' it is a nested path; elsewhere one segment per level.
            name = parts[i]
            if i + 1 == len(parts):
                node[name] = value
                return
            node = node.setdefault(name, {})
            i += 1
            continue
        name = ".".join(parts[i:match])
        if match == len(parts):
            node[name] = value
            return
        node = node[name]
        i = match


def _num(path, key, v, *, integer=False, positive=False, nonneg=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise SpaceError(path, key, v, "must be a number")
    if integer and int(v) != v:
        raise SpaceError(path, key, v, "must be an integer")
    if positive and v <= 0:
        raise SpaceError(path, key, v, "must be positive")
    if nonneg and v < 0:
        raise SpaceError(path, key, v, "must not be negative")
    return int(v) if integer else v


def _mapping(path, key, v, allowed: tuple[str, ...] | None = None) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise SpaceError(path, key, v, "must be a mapping")
    if allowed is not None:
        for k in v:
            if k not in allowed:
                raise SpaceError(path, f"{key}.{k}", v[k], f"unknown key; allowed: {', '.join(allowed)}")
    return v


def _check_value_type(path, key: str, value: Any, default: Any) -> None:
    """A fixed or searched value must have the type of the trainable's default."""
    if default is None:
        if value is not None and not isinstance(value, str):
            raise SpaceError(path, key, value, "must be a string (a path) or null")
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpaceError(path, key, value, "must be true or false")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpaceError(path, key, value, "must be a finite number")
        if isinstance(default, int) and not isinstance(default, bool) and int(value) != value:
            raise SpaceError(path, key, value, "must be an integer")
    elif default == "auto":  # e.g. pseudo.workers: "auto" or a count
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SpaceError(path, key, value, "must be 'auto' or a whole number >= 0")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise SpaceError(path, key, value, "must be a string")
    elif isinstance(default, list):
        if not isinstance(value, list) or not value:
            raise SpaceError(path, key, value, "must be a non-empty list")


def _parse_param(path, name: str, raw: Any, defaults_flat: dict, earlier: dict[str, ParamSpec]) -> ParamSpec:
    key = f"search.{name}"
    body = _mapping(path, key, raw, ("type", "low", "high", "step", "choices", "when"))
    kind = body.get("type", _MISSING)
    if kind not in PARAM_TYPES:
        raise SpaceError(path, f"{key}.type", kind, f"must be one of {', '.join(PARAM_TYPES)}")
    default = defaults_flat[name]
    when: list[tuple[str, tuple]] = []
    for ref, vals in _mapping(path, f"{key}.when", body.get("when")).items():
        if ref not in earlier:
            raise SpaceError(path, f"{key}.when.{ref}", vals, "must name a parameter searched earlier in the file")
        vals = tuple(vals) if isinstance(vals, list) else (vals,)
        ref_spec = earlier[ref]
        if ref_spec.type == "categorical":
            bad = [v for v in vals if v not in ref_spec.choices]
            if bad:
                raise SpaceError(path, f"{key}.when.{ref}", bad[0], f"is not one of {ref}'s choices {list(ref_spec.choices)}")
        when.append((ref, vals))
    if kind == "categorical":
        choices = body.get("choices", _MISSING)
        if not isinstance(choices, list) or not choices:
            raise SpaceError(path, f"{key}.choices", choices, "must be a non-empty list")
        for c in choices:
            if default is not None and isinstance(default, list):
                if not isinstance(c, list):
                    raise SpaceError(path, f"{key}.choices", c, "each choice must be a list")
                continue
            _check_value_type(path, f"{key}.choices", c, default)
        for extra in ("low", "high", "step"):
            if extra in body:
                raise SpaceError(path, f"{key}.{extra}", body[extra], "categorical parameters take 'choices' only")
        return ParamSpec(name, kind, choices=tuple(choices), when=tuple(when))
    if "choices" in body:
        raise SpaceError(path, f"{key}.choices", body["choices"], f"{kind} parameters take low/high, not choices")
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise SpaceError(path, f"{key}.type", kind, f"{name} is not numeric (default {default!r}); use categorical")
    integer = kind == "int"
    for bound in ("low", "high"):
        if bound not in body:
            raise SpaceError(path, f"{key}.{bound}", _MISSING, "is required")
    low = _num(path, f"{key}.low", body["low"], integer=integer)
    high = _num(path, f"{key}.high", body["high"], integer=integer)
    if not low < high:
        raise SpaceError(path, f"{key}.high", high, f"must be greater than low ({low})")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(path, f"{key}.low", low, "must be positive for loguniform")
    if isinstance(default, int) and kind != "int":
        raise SpaceError(path, f"{key}.type", kind, f"{name} is an integer setting; use type int")
    step = None
    if "step" in body:
        if not integer:
            raise SpaceError(path, f"{key}.step", body["step"], "only int parameters take a step")
        step = _num(path, f"{key}.step", body["step"], integer=True, positive=True)
    return ParamSpec(name, kind, low=low, high=high, step=step, when=tuple(when))


def _normalise_fixed(path, raw: Any) -> dict:
    fixed = _mapping(path, "fixed", raw)
    return unflatten(flatten(fixed))


def parse_document(doc: dict, path: str | Path) -> StudySpec:
    """Validate a raw document (after overrides) into a :class:`StudySpec`."""
    for k in doc:
        if k not in TOP_LEVEL:
            raise SpaceError(path, str(k), doc[k], f"unknown top-level key; known: {', '.join(TOP_LEVEL)}")
    name = doc.get("name", _MISSING)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpaceError(path, "name", name, "is required: letters, digits, '_', '-', '.'")
    method = doc.get("method", "aal")
    if method not in METHODS:
        raise SpaceError(path, "method", method, f"unknown method; choose one of {', '.join(sorted(METHODS))}")
    defaults = METHODS[method].defaults
    defaults_flat = flatten(defaults)

    data = _mapping(path, "data", doc.get("data", {"name": "synthetic"}))
    data = {"name": "synthetic", **data}
    for key in PATH_KEYS:  # trials run in their own working directories: make paths absolute
        if isinstance(data.get(key), str) and data[key]:
            data[key] = str(Path(data[key]).expanduser().absolute())

    fixed = _normalise_fixed(path, doc.get("fixed"))
    weights = fixed.get("model", {}).get("weights") if isinstance(fixed.get("model"), dict) else None
    if isinstance(weights, str) and weights.lower() not in ("", "none", "packaged"):
        fixed["model"]["weights"] = str(Path(weights).expanduser().absolute())
    if "data" in fixed:
        raise SpaceError(path, "fixed.data", fixed["data"], "set data under the top-level 'data' key")
    try:
        check_keys(defaults, fixed, where="fixed.")
    except ConfigError as e:
        raise SpaceError(path, e.key, e.value, e.message) from None
    for key, value in flatten(fixed).items():
        _check_value_type(path, f"fixed.{key}", value, defaults_flat[key])

    params: dict[str, ParamSpec] = {}
    for pname, raw in _mapping(path, "search", doc.get("search")).items():
        pname = str(pname)
        if pname not in defaults_flat or pname.startswith("data."):
            close = [k for k in defaults_flat if k.split(".")[-1] == pname.split(".")[-1]]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpaceError(path, f"search.{pname}", raw, f"unknown setting{hint}")
        if pname == "train.epochs":
            raise SpaceError(path, f"search.{pname}", raw, "cannot be searched: it is ASHA's max_t; set it under fixed")
        if pname in flatten(fixed):
            raise SpaceError(path, f"search.{pname}", raw, "is also set under 'fixed'; keep one")
        params[pname] = _parse_param(path, pname, raw, defaults_flat, params)

    budget = _mapping(path, "budget", doc.get("budget"), ("samples", "concurrency"))
    samples = _num(path, "budget.samples", budget.get("samples", 8), integer=True, positive=True)
    concurrency = _num(path, "budget.concurrency", budget.get("concurrency", 1), integer=True, positive=True)

    sched = _mapping(path, "scheduler", doc.get("scheduler"), ("type", "grace_period", "reduction_factor"))
    stype = sched.get("type", "asha")
    if stype not in ("asha", "none"):
        raise SpaceError(path, "scheduler.type", stype, "must be asha or none")
    scheduler = {
        "type": stype,
        "grace_period": _num(path, "scheduler.grace_period", sched.get("grace_period", 1), integer=True, positive=True),
        "reduction_factor": _num(path, "scheduler.reduction_factor", sched.get("reduction_factor", 2), positive=True),
    }
    if scheduler["reduction_factor"] <= 1:
        raise SpaceError(path, "scheduler.reduction_factor", scheduler["reduction_factor"], "must be greater than 1")

    res = _mapping(path, "resources", doc.get("resources"), ("cpu", "gpu"))
    resources = {
        "cpu": _num(path, "resources.cpu", res.get("cpu", 1), positive=True),
        "gpu": _num(path, "resources.gpu", res.get("gpu", 0), nonneg=True),
    }
    if resources["gpu"] > 1 and int(resources["gpu"]) != resources["gpu"]:
        raise SpaceError(path, "resources.gpu", resources["gpu"], "above 1 must be a whole number of GPUs")

    metric = doc.get("metric", "val/miou")
    if not isinstance(metric, str) or not (metric in ("val/miou", "val/cam_miou") or metric.startswith("val/iou/")):
        raise SpaceError(path, "metric", metric, "must be val/miou, val/cam_miou or val/iou/<class>")
    mode = doc.get("mode", "max")
    if mode not in ("max", "min"):
        raise SpaceError(path, "mode", mode, "must be max or min")
    seed = _num(path, "seed", doc.get("seed", 0), integer=True, nonneg=True)
    sampler = doc.get("sampler", "tpe")
    if sampler not in ("tpe", "random", "grid"):
        raise SpaceError(path, "sampler", sampler, "must be tpe, random or grid")
    if sampler == "grid":  # every combination of the categorical choices once (Ray Tune grid search)
        for p in params.values():
            if p.type != "categorical":
                raise SpaceError(path, f"search.{p.name}.type", p.type, "the grid sampler takes categorical parameters only")
        size = math.prod(len(p.choices) for p in params.values())
        if samples != size:
            raise SpaceError(path, "budget.samples", samples, f"must equal the grid's size ({size}) with sampler: grid")
    max_failures = _num(path, "max_failures", doc.get("max_failures", 0), integer=True, nonneg=True)
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise SpaceError(path, "description", description, "must be a string")

    spec = StudySpec(
        path=str(path), name=name, method=method, data=data, fixed=fixed, params=list(params.values()),
        samples=samples, concurrency=concurrency, scheduler=scheduler, resources=resources,
        metric=metric, mode=mode, seed=seed, sampler=sampler, max_failures=max_failures,
        description=description, document=doc,
    )
    _check_method(spec, path)
    if scheduler["type"] == "asha" and scheduler["grace_period"] > spec.epochs:
        raise SpaceError(path, "scheduler.grace_period", scheduler["grace_period"],
                         f"exceeds train.epochs ({spec.epochs})")
    # Last, as it may read every file of a dataset (cached): the data and the backbone weights.
    try:
        spec.data_summary = check_data_spec(data)
    except ConfigError as e:
        raise SpaceError(path, e.key, e.value, e.message, getattr(e, "details", ())) from None
    model = merge(METHODS[method].defaults, spec.fixed).get("model", {})
    try:
        check_backbone_weights(model)
    except BackboneError as e:
        raise SpaceError(path, f"fixed.{e.key}", e.value, e.message) from None
    spec.fixed = merge(spec.fixed, {"train": {"seed": seed}}) if "seed" not in fixed.get("train", {}) else spec.fixed
    return spec


def _check_method(spec: StudySpec, path) -> None:
    """The method's own check on the fixed settings, and on each searched parameter at each of
    its choices (or both bounds) with the others fixed."""
    method = METHODS[spec.method]
    base = merge(method.defaults, spec.fixed)
    candidates = [({}, None)]
    for p in spec.params:
        for v in (p.choices if p.type == "categorical" else (p.low, p.high)):
            candidates.append(({p.name: v}, p))
    for override, param in candidates:
        try:
            method.check(merge(base, override))
        except ConfigError as e:
            key = f"search.{param.name}" if param is not None else f"fixed.{e.key}"
            raise SpaceError(path, key, e.value, e.message) from None


def load_spec(path: str | Path, overrides: list[str] | None = None, num_samples: int | None = None) -> StudySpec:
    """Read, override and validate a search-space file.

    Example:
        >>> spec = load_spec("search_spaces/smoke.yaml", ["budget.samples=3"])
        >>> spec.samples
        3
    """
    doc = read_document(path)
    if "fixed" in doc and isinstance(doc["fixed"], dict):
        doc["fixed"] = unflatten(flatten(doc["fixed"]))
    for assignment in overrides or []:
        apply_override(doc, assignment, path)
    if num_samples is not None:
        if num_samples < 1:
            raise SpaceError(path, "--num-samples", num_samples, "must be positive")
        if doc.get("budget") is None:
            doc["budget"] = {}
        if not isinstance(doc["budget"], dict):
            raise SpaceError(path, "budget", doc["budget"], "must be a mapping")
        doc["budget"]["samples"] = num_samples
    return parse_document(doc, path)
