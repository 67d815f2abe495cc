"""Prometheus series of the monitors, built on a registry passed in (one per service process).

Every series has a `source` label (`live` or `replay`) so a replay never mixes with live
data. Run and spill numbers are values, never labels. Names: METRICS below and
docs/monitors.md (the Grafana dashboards and alert rules are built from that list).
The builder's own counts (sequence gaps, shed events per board) are the builder's
`na64_builder_*` series; the monitor does not re-export them under that prefix.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from daq.geometry import BOARD_NAMES
from daq.inlet import REASONS as INGRESS_REASONS
from monitors.aggregate import MonitorInputError
from monitors.alarms import ALARMS
from monitors.config import MonitorConfig
from monitors.identify import SPECIES_NAMES
from monitors.spectra import Spectra, cumulative_buckets, ecal_bucket_edges
from monitors.summary import TRIGGER_TYPES, SpillSummary

SOURCES: tuple[Literal["live"], Literal["replay"]] = ("live", "replay")

#: every series this module exposes: name -> (type, labels, help). Keep docs/monitors.md in step.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "na64_eot_total": ("counter", ("source",), "Electrons on target, live-time corrected."),
    "na64_run_eot": ("gauge", ("source",),
                     "Electrons on target in the current run so far (0 at its start)."),
    "na64_beam_on": ("gauge", ("source",), "1 while spills arrive: the last one closed less "
                     "than no_spill_s ago (the no_spill alarm's band); else 0."),
    "na64_events_total": ("counter", ("source",), "Events processed by the monitors."),
    "na64_shed_events_total": ("counter", ("source",), "Events the builder shed (dead time)."),
    "na64_spills_total": ("counter", ("source", "closed"),
                          "Spills closed, complete or forced (messages missing)."),
    "na64_trigger_events_total": ("counter", ("source", "type"), "Events per fired trigger."),
    "na64_shadow_trigger_events_total": ("counter", ("source", "type"),
                                         "Events the shadow configuration would fire."),
    "na64_incomplete_events_total": ("counter", ("source", "board"),
                                     "Events with the board missing."),
    "na64_stream_gaps_total": ("counter", ("source", "stream"),
                               "Messages lost on the way to the monitors, per sending stream."),
    "na64_live_time_ratio": ("gauge", ("source",), "Live-time fraction of the last spill."),
    "na64_accepted_ratio": ("gauge", ("source",), "Accepted fraction of the last spill."),
    "na64_pileup_ratio": ("gauge", ("source",), "Events with beam multiplicity > 1."),
    "na64_beam_multiplicity_mean": ("gauge", ("source",), "Mean beam-counter multiplicity."),
    "na64_efficiency_ratio": ("gauge", ("source", "detector", "bound"),
                              "Zero-threshold efficiency (value, 68 % Wilson low, high)."),
    "na64_efficiency_sample_size": ("gauge", ("source", "detector"),
                                    "Identified electrons the efficiency is measured on."),
    "na64_composition_ratio": ("gauge", ("source", "species"),
                               "Beam composition fraction, on the events isolated in time."),
    "na64_composition_sample_size": ("gauge", ("source",),
                                     "Events the composition is measured on: complete and "
                                     "isolated in time (no other beam event within the "
                                     "SRD's reach)."),
    "na64_monitor_ecal_scale": ("gauge", ("source", "bound"),
                                "ECAL energy scale of the last spill: calibration-trigger "
                                "peak / nominal (value, value - error, value + error)."),
    "na64_monitor_ecal_cell_scale": ("gauge", ("source", "cell"),
                                     "Last spill's energy scale of each ECAL cell with a "
                                     "reference (calib_cell_reference): mean energy / "
                                     "reference; NaN when the spill had none."),
    "na64_monitor_ecal_scale_events": ("gauge", ("source",),
                                       "Calibration events the last spill's scale is "
                                       "measured on (inside the peak's window)."),
    "na64_incomplete_ratio": ("gauge", ("source",), "Incomplete fraction of the last spill."),
    "na64_run_number": ("gauge", ("source",), "Run of the last closed spill."),
    "na64_spill_number": ("gauge", ("source",), "Number of the last closed spill."),
    "na64_last_spill_timestamp_seconds": ("gauge", ("source",),
                                          "Unix time the last spill closed."),
    "na64_signal_box_events": ("gauge", ("source",),
                               "Signal-box events of the last spill (absent when blind)."),
    "na64_sideband_c_events": ("gauge", ("source",),
                               "Box candidates in sideband C in the last spill."),
    "na64_ecal_saturated_events": ("gauge", ("source", "region"),
                                   "Events of the last spill the ECAL saturation cut took "
                                   "out of a region (signal: absent when blind; C)."),
    "na64_dimuon_events": ("gauge", ("source",), "Dimuon candidates in the last spill."),
    "na64_dimuons_per_eot": ("gauge", ("source",),
                             "Dimuon candidates per electron on target, last spill."),
    "na64_alarm_active": ("gauge", ("source", "alarm"), "1 while the alarm is raised."),
    "na64_alarms_raised_total": ("counter", ("source", "alarm"),
                                 "Times the alarm was raised (a run's end clears alarms)."),
    "na64_monitor_messages_total": ("counter", ("kind",), "Messages received by the monitor."),
    "na64_monitor_refused_total": ("counter", ("reason",), "Messages refused, by reason."),
    "na64_monitor_open_spills": ("gauge", (), "Spills waiting for messages (queue depth)."),
    "na64_monitor_mqtt_outbox_messages": ("gauge", (),
                                          "Retained MQTT messages waiting for the broker."),
    "na64_monitor_processing_seconds": ("histogram", (),
                                        "Time to process one received message."),
    "na64_ecal_energy_gev": ("histogram", ("source",), "E_ECAL of complete events, GeV."),
    "na64_hcal_energy_gev": ("histogram", ("source",), "E_HCAL of complete events, GeV."),
}

_BUCKET_EVERY = 10  # E_HCAL's Prometheus buckets: every 10th edge of the hist spectrum


class _SpectraCollector(Collector):
    """E_ECAL and E_HCAL as Prometheus histograms, from hist spectra filled in bulk.

    prometheus_client's Histogram observes one value per call; at beam rate the spectra are
    filled with whole arrays (hist), and exposed here as cumulative buckets.
    """

    def __init__(self, beam_energy_gev: float) -> None:
        self.spectra: dict[str, Spectra] = {}
        self.beam_energy_gev = beam_energy_gev

    def collect(self) -> Iterator[Metric]:
        for name, attr in (("na64_ecal_energy_gev", "ecal"), ("na64_hcal_energy_gev", "hcal")):
            fam = HistogramMetricFamily(name, METRICS[name][2], labels=["source"])
            for source, sp in sorted(self.spectra.items()):
                h = getattr(sp, attr)
                # E_ECAL: fine buckets around the trigger threshold and the beam peak
                at = ecal_bucket_edges(h, self.beam_energy_gev) if attr == "ecal" else None
                edges, cum, total = cumulative_buckets(h, _BUCKET_EVERY, at=at)
                buckets = [(floatToGoString(e), float(c)) for e, c in zip(edges, cum,
                                                                          strict=True)]
                buckets.append(("+Inf", float(total)))
                fam.add_metric([source], buckets, getattr(sp, f"{attr}_sum"))
            yield fam


class _BeamCollector(Collector):
    """na64_beam_on, judged at scrape time from when the last spill closed."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.clock = clock
        self.last_spill: dict[str, float] = {}

    def on(self, source: str) -> bool:
        t = self.last_spill.get(source)
        return t is not None and self.clock() - t < self.window_s

    def collect(self) -> Iterator[Metric]:
        fam = GaugeMetricFamily("na64_beam_on", METRICS["na64_beam_on"][2], labels=["source"])
        for source in SOURCES:
            fam.add_metric([source], 1.0 if self.on(source) else 0.0)
        yield fam


#: series computed at scrape time by a collector of their own
_COLLECTED = frozenset({"na64_beam_on"})


class MonitorMetrics:
    """The monitor collectors on `registry`; update them with the on_* methods."""

    def __init__(self, registry: CollectorRegistry, cfg: MonitorConfig, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._m: dict[str, Counter | Gauge | Histogram] = {}
        #: per source: (run, its EOT so far) behind na64_run_eot, and the lifetime total
        self.run_eot: dict[str, tuple[int, float]] = {}
        self.eot_total: dict[str, float] = dict.fromkeys(SOURCES, 0.0)
        #: per source: the last closed spill's spectra, when each recent spill closed
        #: ((run, spill, time), newest last) and when the current run started: the shift
        #: page's per-spill plots and its rates' time base
        self.last_spectra: dict[str, Spectra] = {}
        self.closed_at: dict[str, collections.deque[tuple[int, int, float]]] = {
            s: collections.deque(maxlen=512) for s in SOURCES}
        self.run_started: dict[str, tuple[int, float]] = {}
        self.clock = clock
        self.beam = _BeamCollector(cfg.alarms.no_spill_s, clock)
        registry.register(self.beam)
        for full, (kind, labels, doc) in METRICS.items():
            if (full == "na64_signal_box_events" and cfg.blind) or full in _COLLECTED:
                continue
            if kind == "histogram":
                if full == "na64_monitor_processing_seconds":
                    self._m[full] = Histogram(full, doc, labels, registry=registry, buckets=(
                        1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0))
                continue
            # prometheus_client appends _total itself; give it the base name.
            cls = Counter if kind == "counter" else Gauge
            base = full.removesuffix("_total") if kind == "counter" else full
            self._m[full] = cls(base, doc, labels, registry=registry)
        self._spectra = _SpectraCollector(cfg.beam_energy_gev)
        registry.register(self._spectra)
        for source in SOURCES:  # series exist from the start, at zero
            self.gauge("na64_run_eot").labels(source)
            for name in ("na64_eot_total", "na64_events_total", "na64_shed_events_total"):
                self.counter(name).labels(source)
            for t in TRIGGER_TYPES:
                self.counter("na64_trigger_events_total").labels(source, t)
        for reason in (*MonitorInputError.REASONS, *INGRESS_REASONS):
            self.counter("na64_monitor_refused_total").labels(reason)

    def counter(self, name: str) -> Counter:
        m = self._m[name]
        assert isinstance(m, Counter)
        return m

    def gauge(self, name: str) -> Gauge:
        m = self._m[name]
        assert isinstance(m, Gauge)
        return m

    # --- updates -----------------------------------------------------------------------------

    def on_message(self, kind: str, seconds: float) -> None:
        self.counter("na64_monitor_messages_total").labels(kind).inc()
        h = self._m["na64_monitor_processing_seconds"]
        assert isinstance(h, Histogram)
        h.observe(seconds)

    def on_refused(self, reason: str) -> None:
        self.counter("na64_monitor_refused_total").labels(reason).inc()

    def set_open_spills(self, n: int) -> None:
        self.gauge("na64_monitor_open_spills").set(n)

    def set_outbox(self, n: int) -> None:
        self.gauge("na64_monitor_mqtt_outbox_messages").set(n)

    def set_alarm(self, source: str, name: str, raised: bool) -> None:
        """An alarm's transition (or its initial state: not raised)."""
        self.gauge("na64_alarm_active").labels(source, name).set(1 if raised else 0)
        self.counter("na64_alarms_raised_total").labels(source, name).inc(raised)

    def init_alarms(self, source: str) -> None:
        for name in ALARMS:
            self.set_alarm(source, name, False)

    def on_run_start(self, source: str, run: int) -> None:
        """A run starts: its EOT counts from zero."""
        self.run_eot[source] = (run, 0.0)
        self.run_started[source] = (run, self.clock())
        self.gauge("na64_run_eot").labels(source).set(0.0)

    def intervals(self, source: str, run: int) -> dict[int, float | None]:
        """Seconds between each recent spill's close and the one before it in `run` (the
        first: since the run started, when this monitor saw the start)."""
        out: dict[int, float | None] = {}
        started = self.run_started.get(source)
        prev = started[1] if started is not None and started[0] == run else None
        for r, spill, t in self.closed_at[source]:
            if r != run:
                continue
            out[spill] = (t - prev) if prev is not None and t > prev else None
            prev = t
        return out

    def on_stream_gap(self, source: str, stream: str, lost: int) -> None:
        if lost > 0:
            self.counter("na64_stream_gaps_total").labels(source, stream).inc(lost)

    def on_spill(self, s: SpillSummary, spectra: Spectra | None, now: float) -> None:
        """Account one closed spill."""
        src = s.source
        c, g = self.counter, self.gauge
        c("na64_eot_total").labels(src).inc(s.eot or 0.0)
        run, eot = self.run_eot.get(src, (s.run, 0.0))
        eot = (eot if run == s.run else 0.0) + (s.eot or 0.0)
        self.run_eot[src] = (s.run, eot)
        g("na64_run_eot").labels(src).set(eot)
        self.beam.last_spill[src] = now
        self.eot_total[src] = self.eot_total.get(src, 0.0) + (s.eot or 0.0)
        self.closed_at[src].append((s.run, s.spill, now))
        c("na64_events_total").labels(src).inc(s.events)
        c("na64_shed_events_total").labels(src).inc(s.shed)
        c("na64_spills_total").labels(src, s.closed).inc()
        for t, n in s.triggers.items():
            c("na64_trigger_events_total").labels(src, t).inc(n)
        for t, n in (s.shadow_triggers or {}).items():
            c("na64_shadow_trigger_events_total").labels(src, t).inc(n)
        for b, n in s.incomplete_by_board.items():
            if b in BOARD_NAMES:  # board names come from the wire: keep the label set bounded
                c("na64_incomplete_events_total").labels(src, b).inc(n)
        g("na64_live_time_ratio").labels(src).set(s.live_time_ratio)
        self._maybe(g("na64_accepted_ratio").labels(src), s.accepted_ratio)
        self._maybe(g("na64_pileup_ratio").labels(src), s.pileup_fraction)
        self._maybe(g("na64_beam_multiplicity_mean").labels(src), s.mean_multiplicity)
        self._maybe(g("na64_incomplete_ratio").labels(src), s.incomplete_fraction)
        for det, est in (("veto", s.veto_efficiency), ("hcal", s.hcal_efficiency)):
            g("na64_efficiency_sample_size").labels(src, det).set(est.n)
            self._maybe(g("na64_efficiency_ratio").labels(src, det, "value"), est.value)
            if est.n:
                g("na64_efficiency_ratio").labels(src, det, "low").set(est.low)
                g("na64_efficiency_ratio").labels(src, det, "high").set(est.high)
        g("na64_composition_sample_size").labels(src).set(s.composition_events)
        for sp in SPECIES_NAMES:
            self._maybe(g("na64_composition_ratio").labels(src, sp), s.composition[sp])
        self._scale(src, s)
        g("na64_run_number").labels(src).set(s.run)
        g("na64_spill_number").labels(src).set(s.spill)
        g("na64_last_spill_timestamp_seconds").labels(src).set(now)
        if s.signal_box is not None and "na64_signal_box_events" in self._m:
            g("na64_signal_box_events").labels(src).set(s.signal_box)
        g("na64_sideband_c_events").labels(src).set(s.sideband_c)
        for region, saturated in s.ecal_saturated.items():
            if saturated is not None:  # the summary's two regions: a bounded label set
                g("na64_ecal_saturated_events").labels(src, region).set(saturated)
        g("na64_dimuon_events").labels(src).set(s.dimuons)
        self._maybe(g("na64_dimuons_per_eot").labels(src), s.dimuons_per_eot)
        if spectra is not None:
            self.last_spectra[src] = spectra
            if src not in self._spectra.spectra:
                self._spectra.spectra[src] = Spectra.empty(self.cfg)
            self._spectra.spectra[src].add(spectra)

    def _scale(self, src: str, s: SpillSummary) -> None:
        """The energy scale and its 1-sigma bounds; NaN when the spill had too few
        calibration events."""
        sc, g = s.ecal_scale, self.gauge("na64_monitor_ecal_scale")
        g.labels(src, "value").set(sc.value if sc else float("nan"))
        g.labels(src, "low").set(sc.value - sc.error if sc else float("nan"))
        g.labels(src, "high").set(sc.value + sc.error if sc else float("nan"))
        self.gauge("na64_monitor_ecal_scale_events").labels(src).set(sc.n if sc else 0)
        cells = s.ecal_cells or {}
        for cell in self.cfg.calib_cell_reference:  # the label set: the configured cells
            c = cells.get(cell)
            self._maybe(self.gauge("na64_monitor_ecal_cell_scale").labels(src, cell),
                        c.scale if c is not None else None)

    @staticmethod
    def _maybe(child: Gauge, value: float | None) -> None:
        # no estimate this spill (empty sample): keep the series but say "unknown"
        child.set(float("nan") if value is None else value)
