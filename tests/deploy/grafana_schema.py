"""Grafana's published dashboard schema, as the grafana-foundation-sdk package encodes it.

The SDK's classes are generated from Grafana's schemas (the dashboard kind, each panel
plugin's options and field config, each datasource's query). `problems(doc)` holds a
dashboard JSON model against them in two ways:

- round trip: decoded into the SDK's classes and encoded again, every key must survive
  (a key the schema does not know is dropped by the decoder) with the same value;
- types: every decoded attribute matches its declared type (enums and literals by value,
  numbers, strings, lists, nested classes), recursively.

`UNITS` is every unit id Grafana knows (the SDK's `units` module).
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

import pytest

sdk = pytest.importorskip("grafana_foundation_sdk", reason="the test extra installs it")

from grafana_foundation_sdk.cog import variants  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.cog.plugins import register_default_plugins  # noqa: E402
from grafana_foundation_sdk.models import units  # noqa: E402
from grafana_foundation_sdk.models.dashboard import Dashboard  # noqa: E402

register_default_plugins()

UNITS: frozenset[str] = frozenset(
    v for k, v in vars(units).items() if not k.startswith("_") and isinstance(v, str))


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return [f"{path}: an object became {type(b).__name__}"]
        out = []
        for k, v in a.items():
            if k not in b:
                out.append(f"{path}.{k}: not in Grafana's schema")
            else:
                out += _diff(v, b[k], f"{path}.{k}")
        return out
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{path}: the list changed in the round trip"]
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True))
                for p in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} came back as {b!r}"]


def _matches(value: Any, hint: Any, path: str) -> list[str]:
    """`value` (decoded) against the type `hint`; [] when it fits."""
    if hint is Any or hint is object:
        # plugin parts (panel options, custom field config, queries) are typed `object` on
        # the panel and decoded into the plugin's own classes: check those
        mod = type(value).__module__
        return _object(value, path) if mod.startswith("grafana_foundation_sdk.") else []
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        tries = [_matches(value, h, path) for h in args]
        if any(not t for t in tries):
            return []
        # report against the branch of the value's own shape (a list against list[...])
        shaped = [t for h, t in zip(args, tries, strict=True) if _shape(value, h)]
        return (shaped or tries)[0]
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if hint is type(None):
        return [] if value is None else [f"{path}: {value!r} is not null"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [p for i, v in enumerate(value) for p in _matches(v, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        return [p for k, v in value.items() for p in _matches(v, args[1], f"{path}.{k}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            hint(value)
        except ValueError:
            return [f"{path}: {value!r} is not a {hint.__name__} "
                    f"({', '.join(str(m.value) for m in hint)})"]
        return []
    if hint is bool:
        return [] if isinstance(value, bool) else [f"{path}: {value!r} is not a boolean"]
    if hint in (int, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if hint is int:
            ok = ok and float(value).is_integer()
        return [] if ok else [f"{path}: {value!r} is not a {hint.__name__}"]
    if hint is str:
        return [] if isinstance(value, str) else [f"{path}: {value!r} is not a string"]
    if isinstance(hint, type):
        if isinstance(value, dict) and hint in (variants.Dataquery, variants.Panelcfg):
            return []  # a plugin this SDK does not model: nothing more to check
        if not isinstance(value, hint):
            return [f"{path}: {type(value).__name__} is not a {hint.__name__}"]
        return _object(value, path)
    return []


def _shape(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    if origin is type(None):
        return value is None
    return isinstance(origin, type) and isinstance(value, origin)


def _object(obj: Any, path: str) -> list[str]:
    try:
        hints = typing.get_type_hints(type(obj), vars(__import__(type(obj).__module__,
                                                                  fromlist=["_"])))
    except Exception:  # an SDK class whose hints do not resolve: the round trip covers it
        return []
    return [p for name, hint in hints.items() if hasattr(obj, name)
            for p in _matches(getattr(obj, name), hint, f"{path}.{name}")]


def problems(doc: dict[str, Any]) -> list[str]:
    """What in the dashboard JSON model `doc` does not fit Grafana's schema."""
    dash = Dashboard.from_json(doc)
    back = json.loads(json.dumps(dash, cls=JSONEncoder))
    return _diff(doc, back, "") + _object(dash, "")
