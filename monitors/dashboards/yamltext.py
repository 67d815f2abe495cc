"""A small, deterministic YAML writer for the generated deploy files (no YAML dependency).

Only what the generated files use: mappings, lists, strings, numbers, booleans, None.
Strings are written double-quoted in JSON escaping (valid YAML) unless they are plain words,
so a PromQL expression round-trips exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _RESERVED:
        return s
    return json.dumps(s, ensure_ascii=False)


def _lines(v: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(v, Mapping):
        if not v:
            return [pad + "{}"]
        out: list[str] = []
        for k, x in v.items():
            key = _scalar(str(k))
            if isinstance(x, Mapping | list | tuple) and x:
                out.append(f"{pad}{key}:")
                out += _lines(x, indent + (0 if isinstance(x, list | tuple) else 2))
            else:
                out.append(f"{pad}{key}: {_inline(x)}")
        return out
    if isinstance(v, Sequence) and not isinstance(v, str):
        if not v:
            return [pad + "[]"]
        out = []
        for x in v:
            if isinstance(x, Mapping | list | tuple) and x:
                sub = _lines(x, indent + 2)
                out.append(pad + "- " + sub[0][indent + 2:])
                out += sub[1:]
            else:
                out.append(f"{pad}- {_inline(x)}")
        return out
    return [pad + _scalar(v)]


def _inline(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{}"
    if isinstance(v, list | tuple):
        return "[]"
    return _scalar(v)


def dump(doc: Any, *, header: str = "") -> str:
    """`doc` as YAML text; `header` lines become leading `#` comments."""
    head = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return head + "\n".join(_lines(doc, 0)) + "\n"
