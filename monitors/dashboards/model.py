"""What a dashboard is, independent of Grafana: rows of panels, each a few PromQL queries.

A panel is one call of `ts`, `stat`, `heat` or `state` in monitors/dashboards/catalog.py.
Queries may use the dashboard variable `$source` (live or replay) and Grafana's
`$__rate_interval`; `concrete()` replaces them for a test against a plain Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["timeseries", "stat", "heatmap", "state-timeline"]

#: values the integration test and `concrete()` give Grafana's variables
TEST_VARIABLES = {"$__rate_interval": "1m", "$source": "live"}


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and the legend of the series it returns."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel: title, kind, queries, unit (Grafana unit id), and an optional fixed range."""

    title: str
    kind: Kind
    queries: tuple[Query, ...]
    unit: str = "short"
    lo: float | None = None
    hi: float | None = None
    width: int = 8
    description: str = ""


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Annotation:
    """A Prometheus-query annotation: a marker wherever `expr` returns a sample."""

    name: str
    expr: str
    color: str
    text: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = ("na64",)
    annotations: tuple[Annotation, ...] = field(default_factory=tuple)

    def panels(self) -> list[Panel]:
        return [p for r in self.rows for p in r.panels]


def _q(queries: tuple[str | Query, ...]) -> tuple[Query, ...]:
    return tuple(q if isinstance(q, Query) else Query(q) for q in queries)


def ts(title: str, *queries: str | Query, unit: str = "short", lo: float | None = None,
       hi: float | None = None, width: int = 8, description: str = "") -> Panel:
    """A time series panel."""
    return Panel(title, "timeseries", _q(queries), unit, lo, hi, width, description)


def stat(title: str, *queries: str | Query, unit: str = "short", width: int = 4,
         description: str = "") -> Panel:
    """A single-value panel (last value)."""
    return Panel(title, "stat", _q(queries), unit, None, None, width, description)


def heat(title: str, expr: str, *, unit: str = "short", width: int = 12,
         description: str = "") -> Panel:
    """A heatmap of a Prometheus histogram's bucket increases (`le` on the y axis)."""
    return Panel(title, "heatmap", (Query(expr, "{{le}}"),), unit, None, None, width,
                 description)


def state(title: str, *queries: str | Query, width: int = 12, description: str = "") -> Panel:
    """A state timeline (0/1 states over time, e.g. alarms)."""
    return Panel(title, "state-timeline", _q(queries), "short", 0, 1, width, description)


def concrete(expr: str, variables: dict[str, str] | None = None) -> str:
    """`expr` with the dashboard variables replaced (default: TEST_VARIABLES)."""
    for k, v in (variables or TEST_VARIABLES).items():
        expr = expr.replace(k, v)
    return expr
