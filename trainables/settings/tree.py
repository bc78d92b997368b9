"""Settings as trees: nested mappings and dotted keys, merging, and the error that names a key.

A trial's configuration is a nested mapping (``{"train": {"lr": ...}}``); search spaces and
``--set`` name values by dotted keys (``train.lr``). The typed models that say which keys and
values are allowed live in ``settings/sections.py``.
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
