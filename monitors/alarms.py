"""Alarm logic, pure: figures against configured bands -> raised / cleared transitions."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from monitors.config import AlarmConfig, Band
from monitors.summary import SpillSummary


class AlarmState(enum.StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


#: alarm name -> (band field of AlarmConfig, what it watches). MQTT topic na64/alarms/<name>.
ALARMS: dict[str, tuple[str, str]] = {
    "veto_efficiency_low": ("veto_efficiency", "VETO zero-threshold efficiency"),
    "hcal_efficiency_low": ("hcal_efficiency", "HCAL zero-threshold efficiency"),
    "pileup_high": ("pileup", "fraction of events with beam multiplicity > 1"),
    "hadron_fraction_high": ("hadron_fraction", "hadron fraction of the beam"),
    "incomplete_high": ("incomplete_fraction", "fraction of incomplete events"),
    "ecal_scale_drift": ("ecal_scale", "ECAL energy scale (calibration peak / nominal)"),
    "no_spill": ("", "seconds since the last spill closed"),
}


@dataclass(frozen=True)
class Transition:
    """An alarm changing state; `payload()` is the retained MQTT message."""

    name: str
    state: AlarmState
    value: float | None
    band: Band
    run: int | None
    spill: int | None
    source: str

    def payload(self) -> dict[str, Any]:
        return {"alarm": self.name, "state": str(self.state), "value": self.value,
                "band": {"low": self.band.low, "high": self.band.high},
                "what": ALARMS[self.name][1], "run": self.run, "spill": self.spill,
                "source": self.source}


def spill_values(s: SpillSummary, min_sample: int) -> dict[str, float | None]:
    """The watched figure of each spill alarm; None when the sample is too small to judge."""
    def judged(value: float | None, n: int) -> float | None:
        return value if n >= min_sample else None

    had = s.composition_intervals["hadron"]
    return {
        "veto_efficiency_low": judged(s.veto_efficiency.value, s.veto_efficiency.n),
        "hcal_efficiency_low": judged(s.hcal_efficiency.value, s.hcal_efficiency.n),
        "pileup_high": judged(s.pileup_fraction, s.events - s.incomplete_events),
        "hadron_fraction_high": judged(had.value, had.n),
        "incomplete_high": judged(s.incomplete_fraction, s.events),
        # judged when the spill had calib_min_events calibration electrons (else None)
        "ecal_scale_drift": s.ecal_scale.value if s.ecal_scale is not None else None,
    }


class Alarms:
    """Alarm states of one monitor; every method returns the transitions it caused."""

    def __init__(self, cfg: AlarmConfig, *, source: str = "live") -> None:
        self.cfg = cfg
        self.source = source
        self.raised: dict[str, bool] = dict.fromkeys(ALARMS, False)
        #: how often each alarm was raised since this monitor started (a run's end clears
        #: the alarms, not this record of them)
        self.times_raised: dict[str, int] = dict.fromkeys(ALARMS, 0)

    def band(self, name: str) -> Band:
        field = ALARMS[name][0]
        if not field:
            return Band(high=self.cfg.no_spill_s)
        band: Band = getattr(self.cfg, field)
        return band

    def _set(self, name: str, raised: bool, value: float | None, run: int | None,
             spill: int | None) -> list[Transition]:
        if self.raised[name] == raised:
            return []
        self.raised[name] = raised
        self.times_raised[name] += raised
        state = AlarmState.RAISED if raised else AlarmState.CLEARED
        return [Transition(name, state, value, self.band(name), run, spill, self.source)]

    def on_spill(self, s: SpillSummary, *, elapsed_s: float = 0.0) -> list[Transition]:
        """Judge a closed spill; a spill also clears `no_spill`."""
        out = self._set("no_spill", False, elapsed_s, s.run, s.spill)
        for name, value in spill_values(s, self.cfg.min_sample).items():
            out += self.judge(name, value, run=s.run, spill=s.spill)
        return out

    def judge(self, name: str, value: float | None, *, run: int | None,
              spill: int | None) -> list[Transition]:
        """Judge one figure of a spill against its band (None: not judged)."""
        if value is None:
            return []
        return self._set(name, not self.band(name).contains(value), value, run, spill)

    def on_clock(self, since_last_spill_s: float, *, run: int | None = None,
                 spill: int | None = None) -> list[Transition]:
        """Judge the time since the last spill closed (or the run started)."""
        too_long = not self.band("no_spill").contains(since_last_spill_s)
        return self._set("no_spill", too_long, since_last_spill_s, run, spill)

    def clear_all(self, *, run: int | None = None) -> list[Transition]:
        """Clear every raised alarm (run stopped: nothing left to watch)."""
        out: list[Transition] = []
        for name in ALARMS:
            out += self._set(name, False, None, run, None)
        return out


def judge_spills(summaries: Iterable[SpillSummary], cfg: AlarmConfig, *,
                 source: str = "live") -> list[dict[str, Any]]:
    """The spill alarms' transitions over closed spills in order, as the live monitor would
    publish them (what `na64daq analyze` reports: no clock, so no `no_spill`)."""
    alarms = Alarms(cfg, source=source)
    return [t.payload() for s in summaries for t in alarms.on_spill(s)
            if t.name != "no_spill"]
