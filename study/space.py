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

import difflib
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml

from pydantic import Field, ValidationError, model_validator

from trainables.data.registry import PATH_KEYS, check_data_spec
from trainables.methods.registry import METHODS
from trainables.nets.backbones import BackboneError, check_backbone_weights
from trainables.settings.problems import first_problem, leaf_keys
from trainables.settings.sections import Count, NonNegative, Positive, PositiveInt, Section
from trainables.settings.tree import ConfigError, flatten, merge, unflatten


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
    default: Any = None  # the defaults trial's value; None: the method's default

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the searched domain.

        Example:
            >>> p = ParamSpec("train.lr", "loguniform", 1e-3, 1e-1)
            >>> p.contains(0.01), p.contains(0.5), ParamSpec("c", "categorical", choices=(True,)).contains(False)
            (True, False, False)
        """
        if self.type == "categorical":
            return value in self.choices and type(value) in {type(c) for c in self.choices}
        in_range = self.low <= value <= self.high
        return in_range and (self.type != "int" or (value - self.low) % (self.step or 1) == 0)

    def describe(self) -> str:
        """Human-readable range, e.g. ``loguniform [0.001, 0.1]``."""
        cond = ""
        if self.when:
            cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when)
        if self.default is not None:
            cond += f" (default {self.default})"
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
    tpe_startup: int = 10
    defaults: dict | None = None  # budget.include_defaults: the first trial's searched values
    description: str = ""
    document: dict = field(default_factory=dict)
    data_summary: str = ""

    @property
    def epochs(self) -> int:
        """Training epochs per trial (ASHA's max_t)."""
        return int(METHODS[self.method].resolve(self.trainable_config())["train"]["epochs"])

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


# --- the study document: every top-level section typed once (the editor schema uses them too) ---

class Budget(Section):
    samples: PositiveInt = 8
    """Trials in the study."""
    concurrency: PositiveInt = 1
    """Trials at once."""
    include_defaults: bool = False
    """The first trial is the method's default configuration (the fixed settings, every searched
    parameter at its default), so the report can state what the search gained over it."""


class Scheduler(Section):
    type: Literal["asha", "none"] = "asha"
    """asha: stop bad trials early (Ray Tune's ASHA, max_t = train.epochs)."""
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1.0)] = 2.0


class Resources(Section):
    cpu: Positive = 1.0
    """CPUs per trial."""
    gpu: NonNegative = 0.0
    """GPUs per trial: a fraction shares one GPU; above 1, a whole number."""

    @model_validator(mode="after")
    def _whole_gpus(self) -> "Resources":
        if self.gpu > 1 and not float(self.gpu).is_integer():
            raise ValueError("gpu: above 1 must be a whole number of GPUs")
        return self


class Param(Section):
    """One searched setting. ``when`` maps parameters searched earlier to the values that enable
    this one (a conditional parameter)."""

    type: Literal["uniform", "loguniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: PositiveInt | None = None
    """int parameters only."""
    choices: Annotated[list[Any], Field(min_length=1)] | None = None
    """categorical parameters only."""
    when: dict[str, Any] | None = None
    default: Any = None
    """The value of the defaults trial (``budget.include_defaults``) where the study's default
    differs from the method's (e.g. a learning rate for the optimiser fixed here)."""


class StudyDocument(Section):
    """The top level of a search-space YAML (``fixed``, ``data`` and ``search`` are checked
    against the method's settings)."""

    name: Annotated[str, Field(pattern=NAME_RE.pattern)]
    """Study name: MLflow experiment and default output folder (letters, digits, '_', '-', '.')."""
    description: str = ""
    method: str = "aal"
    data: dict[str, Any] = {"name": "synthetic"}
    fixed: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    budget: Budget = Budget()
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    metric: Annotated[str, Field(pattern=r"^val/(miou|cam_miou|iou/.+)$")] = "val/miou"
    """val/miou, val/cam_miou or val/iou/<class>."""
    mode: Literal["max", "min"] = "max"
    seed: Count = 0
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """grid: every combination of the categorical choices once (budget.samples must equal it)."""
    tpe_startup: PositiveInt = 10
    """TPE's random trials before it models the results (Optuna's n_startup_trials): a study of
    no more trials than this is random search (with the same seed, the very same trials)."""
    max_failures: Count = 0


TOP_LEVEL = tuple(StudyDocument.model_fields)
PARAM_TYPES = ("uniform", "loguniform", "int", "categorical")


def _validated(path, model, value: Any, prefix: str = ""):
    """``model`` validated from ``value``, or SpaceError naming ``prefix`` + pydantic's key."""
    try:
        return model.model_validate(value)
    except ValidationError as e:
        err = first_problem(e, model)
        raise SpaceError(path, f"{prefix}{err.key}".rstrip("."), err.value, err.message) from None


def _setting_error(path, err: ConfigError, where: str = "fixed.") -> SpaceError:
    """A settings problem under ``fixed`` (or ``data``, which is its own top-level key)."""
    key = err.key if err.key.startswith("data.") or err.key == "data" else f"{where}{err.key}"
    return SpaceError(path, key, err.value, err.message)


def _check_settings(path, method, config: dict, where: str = "fixed.") -> dict:
    """The method's settings validated from ``config``: the full settings dict."""
    try:
        return method.resolve(config)
    except ValidationError as e:
        raise _setting_error(path, first_problem(e, method.settings), where) from None


def _numeric(annotation: Any) -> str | None:
    """"int" or "float" for a plain numeric setting, None for anything else (bool, str, a
    closed set of values, a union such as 'auto' or a count)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return {int: "int", float: "float"}.get(annotation)


def _parse_when(path, key: str, raw: dict | None, earlier: dict[str, ParamSpec]) -> tuple:
    when: list[tuple[str, tuple]] = []
    for ref, vals in (raw or {}).items():
        if ref not in earlier:
            raise SpaceError(path, f"{key}.when.{ref}", vals, "must name a parameter searched earlier in the file")
        vals = tuple(vals) if isinstance(vals, list) else (vals,)
        ref_spec = earlier[ref]
        bad = [v for v in vals if ref_spec.type == "categorical" and v not in ref_spec.choices]
        if bad:
            raise SpaceError(path, f"{key}.when.{ref}", bad[0], f"is not one of {ref}'s choices {list(ref_spec.choices)}")
        when.append((ref, vals))
    return tuple(when)


def _parse_param(path, name: str, raw: Any, kind_of: str | None, earlier: dict[str, ParamSpec]) -> ParamSpec:
    """One ``search`` entry's form; its values are checked against the settings afterwards."""
    key = f"search.{name}"
    if not isinstance(raw, dict):
        raise SpaceError(path, key, raw, "must be a mapping (type, low/high or choices, when)")
    body = _validated(path, Param, raw, f"{key}.")
    when = _parse_when(path, key, body.when, earlier)
    if body.type == "categorical":
        if body.choices is None:
            raise SpaceError(path, f"{key}.choices", _MISSING, "must be a non-empty list")
        for extra in ("low", "high", "step"):
            if getattr(body, extra) is not None:
                raise SpaceError(path, f"{key}.{extra}", getattr(body, extra), "categorical parameters take 'choices' only")
        return ParamSpec(name, "categorical", choices=tuple(body.choices), when=when, default=body.default)
    if body.choices is not None:
        raise SpaceError(path, f"{key}.choices", body.choices, f"{body.type} parameters take low/high, not choices")
    if kind_of is None:
        raise SpaceError(path, f"{key}.type", body.type, f"{name} is not a number setting; use categorical")
    if kind_of == "int" and body.type != "int":
        raise SpaceError(path, f"{key}.type", body.type, f"{name} is an integer setting; use type int")
    for bound in ("low", "high"):
        if getattr(body, bound) is None:
            raise SpaceError(path, f"{key}.{bound}", _MISSING, "is required")
    low, high = body.low, body.high
    if body.type == "int":
        for bound, v in (("low", low), ("high", high)):
            if not float(v).is_integer():
                raise SpaceError(path, f"{key}.{bound}", v, "must be an integer")
        low, high = int(low), int(high)
    if not low < high:
        raise SpaceError(path, f"{key}.high", high, f"must be greater than low ({low})")
    if body.type == "loguniform" and low <= 0:
        raise SpaceError(path, f"{key}.low", low, "must be positive for loguniform")
    if body.step is not None and body.type != "int":
        raise SpaceError(path, f"{key}.step", body.step, "only int parameters take a step")
    default = int(body.default) if body.type == "int" and isinstance(body.default, float) else body.default
    return ParamSpec(name, body.type, low=low, high=high, step=body.step, when=when, default=default)


def _parse_params(path, method, search: dict | None, fixed: dict) -> list[ParamSpec]:
    leaves = leaf_keys(method.settings)
    fixed_keys = flatten(fixed)
    params: dict[str, ParamSpec] = {}
    for pname, raw in (search or {}).items():
        pname = str(pname)
        if pname not in leaves or pname.startswith("data."):
            close = difflib.get_close_matches(pname, [k for k in leaves if not k.startswith("data.")], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpaceError(path, f"search.{pname}", raw, f"unknown setting{hint}")
        if pname == "train.epochs":
            raise SpaceError(path, f"search.{pname}", raw, "cannot be searched: it is ASHA's max_t; set it under fixed")
        if pname in fixed_keys:
            raise SpaceError(path, f"search.{pname}", raw, "is also set under 'fixed'; keep one")
        params[pname] = _parse_param(path, pname, raw, _numeric(leaves[pname].annotation), params)
    return list(params.values())


def _check_searched_values(path, method, base: dict, params: list[ParamSpec]) -> None:
    """Every choice, and both ends of every range, must be a value the setting allows (with the
    other settings fixed): the method's settings validate each one."""
    for p in params:
        values = [("choices", v) for v in p.choices] if p.type == "categorical" else [("low", p.low), ("high", p.high)]
        for where, v in values + ([("default", p.default)] if p.default is not None else []):
            try:
                method.resolve(merge(base, {p.name: v}))
            except ValidationError as e:
                err = first_problem(e, method.settings)
                raise SpaceError(path, f"search.{p.name}.{where}", v, err.message
                                 + ("" if err.key == p.name else f" ({err.key})")) from None


def _default_point(path, settings: dict, params: list[ParamSpec]) -> dict:
    """The searched parameters at their defaults: the parameter's ``default`` if given, else the
    method's (``settings``: the defaults with the fixed settings over them); conditional ones
    only where their condition holds. A default outside its searched domain is refused: the
    searcher could not propose it."""
    values, point = flatten(settings), {}
    for p in params:
        if any(ref not in point or point[ref] not in allowed for ref, allowed in p.when):
            continue
        value = values[p.name] if p.default is None else p.default
        if not p.contains(value):
            key = f"search.{p.name}" + (".default" if p.default is not None else "")
            raise SpaceError(path, key, value, f"budget.include_defaults: the default lies outside the searched "
                             f"domain ({p.describe()}); widen it, or give the parameter a 'default:' inside it")
        point[p.name] = value
    return point


def _absolute_paths(data: dict, fixed: dict) -> None:
    """Trials run in their own working directories: file settings become absolute paths."""
    for key in PATH_KEYS:
        if isinstance(data.get(key), str) and data[key]:
            data[key] = str(Path(data[key]).expanduser().absolute())
    weights = fixed.get("model", {}).get("weights") if isinstance(fixed.get("model"), dict) else None
    if isinstance(weights, str) and weights.lower() not in ("", "none", "packaged"):
        fixed["model"]["weights"] = str(Path(weights).expanduser().absolute())


def _check_grid(path, doc: StudyDocument, params: list[ParamSpec]) -> None:
    """sampler: grid runs every combination of the categorical choices once (Ray Tune grid search)."""
    for p in params:
        if p.type != "categorical":
            raise SpaceError(path, f"search.{p.name}.type", p.type, "the grid sampler takes categorical parameters only")
    size = math.prod(len(p.choices) for p in params)
    if doc.budget.samples != size:
        raise SpaceError(path, "budget.samples", doc.budget.samples, f"must equal the grid's size ({size}) with sampler: grid")


def parse_document(raw: dict, path: str | Path) -> StudySpec:
    """Validate a raw document (after overrides) into a :class:`StudySpec`."""
    doc = _validated(path, StudyDocument, raw)
    if doc.method not in METHODS:
        raise SpaceError(path, "method", doc.method, f"unknown method; choose one of {', '.join(METHODS)}")
    method = METHODS[doc.method]
    data = {"name": "synthetic", **(doc.data or {})}
    fixed = unflatten(flatten(doc.fixed or {}))
    if "data" in fixed:
        raise SpaceError(path, "fixed.data", fixed["data"], "set data under the top-level 'data' key")
    _absolute_paths(data, fixed)
    base = merge(fixed, {"data": data})
    settings = _check_settings(path, method, base)
    params = _parse_params(path, method, doc.search, fixed)
    _check_searched_values(path, method, base, params)
    if doc.sampler == "grid":
        _check_grid(path, doc, params)
    defaults = _default_point(path, settings, params) if doc.budget.include_defaults else None
    if defaults is not None and doc.sampler == "grid":
        raise SpaceError(path, "budget.include_defaults", True, "the grid runs every combination of its choices; "
                         "add the defaults to the choices instead")
    epochs = settings["train"]["epochs"]
    if doc.scheduler.type == "asha" and doc.scheduler.grace_period > epochs:
        raise SpaceError(path, "scheduler.grace_period", doc.scheduler.grace_period, f"exceeds train.epochs ({epochs})")
    spec = StudySpec(
        path=str(path), name=doc.name, method=doc.method, data=data, fixed=fixed, params=params,
        samples=doc.budget.samples, concurrency=doc.budget.concurrency, scheduler=doc.scheduler.model_dump(),
        resources=doc.resources.model_dump(), metric=doc.metric, mode=doc.mode, seed=doc.seed,
        sampler=doc.sampler, max_failures=doc.max_failures, tpe_startup=doc.tpe_startup, defaults=defaults,
        description=doc.description,
        document=raw)
    # Last, as it may read every file of a dataset (cached): the data and the backbone weights.
    try:
        spec.data_summary = check_data_spec(data)
    except ConfigError as e:
        raise SpaceError(path, e.key, e.value, e.message, getattr(e, "details", ())) from None
    try:
        check_backbone_weights(settings["model"])
    except BackboneError as e:
        raise SpaceError(path, f"fixed.{e.key}", e.value, e.message) from None
    if "seed" not in fixed.get("train", {}):  # the study seed reaches the trials
        spec.fixed = merge(spec.fixed, {"train": {"seed": doc.seed}})
    return spec


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
