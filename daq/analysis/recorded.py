"""Re-analysis of a recorded run file: what can be re-derived from accepted events.

A recorded file (the recorder's: `demo`, `up`, replay runs) holds the accepted events of
every built slice, each with the board data the trigger read, its features, `cond` and
`bits`, and the trigger configuration it was decided with; the builder's spill ends say how
many events each spill had and how many were shed. From that this module re-derives:

- the trigger decisions and bits as recorded, per spill and type;
- the features, computed again from the recorded board data with the recorded
  configuration and compared with the recorded ones;
- a re-run of the trigger on the accepted events (the prescales hash the event number, so
  each event is decided as it was online), with the recorded configuration or another one
  (`trigger_config`: which of the recorded events that configuration would keep; the events
  the trigger rejected online are not in the file, so what it would add is unknown);
- the monitor figures over a sample of the accepted events: by default the unbiased one
  (events with the prescaled beam or random bit; the physics and calibration triggers
  select on E_ECAL and would bias the efficiencies and the composition), or every accepted
  event (`sample="accepted"`);
- electrons on target per spill from the prescaled beam trigger, by the live monitor's
  definition (monitors.summary.eot): beam-bit events with every board present x the beam
  prescale / the live-time ratio, the part of the spill in which every board delivered and
  nothing was shed (the builder's spill end counts the complete events), with the Poisson
  score interval of the count;
- the ECAL energy scale per spill from the calibration-trigger events (all of them are
  recorded: the same figure as online, monitors.calibration), and the transitions of the
  `ecal_scale_drift` alarm it causes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from daq.geometry import Calibration, Geometry, load_calibration, load_geometry
from daq.markers import AcceptedMeta, FeaturesMeta, RunStart, SpillEnd
from daq.runfile import RunFileReader
from daq.wire import Kind, Message
from monitors import calibration
from monitors.alarms import Alarms
from monitors.analysis import analyze as monitor_analysis
from monitors.config import MonitorConfig
from monitors.identify import FEATURE_ARRAYS, TIMING_ARRAYS, TRACK_ARRAYS
from monitors.stats import ONE_SIGMA, z_score
from monitors.summary import eot, live_time
from trigger.analyze import decide_at
from trigger.config import BEAM, CALIBRATION, RANDOM, TRIGGER_BITS, TriggerConfig
from trigger.core import build_params, compute_features
from trigger.errors import SliceError
from trigger.processor import SliceProcessor

Sample = Literal["unbiased", "accepted"]
SAMPLES: dict[str, str] = {
    "unbiased": "accepted events with the prescaled beam or random bit (the physics and "
                "calibration triggers select on E_ECAL and would bias the figures)",
    "accepted": "every accepted event (biased by the physics and calibration triggers)",
}
#: features a re-derivation is compared on (ts, missing and the bits are not features)
FEATURES = ("e_ecal", "e_ps", "e_hcal", "e_veto", "e_srd", "mult", "sat", "p", "ntrk")
#: figures of the monitors that describe the beam, not the sample: left out of `monitor`
_BEAM_FIGURES = ("eot", "live_time_ratio", "shed")


def poisson_interval(n: float, confidence: float = ONE_SIGMA) -> tuple[float, float]:
    """Score interval of a Poisson mean from a count n: the means whose standardised
    residual |n - mu| / sqrt(mu) is below z, i.e. n + z^2/2 -+ z sqrt(n + z^2/4)."""
    z = z_score(confidence)
    half = z * float(np.sqrt(n + z * z / 4))
    return max(0.0, n + z * z / 2 - half), n + z * z / 2 + half


@dataclass
class _Spill:
    spill: int
    events: int | None = None
    #: built events with every board present (the builder's spill end; None in files
    #: written before it said, unless no event was incomplete)
    complete: int | None = None
    shed: int = 0
    slices: int | None = None
    messages: int = 0
    accepted: int = 0
    fired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRIGGER_BITS, 0))
    beam_complete: int = 0  # beam-bit events with every board present (the EOT count)
    cfgs: set[str] = field(default_factory=set)
    prescale_beam: int | None = None
    checked: int = 0
    differ: int = 0
    rerun: int = 0
    same: int = 0
    rerun_fired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRIGGER_BITS, 0))
    rerun_kept: int = 0
    not_rerun: dict[str, int] = field(default_factory=dict)
    #: E_ECAL / beam energy of the complete calibration-trigger events (the energy scale)
    calib_hist: np.ndarray = field(default_factory=calibration.empty_hist)

    def ecal_scale(self, cfg: MonitorConfig) -> dict[str, Any] | None:
        """The ECAL energy scale of the recorded calibration events (monitors.calibration)."""
        sc = calibration.peak(self.calib_hist, reference=cfg.calib_reference,
                              min_events=cfg.calib_min_events)
        return sc.model_dump() if sc is not None else None

    def live_time(self) -> float | None:
        """The live monitor's live-time ratio of the spill, None without the builder's
        count of complete events."""
        if self.events is None or self.complete is None:
            return None
        return live_time(self.complete, self.events, self.shed)

    def eot(self, confidence: float) -> dict[str, Any] | None:
        """EOT from the prescaled beam trigger (module docstring); None without a beam
        prescale, without the builder's count of complete events, or with nothing live."""
        live = self.live_time()
        if self.prescale_beam is None or live is None or live == 0:
            return None
        n, scale = self.beam_complete, self.prescale_beam
        lo, hi = poisson_interval(n, confidence)
        return {"value": eot(n * scale, live), "low": eot(lo * scale, live),
                "high": eot(hi * scale, live), "beam_triggers": n,
                "prescale": self.prescale_beam, "live_time_ratio": live}

    def as_dict(self, cfg: MonitorConfig, rerun: bool) -> dict[str, Any]:
        confidence = cfg.confidence
        out: dict[str, Any] = {
            "spill": self.spill, "events": self.events, "shed": self.shed,
            "slices": self.slices, "accepted": self.accepted,
            "accept_rate": self.accepted / self.events if self.events else None,
            "triggers": dict(self.fired), "trigger_cfg": ",".join(sorted(self.cfgs)) or None,
            "eot": self.eot(confidence), "ecal_scale": self.ecal_scale(cfg),
            "features": {"checked": self.checked, "differ": self.differ}}
        if rerun:
            out["rerun"] = {"events": self.rerun, "same_bits": self.same,
                            "differ": self.rerun - self.same, "kept": self.rerun_kept,
                            "triggers": dict(self.rerun_fired),
                            "not_rerun": dict(self.not_rerun)}
        return out


class _Rerun:
    """Features and decisions again from the board data of accepted events."""

    def __init__(self, geometry: Geometry, calibration: Calibration,
                 override: TriggerConfig | None) -> None:
        self.geometry, self.calibration = geometry, calibration
        self.proc = SliceProcessor(geometry, calibration)
        self.override = (build_params(override, geometry, calibration)
                         if override is not None else None)

    def __call__(self, msg: Message, sp: _Spill) -> None:
        boards = any("." in n for n in msg.arrays)
        meta = AcceptedMeta.of(msg)
        if not boards:
            sp.not_rerun["no board data"] = sp.not_rerun.get("no board data", 0) + msg.count
            return
        if meta.calib != self.calibration.hash:
            why = f"calibration {meta.calib!r} is not the installed one"
            sp.not_rerun[why] = sp.not_rerun.get(why, 0) + msg.count
            return
        try:
            recorded = self.proc.params(meta.trigger_config, meta.cfg)
            mode = str(meta.mode)
            f = compute_features(msg.arrays, msg.count, mode, recorded)
            self._compare(msg, f.arrays(), sp)
            p = self.override or recorded
            if p is not recorded and p.feature_key != recorded.feature_key:
                f = compute_features(msg.arrays, msg.count, mode, p)
            _, bits = decide_at(f, p, run=msg.run, spill=msg.spill,
                                events=msg.arrays["event"])
        except SliceError as e:
            sp.not_rerun[e.reason] = sp.not_rerun.get(e.reason, 0) + msg.count
            return
        sp.rerun += msg.count
        sp.same += int(np.count_nonzero(bits == msg.arrays["bits"]))
        sp.rerun_kept += int(np.count_nonzero(bits))
        for name, bit in TRIGGER_BITS.items():
            sp.rerun_fired[name] += int(np.count_nonzero(bits & bit))

    @staticmethod
    def _compare(msg: Message, again: dict[str, np.ndarray], sp: _Spill) -> None:
        bad = np.zeros(msg.count, bool)
        for name in FEATURES:
            a, b = again.get(name), msg.arrays.get(name)
            if a is None or b is None:  # p, ntrk: absent without the spectrometer
                continue
            diff = a != b
            bad |= diff.reshape(msg.count, -1).any(axis=1) if diff.ndim > 1 else diff
        sp.checked += msg.count
        sp.differ += int(np.count_nonzero(bad))


def _sample_features(msg: Message, sample: Sample) -> Message:
    """An ACCEPTED message as the FEATURES message of its events in `sample`."""
    bits = msg.arrays["bits"]
    keep = (bits & (BEAM | RANDOM)) != 0 if sample == "unbiased" else np.ones(msg.count, bool)
    # the neighbour gaps as recorded: among accepted events alone they cannot be found again
    names = ("ts", *FEATURE_ARRAYS, *TRACK_ARRAYS, *TIMING_ARRAYS)
    arrays = {n: msg.arrays[n][keep] for n in names if n in msg.arrays}
    a = AcceptedMeta.of(msg)
    meta = FeaturesMeta(a.slice_index, cfg=a.cfg, mode=a.mode, calib=a.calib)
    return Message(Kind.FEATURES, run=msg.run, spill=msg.spill, seq=msg.seq, src=msg.src,
                   board="ALL", first=msg.first, count=int(np.count_nonzero(keep)),
                   arrays=arrays, meta=meta.to_meta(), replay=msg.replay)


def analyze_recorded(path: str | Path, trigger_config: TriggerConfig | None = None,
                     monitor_config: MonitorConfig | None = None, *,
                     sample: Sample = "unbiased", geometry: Geometry | None = None,
                     calibration: Calibration | None = None) -> dict[str, Any]:
    """Everything `na64daq analyze` re-derives from a recorded file (module docstring)."""
    mcfg = monitor_config or MonitorConfig()
    geom = geometry or load_geometry()
    cal = calibration or load_calibration(geom)
    rerun = _Rerun(geom, cal, trigger_config)
    spills: dict[int, _Spill] = {}
    reader = RunFileReader(path)
    head: dict[str, Any] = {"run": int(reader.header.get("run", 0) or 0), "replay": False,
                            "mode": None}

    def stream() -> Iterator[Message]:
        for m in reader:
            head["replay"] = bool(head["replay"]) or m.replay
            if m.kind is Kind.RUN_START:
                head["run"], head["mode"] = m.run, RunStart.of(m).mode
            sp = spills.setdefault(m.spill, _Spill(m.spill)) \
                if m.kind not in (Kind.RUN_START, Kind.RUN_STOP) else None
            if sp is not None and m.kind is Kind.ACCEPTED:
                _account(m, sp, mcfg)
                if m.count:
                    rerun(m, sp)
                yield _sample_features(m, sample)
            elif sp is not None and m.kind is Kind.SPILL_END:
                _spill_end(m, sp)
                yield m
            elif m.kind is not Kind.ACCEPTED:
                yield m

    ra = monitor_analysis(stream(), mcfg)
    report = ra.report()
    monitor = {s["spill"]: s for s in report["spills"]}
    rows = [s for _, s in sorted(spills.items()) if s.messages or s.events is not None]
    out_spills = []
    alarms = Alarms(mcfg.alarms, source="replay" if head["replay"] else "live")
    transitions = []
    for s in rows:
        d = s.as_dict(mcfg, rerun=True)
        scale = d["ecal_scale"]
        transitions += [t.payload() for t in alarms.judge(
            "ecal_scale_drift", scale["value"] if scale else None, run=ra.run,
            spill=s.spill)]
        fig = monitor.get(s.spill)
        d["monitor"] = {k: v for k, v in fig.items() if k not in _BEAM_FIGURES} if fig else None
        out_spills.append(d)
    totals = _totals(rows, report["totals"], mcfg)
    return {"file": str(path), "kind": "recorded", "run": head["run"],
            "replay": head["replay"], "mode": head["mode"],
            "derived": _derived(rows, trigger_config),
            "not_derived": _not_derived(rows),
            "monitor_sample": f"{sample}: {SAMPLES[sample]}",
            "trigger_config": (trigger_config.model_dump(mode="json")
                               if trigger_config is not None else None),
            "spills": out_spills, "totals": totals, "alarms": transitions,
            "events": totals["events"], "accepted": totals["accepted"],
            "refused": report["totals"]["refused"]}


def _account(m: Message, sp: _Spill, mcfg: MonitorConfig) -> None:
    sp.messages += 1
    sp.accepted += m.count
    bits = m.arrays.get("bits")
    if bits is not None:
        for name, bit in TRIGGER_BITS.items():
            sp.fired[name] += int(np.count_nonzero(bits & bit))
        beam, calib = (bits & BEAM) != 0, (bits & CALIBRATION) != 0
        missing, e_ecal = m.arrays.get("missing"), m.arrays.get("e_ecal")
        if missing is not None:
            beam &= missing == 0
            calib &= missing == 0
        sp.beam_complete += int(np.count_nonzero(beam))
        if e_ecal is not None:
            calibration.fill(sp.calib_hist, e_ecal[calib], mcfg.beam_energy_gev)
    meta = AcceptedMeta.of(m)
    if meta.cfg is not None:
        sp.cfgs.add(meta.cfg)
    tc = meta.trigger_config
    if tc is not None and "beam" in tc.get("enabled", ()):
        sp.prescale_beam = int(tc.get("prescale_beam", 1))


def _spill_end(m: Message, sp: _Spill) -> None:
    end = SpillEnd.of(m)
    sp.events = end.events
    sp.complete = (end.complete if end.complete is not None
                   else None if any((end.incomplete or {}).values()) else end.events)
    if end.shed is not None:
        sp.shed = end.shed
    if end.slices is not None:
        sp.slices = end.slices


def _totals(rows: list[_Spill], monitor: dict[str, Any], cfg: MonitorConfig
            ) -> dict[str, Any]:
    t = _Spill(-1)
    t.events = sum(s.events or 0 for s in rows)
    for s in rows:
        t.shed += s.shed
        t.accepted += s.accepted
        t.checked += s.checked
        t.differ += s.differ
        t.rerun += s.rerun
        t.same += s.same
        t.rerun_kept += s.rerun_kept
        for k in TRIGGER_BITS:
            t.fired[k] += s.fired[k]
            t.rerun_fired[k] += s.rerun_fired[k]
        for k, v in s.not_rerun.items():
            t.not_rerun[k] = t.not_rerun.get(k, 0) + v
        t.cfgs |= s.cfgs
        t.calib_hist += s.calib_hist
    d = t.as_dict(cfg, rerun=True)
    del d["spill"], d["slices"]
    eots = [s.eot(cfg.confidence) for s in rows]
    d["eot"] = (None if not eots or any(e is None for e in eots) else
                {"value": sum(e["value"] for e in eots if e),
                 "beam_triggers": sum(e["beam_triggers"] for e in eots if e)})
    d["spills"] = len(rows)
    d["monitor"] = {k: v for k, v in monitor.items() if k not in _BEAM_FIGURES}
    return d


def _derived(rows: list[_Spill], override: TriggerConfig | None) -> list[str]:
    out = ["trigger decisions and bits as recorded (per spill and type)",
           "electrons on target from the prescaled beam trigger"]
    checked = sum(s.checked for s in rows)
    if checked:
        differ = sum(s.differ for s in rows)
        out.append(f"features of {checked} events from their recorded board data "
                   f"({differ} differ from the recorded ones)")
    rerun = sum(s.rerun for s in rows)
    if rerun:
        same = sum(s.same for s in rows)
        what = ("the recorded configuration" if override is None
                else f"configuration {override.content_hash()}")
        out.append(f"the trigger re-run on {rerun} accepted events with {what} "
                   f"({same} with the same bits)")
    out.append("monitor figures over the sample named in monitor_sample")
    if any(s.calib_hist.any() for s in rows):
        out.append("the ECAL energy scale per spill from the recorded calibration-trigger "
                   "events, and its alarm")
    return out


def _not_derived(rows: list[_Spill]) -> list[str]:
    out = ["figures of the events the trigger rejected (they are not in the file)"]
    reasons: dict[str, int] = {}
    for s in rows:
        for k, v in s.not_rerun.items():
            reasons[k] = reasons.get(k, 0) + v
    out += [f"features and trigger re-run of {v} events: {k}" for k, v in reasons.items()]
    uncounted = [s.spill for s in rows if s.events is not None and s.complete is None]
    if uncounted:
        out.append(f"EOT of spill(s) {', '.join(map(str, uncounted))}: events were incomplete "
                   "and the builder's spill end does not count the complete ones (a file "
                   "written before it did), so the live time is unknown")
    return out
