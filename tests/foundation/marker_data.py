"""Meta maps for the marker tests: a good value and wrong-typed values of each field type,
payloads with every field or only the required ones, and a hypothesis strategy of valid
meta maps (with keys the payloads do not name, which pass through)."""

from __future__ import annotations

import types
import typing
from typing import Any

from hypothesis import strategies as st

from daq.markers import PAYLOADS, Payload

#: a value of each field type, and values of the wrong type for it
GOOD: dict[object, object] = {
    int: 7, float: 1.5, str: "abc", bool: True, dict[str, Any]: {"a": [1, 2]},
    dict[str, int]: {"S1": 3, "V1": 0}, dict[str, float]: {"E11": 2.5, "E12": 0},
    list[str]: ["ECAL", "HCAL"],
}
BAD: dict[object, list[object]] = {
    int: ["7", -1, 2**63, True, 1.0],
    float: ["1.5", True, [1.0]],
    str: [3, 1.5, ["a"]],
    bool: [1, "true"],
    dict[str, Any]: [[], "map", 3],
    dict[str, int]: [[], {"S1": -1}, {"S1": "3"}, {"S1": True}],
    dict[str, float]: [[], {"E11": "2.5"}, {"E11": False}],
    list[str]: ["ECAL", [1], {"a": "b"}],
}
_VALUES: dict[object, st.SearchStrategy[Any]] = {
    int: st.integers(0, 2**63 - 1), float: st.floats(allow_nan=False), str: st.text(max_size=10),
    bool: st.booleans(),
    dict[str, Any]: st.dictionaries(st.text(max_size=5),
                                    st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
                                    max_size=3),
    dict[str, int]: st.dictionaries(st.text(max_size=5), st.integers(0, 2**63 - 1), max_size=3),
    dict[str, float]: st.dictionaries(st.text(max_size=5), st.floats(allow_nan=False),
                                      max_size=3),
    list[str]: st.lists(st.text(max_size=5), max_size=3),
}
EXTRA = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)


def ann(cls: type[Payload], name: str) -> Any:
    """A field's annotation without its `| None`."""
    a = typing.get_type_hints(cls)[name]
    if isinstance(a, types.UnionType):
        return next(x for x in typing.get_args(a) if x is not type(None))
    return a


def _nested(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, Payload)


def full(cls: type[Payload]) -> Any:
    """A payload with every field set."""
    return cls(**{f.name: full(a) if _nested(a := ann(cls, f.name)) else GOOD[a]
                  for f in cls.FIELDS})


def required(cls: type[Payload]) -> Any:
    """A payload with its required fields only."""
    return cls(**{f.name: GOOD[ann(cls, f.name)] for f in cls.FIELDS if f.required})


@st.composite
def payload_meta(draw: st.DrawFn, cls: type[Payload]) -> dict[str, Any]:
    """A valid meta map of `cls`: its required fields, some optional ones, unknown keys."""
    names = {f.name for f in cls.FIELDS}
    meta = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in names), EXTRA,
                                max_size=2))
    for f in cls.FIELDS:
        if f.required or draw(st.booleans()):
            a = ann(cls, f.name)
            meta[f.name] = draw(payload_meta(a)) if _nested(a) else draw(_VALUES[a])
    return meta


def metas(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return payload_meta(PAYLOADS[kind])
