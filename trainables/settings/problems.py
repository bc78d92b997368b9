"""From validation errors to the project's messages, and the shape of a settings model.

:func:`first_problem` turns pydantic's error into a :class:`~trainables.settings.tree.ConfigError`
naming the dotted key, the value and what is allowed, which the search-space parser prints with
the file (exit 2). :func:`leaf_keys` and :func:`known_keys` list what a model declares (the
searchable settings, the "did you mean" hints, the editor schema's keys).

A check across settings (a ``model_validator``) names the setting at fault by starting its
message with its key relative to the model: ``raise ValueError("rounds: must be ...")``.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from trainables.settings.tree import ConfigError

_NAMED = re.compile(r"^(?P<key>[a-z_][a-z0-9_.]*): (?P<message>.+)$", re.S)


def _key(loc: tuple) -> str:
    """pydantic's location as a dotted key: union branch tags (``literal['auto']``, ``int``, a
    dataset name under ``data``) and list indices left out."""
    parts: list[str] = []
    for i, p in enumerate(loc):
        if isinstance(p, int) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p)):
            continue
        if i == 1 and loc[0] == "data":  # the discriminated union's tag
            continue
        parts.append(str(p))
    return ".".join(parts)


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown setting"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    msg = msg.replace("Input should be", "must be").replace("input should be", "must be")
    return msg[0].lower() + msg[1:] if msg[:1].isupper() and not msg[1:2].isupper() else msg


def first_problem(exc: ValidationError, model: type[BaseModel] | None = None) -> ConfigError:
    """The first problem of a validation error as a :class:`ConfigError` (dotted key, value,
    what is allowed). Alternatives of one union are joined: "must be 'auto' or greater than or
    equal to 0". An unknown key names the section's known keys.

    Example:
        >>> from trainables.settings.sections import TrainSettings
        >>> try:
        ...     TrainSettings.model_validate({"optimizer": "adamm"})
        ... except ValidationError as e:
        ...     print(first_problem(e))
        optimizer='adamm': must be 'sgd' or 'adam'
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = _key(first["loc"])
    if first["type"] == "union_tag_invalid":  # a discriminated union (the data section): its tag
        ctx = first["ctx"]
        return ConfigError(f"{key}.{ctx['discriminator'].strip(chr(39))}", ctx["tag"],
                           f"unknown; choose one of {ctx['expected_tags']}")
    named = _NAMED.match(_message(first)) if first["type"] == "value_error" else None
    if named:  # a check across settings names the one at fault: "<key>: <message>"
        value = first.get("input")
        for part in named["key"].split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        return ConfigError(f"{key}.{named['key']}".lstrip("."), value, named["message"])
    same = [e for e in errors if _key(e["loc"]) == key]
    alternatives = list(dict.fromkeys(_message(e) for e in same))  # one per member of a union
    message = " or ".join([alternatives[0], *(a.removeprefix("must be ") for a in alternatives[1:])])
    if first["type"] == "extra_forbidden" and model is not None:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        known = known_keys(model, section, tag=first["loc"][1] if section == "data" else None)
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
        message += (f"; did you mean {close[0]!r}?" if close else "") + f" (known: {', '.join(known)})"
    return ConfigError(key, errors[0].get("input"), message)


def section_model(model: type[BaseModel], dotted: str, tag: str | None = None) -> type[BaseModel] | None:
    """The model class of the section at ``dotted`` ("" = ``model`` itself), or None. A union
    of sections (the data section) resolves to the member whose ``name`` is ``tag``."""
    node: Any = model
    for part in [p for p in dotted.split(".") if p]:
        field = node.model_fields.get(part) if isinstance(node, type) and issubclass(node, BaseModel) else None
        if field is None:
            return None
        node = field.annotation
        members = [m for m in get_args(node) if isinstance(m, type) and issubclass(m, BaseModel)]
        if members:
            node = next((m for m in members if "name" in m.model_fields and m.model_fields["name"].default == tag), None)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def known_keys(model: type[BaseModel], dotted: str = "", tag: str | None = None) -> list[str]:
    """The keys of the section at ``dotted``."""
    section = section_model(model, dotted, tag)
    return list(section.model_fields) if section is not None else []


def leaf_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every setting below ``model`` by dotted key -> its FieldInfo (sections recursed into).

    Example:
        >>> from trainables.settings.sections import LossTerm
        >>> sorted(leaf_keys(LossTerm))
        ['enabled', 'weight']
    """
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(leaf_keys(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field
    return out
