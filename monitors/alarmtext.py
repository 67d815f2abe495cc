"""Alarm lines for people (logs, terminal views): the value in the figure's unit, its band.

`pileup_high raised: 18.20 % (band: at most 15.00 %), run 3 spill 12`, never a raw float.
"""

from __future__ import annotations

from monitors.alarms import ALARMS
from monitors.config import Band


def value_text(name: str, value: float | None) -> str:
    """The watched figure of alarm `name`: seconds for no_spill, a percentage otherwise."""
    if value is None:
        return "-"
    return f"{value:.0f} s" if name == "no_spill" else f"{100 * value:.2f} %"


def band_text(name: str, band: Band) -> str:
    lo = None if band.low is None else value_text(name, band.low)
    hi = None if band.high is None else value_text(name, band.high)
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}" if hi is not None else "any"


def line(name: str, state: str, value: float | None, band: Band, *, run: int | None = None,
         spill: int | None = None) -> str:
    """One alarm transition or state as a sentence."""
    where = " ".join(x for x in (f"run {run}" if run is not None else "",
                                 f"spill {spill}" if spill is not None else "") if x)
    what = ALARMS[name][1]
    shown = "" if value is None else f": {value_text(name, value)}"
    return (f"{name} {state}{shown} (band: {band_text(name, band)}; {what})"
            + (f", {where}" if where else ""))
