"""`na64daq analyze` for any run file: what each kind allows, and an error for no events.

- raw, built: everything; the events are built (raw) and run through the trigger with the
  recorded (or a given) configuration, then the monitors (trigger.analyze.analyze_run);
- recorded: what accepted events allow (daq.analysis.recorded);
- features: the monitor figures and the trigger counts as recorded;
- truth, empty: nothing; NothingToAnalyze says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daq.analysis.errors import NothingToAnalyze
from daq.analysis.recorded import Sample, analyze_recorded
from daq.analysis.source import FileKind, probe
from daq.runfile import RunFileReader
from daq.wire import Kind
from monitors.config import MonitorConfig
from trigger.config import TriggerConfig

_RAW_DERIVED = ["events built from the board streams (raw files)",
                "features and trigger decisions of every event",
                "monitor figures over every event"]


def analyze_file(path: str | Path, trigger_config: TriggerConfig | None = None,
                 monitor_config: MonitorConfig | None = None, *,
                 sample: Sample = "unbiased") -> dict[str, Any]:
    """The analysis of one run file as a JSON-able dict with `kind`, `derived` and
    `not_derived`; NothingToAnalyze when it holds no events (the reason names what it
    holds instead)."""
    info = probe(path)
    name = str(path)
    if info.kind in (FileKind.RAW, FileKind.BUILT):
        from trigger.analyze import analyze_run

        report = analyze_run(path, trigger_config, monitor_config)
        if not report["events"]:
            why = (f"the trigger refused every slice ({report['refused']})" if report["refused"]
                   else f"its {len(info.spills)} spill(s) hold no event")
            raise NothingToAnalyze(name, info.kind, why)
        return {"kind": str(info.kind), "derived": _RAW_DERIVED, "not_derived": [],
                **report}
    if info.kind is FileKind.RECORDED:
        report = analyze_recorded(path, trigger_config, monitor_config, sample=sample)
        if not report["accepted"]:
            raise NothingToAnalyze(
                name, info.kind, f"the trigger accepted no event in its {len(info.spills)} "
                f"spill(s) ({report['events']} events built): a recorded file holds only "
                "accepted events")
        return report
    if info.kind is FileKind.FEATURES:
        return _features(path, monitor_config)
    if info.kind is FileKind.TRUTH:
        raise NothingToAnalyze(name, info.kind, "it is the simulator's truth (board TRUTH), "
                               "not detector data: analyze the raw file simulated with it "
                               "(open_run and export read truth files)")
    raise NothingToAnalyze(name, info.kind, _markers_only(path))


def _markers_only(path: str | Path) -> str:
    kinds: dict[str, int] = {}
    r = RunFileReader(path)
    for m in r:
        kinds[str(m.kind)] = kinds.get(str(m.kind), 0) + 1
    held = ", ".join(f"{v} {k}" for k, v in kinds.items()) or "no record"
    torn = f"; {r.report.reason}" if r.report.torn else ""
    return f"it holds markers only ({held}{torn}): no spill carried an event"


def _features(path: str | Path, monitor_config: MonitorConfig | None) -> dict[str, Any]:
    from monitors.analysis import analyze as monitor_analysis
    from trigger.analyze import summarize

    msgs = list(RunFileReader(path))
    report = monitor_analysis(msgs, monitor_config).report()
    trig = {s.spill: s.as_dict() for s in summarize(msgs)}
    for s in report["spills"]:
        for key, value in trig.get(s["spill"], {}).items():
            s.setdefault(key, value)
    events = sum(m.count for m in msgs if m.kind is Kind.FEATURES)
    if not events:
        raise NothingToAnalyze(str(path), "features", "its features messages hold no event")
    return {"kind": "features", "derived": ["monitor figures and trigger counts as recorded"],
            "not_derived": ["board data (a features stream has none)"], "file": str(path),
            **report, "events": events,
            "accepted": sum(t["accepted"] for t in trig.values()), "refused": {}}
