"""Alarm bands -> raised / cleared transitions (pure)."""

from __future__ import annotations

import numpy as np
from monitor_synth import spill_messages

from monitors.aggregate import RunAnalysis
from monitors.alarms import ALARMS, Alarms, AlarmState
from monitors.config import AlarmConfig, Band, MonitorConfig
from monitors.summary import SpillSummary


def _spill(seed: int, spill: int = 1, **kw: float) -> SpillSummary:
    msgs, _ = spill_messages(np.random.default_rng(seed), spill=spill, slices=2,
                             slice_events=1000, **kw)
    ra = RunAnalysis(MonitorConfig())
    for m in msgs:
        ra.feed(m)
    return ra.summaries[0]


def test_efficiency_alarm_raises_once_and_clears() -> None:
    al = Alarms(AlarmConfig(veto_efficiency=Band(low=0.9)))
    bad = _spill(1, lam_veto=0.3)  # efficiency exp(-0.3) = 0.74
    [t] = al.on_spill(bad)
    assert (t.name, t.state, t.spill) == ("veto_efficiency_low", AlarmState.RAISED, 1)
    assert t.value is not None and t.value < 0.8
    assert t.payload()["band"] == {"low": 0.9, "high": None}
    assert al.on_spill(bad) == []  # still raised: no new transition
    [t2] = al.on_spill(_spill(2, spill=2))
    assert (t2.name, t2.state) == ("veto_efficiency_low", AlarmState.CLEARED)


def test_pileup_hadron_and_incomplete_alarms() -> None:
    al = Alarms(AlarmConfig())
    s = _spill(3, hadron=0.2, lam_beam=0.5)
    names = {t.name for t in al.on_spill(s) if t.state is AlarmState.RAISED}
    assert names == {"pileup_high", "hadron_fraction_high"}


def test_small_sample_is_not_judged() -> None:
    al = Alarms(AlarmConfig(min_sample=10**6))
    assert al.on_spill(_spill(4, lam_veto=0.5, lam_beam=1.0)) == []


def test_no_spill_timer_and_clear_all() -> None:
    al = Alarms(AlarmConfig(no_spill_s=30))
    assert al.on_clock(10.0) == []
    [t] = al.on_clock(31.0, run=5)
    assert (t.name, t.state, t.run) == ("no_spill", AlarmState.RAISED, 5)
    [c] = al.on_spill(_spill(5), elapsed_s=40.0)
    assert (c.name, c.state) == ("no_spill", AlarmState.CLEARED)
    al.on_clock(99.0)
    cleared = al.clear_all()
    assert [t.name for t in cleared] == ["no_spill"] and not any(al.raised.values())
    assert set(al.raised) == set(ALARMS)
