"""The JSON Schema of a search-space YAML for one method, from the same typed models the
parser validates with (``study/space.py`` for the top level, the method's settings for
``data``, ``fixed`` and ``search``), so an editor underlines a typo while the file is written.

``python -m study.schema aal > aal.schema.json``, then point the YAML language server at it
(README "Editor schema"): a first line ``# yaml-language-server: $schema=./aal.schema.json``.

Example:
    >>> s = method_schema("seam")
    >>> s["properties"]["method"], "seam.ohem_ratio" in s["properties"]["search"]["properties"]
    ({'const': 'seam'}, True)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

from study.space import Param, StudyDocument
from trainables.methods.registry import METHODS

_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _resolve(node: dict, defs: dict) -> dict:
    """A schema with a top-level ``$ref`` replaced by what it names."""
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _walk(node: dict, defs: dict, prefix: str, sections: dict, leaves: dict) -> None:
    """Every section (an object of settings) and every setting below ``node``, by dotted key."""
    for name, sub in _resolve(node, defs).get("properties", {}).items():
        key = f"{prefix}{name}"
        target = _resolve(sub, defs)
        if target.get("type") == "object" and "properties" in target:
            sections[key] = sub
            _walk(target, defs, key + ".", sections, leaves)
        else:
            leaves[key] = sub


def _param_schema(base: dict, leaf: dict, defs: dict) -> dict:
    """``search.<key>``: the Param schema ``base`` whose choices are values of the setting (the
    bounds stay numbers: the parser checks a range against the setting's bounds)."""
    param = copy.deepcopy(base)
    values = copy.deepcopy(_resolve(leaf, defs))
    values.pop("default", None)
    param["properties"]["choices"] = {"type": "array", "minItems": 1, "items": values,
                                      "description": "categorical: the values to choose from"}
    return param


def method_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a search-space document for method ``name``."""
    settings = METHODS[name].settings.model_json_schema()
    defs = settings.pop("$defs", {})
    sections: dict[str, dict] = {}
    leaves: dict[str, dict] = {}
    _walk(settings, defs, "", sections, leaves)
    data = settings["properties"]["data"]
    fixed_props = {k: v for k, v in {**sections, **leaves}.items() if k != "data" and not k.startswith("data.")}
    doc = StudyDocument.model_json_schema()
    defs.update(doc.pop("$defs", {}))
    props = doc["properties"]
    props["method"] = {"const": name}
    props["data"] = {**data, "description": "The dataset: one of the registered datasets, by name."}
    props["fixed"] = {"type": ["object", "null"], "additionalProperties": False, "properties": fixed_props,
                      "description": f"Settings of {name} shared by every trial: sections or dotted keys."}
    base = {k: v for k, v in Param.model_json_schema().items() if k not in ("$defs", "title")}
    searchable = {k: _param_schema(base, v, defs) for k, v in leaves.items()
                  if not k.startswith("data.") and k != "train.epochs"}
    props["search"] = {"type": ["object", "null"], "additionalProperties": False, "properties": searchable,
                       "description": "Searched settings by dotted key, in suggestion order."}
    return {"$schema": _DRAFT, "title": f"wsss-study search space ({name}: {METHODS[name].label})",
            **doc, "$defs": defs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.schema", description="Print the JSON Schema of a "
                                "search-space YAML for METHOD (for an editor's YAML language server).")
    p.add_argument("method", help=f"one of: {', '.join(METHODS)}")
    args = p.parse_args(argv)
    if args.method not in METHODS:
        print(f"study.schema: method: unknown method (got {args.method!r}); choose one of {', '.join(METHODS)}",
              file=sys.stderr)
        return 2
    json.dump(method_schema(args.method), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
