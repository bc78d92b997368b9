"""Trial configuration: nested defaults, dotted keys, merging and key checking.

A trial's configuration is a nested mapping (``{"train": {"lr": ...}}``); search spaces and
``--set`` name values by dotted keys (``train.lr``). Every key a YAML file may set is a key of
the method's defaults, so a typo is caught before any trial starts.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration key or value that the trainable cannot use."""

    def __init__(self, key: str, value: object, message: str):
        super().__init__(f"{key}={value!r}: {message}")
        self.key, self.value, self.message = key, value, message


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: leaf}.

    Example:
        >>> flatten({"a": {"b": 1}, "c": [1, 2]})
        {'a.b': 1, 'c': [1, 2]}
    """
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted key: value} -> nested dict (inverse of :func:`flatten`)."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` (nested or dotted keys) into a copy of ``base``."""
    out = copy.deepcopy(dict(base))
    for key, v in flatten(override).items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        if isinstance(v, Mapping) and not v and isinstance(node.get(parts[-1]), dict):
            continue  # an empty section overrides nothing
        node[parts[-1]] = copy.deepcopy(v)
    return out


def check_keys(defaults: Mapping[str, Any], values: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`ConfigError` for the first dotted key of ``values`` that ``defaults`` lacks."""
    known = flatten(defaults)
    prefixes = {k.rsplit(".", i)[0] for k in known for i in range(k.count(".") + 1)}
    for key, v in flatten(values).items():
        if key in known:
            continue
        if key in prefixes:
            raise ConfigError(where + key, v, "is a section, not a value")
        close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(where + key, v, f"unknown setting{hint}")
