"""What a dashboard is, independent of Grafana: rows of panels, each a few PromQL queries.

A panel is one call of `ts`, `stat`, `heat` or `state` in monitors/dashboards/catalog.py.
Queries may use the dashboard variable `$source` (live or replay) and Grafana's
`$__rate_interval`; `concrete()` replaces them for a test against a plain Prometheus.

Thresholds are explicit wherever Grafana would colour a value: a stat panel cannot be
made without them (Grafana's default, green then red from 80, turns a run number red once
it passes 80). `NEUTRAL` is one step in the text colour, for figures where no value is
good or bad; `rising`/`falling` give green, amber and red bands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["timeseries", "stat", "heatmap", "state-timeline"]
#: Grafana threshold steps: (lower bound, colour), the first bound None (-infinity)
Steps = tuple[tuple[float | None, str], ...]
#: a value mapping: raw value -> (text, colour)
ValueMaps = tuple[tuple[str, str, str], ...]

AMBER = "orange"  # Grafana's named colour for the warning band
#: no value is good or bad (run number, counts): the text colour, never green or red
NEUTRAL: Steps = ((None, "text"),)


def alarm_below(low: float) -> Steps:
    """An alarm band's lower edge as one line: red below, green from it."""
    return ((None, "red"), (low, "green"))


def alarm_above(high: float) -> Steps:
    """An alarm band's upper edge as one line: green below, red from it."""
    return ((None, "green"), (high, "red"))


def rising(amber: float, red: float) -> Steps:
    """Green below `amber`, amber from it, red from `red` (more is worse)."""
    if not amber <= red:
        raise ValueError(f"amber {amber} must not be above red {red}")
    return ((None, "green"), (amber, AMBER), (red, "red"))


def falling(red_below: float, amber_below: float) -> Steps:
    """Red below `red_below`, amber below `amber_below`, green from it (less is worse)."""
    if not red_below <= amber_below:
        raise ValueError(f"red_below {red_below} must not be above amber_below {amber_below}")
    return ((None, "red"), (red_below, AMBER), (amber_below, "green"))

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
    thresholds: Steps | None = None  # None: Grafana shows none (time series, heatmaps)
    mappings: ValueMaps = ()


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
       hi: float | None = None, width: int = 8, description: str = "",
       thresholds: Steps | None = None) -> Panel:
    """A time series panel; `thresholds` are drawn as dashed lines (e.g. an alarm band)."""
    return Panel(title, "timeseries", _q(queries), unit, lo, hi, width, description,
                 thresholds)


def stat(title: str, *queries: str | Query, thresholds: Steps, unit: str = "short",
         width: int = 4, description: str = "", mappings: ValueMaps = ()) -> Panel:
    """A single-value panel (last value), coloured by its explicit `thresholds` (or by
    `mappings`, (value, text, colour), for states such as beam on/off)."""
    return Panel(title, "stat", _q(queries), unit, None, None, width, description,
                 thresholds, mappings)


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
