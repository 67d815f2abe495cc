"""The one description of every dashboard: a panel is one line.

Physics series select `source="$source"` (live by default, replay on request) so a replay
never mixes with live data. Rates use `$__rate_interval`; counters of the monitors move at
spill close (every ~16.8 s), so Grafana's interval is kept at >= 1m by the datasource's
scrape interval and the panels' `interval` (see grafana.py).

Units are Grafana unit ids (`hertz` for rates: Grafana then scales to kHz, MHz); every stat
has explicit thresholds (model.py); where a band means something it is the monitors'
alarm band (AlarmConfig), so the colours and the alerts agree.
"""

from __future__ import annotations

from monitors.config import AlarmConfig
from monitors.dashboards.model import (
    NEUTRAL,
    Annotation,
    Dashboard,
    Query,
    Row,
    alarm_above,
    alarm_below,
    falling,
    heat,
    rising,
    stat,
    state,
    ts,
)

S = 'source="$source"'
RI = "$__rate_interval"
_BANDS = AlarmConfig()
#: a count that should be zero: green at 0, red from 1
ZERO_IS_GOOD = ((None, "green"), (1.0, "red"))
#: beam on/off (na64_beam_on): ON in green, OFF in the text colour (between runs and in the
#: SPS's pauses that is normal; the NoSpill alert says when it is not)
BEAM_STATES = (("1", "ON", "green"), ("0", "OFF", "text"))

#: run start and stop: the recorder's run gauge (0 between runs) changing. Grafana's
#: Prometheus annotations step every 60 s: the window looks back that whole minute.
RUN_ANNOTATIONS = (
    Annotation("Run start",
               "(na64_recorder_run > 0) and (changes(na64_recorder_run[1m]) > 0)", "green"),
    Annotation("Run stop",
               "(na64_recorder_run == 0) and (changes(na64_recorder_run[1m]) > 0)", "red"),
)

SHIFT = Dashboard(
    "na64-shift", "NA64 shift overview",
    "What the shift crew watches: run, spill, EOT, trigger rates, efficiencies, pileup, "
    "beam composition and alarms.",
    rows=(
        Row("Run", (
            stat("Run", f"max(na64_run_number{{{S}}})", thresholds=NEUTRAL, width=3,
                 description="Run of the last closed spill."),
            stat("Spill", f"max(na64_spill_number{{{S}}})", thresholds=NEUTRAL, width=3),
            stat("Beam", f"max(na64_beam_on{{{S}}})", thresholds=NEUTRAL, width=3,
                 mappings=BEAM_STATES,
                 description="ON while spills arrive (the last closed less than "
                 f"{_BANDS.no_spill_s:g} s ago, the NoSpill band)."),
            stat("Seconds since last spill",
                 f"time() - max(na64_last_spill_timestamp_seconds{{{S}}})", unit="s",
                 thresholds=rising(_BANDS.no_spill_s / 2, _BANDS.no_spill_s), width=3,
                 description="Amber after two SPS cycles without a spill, red at the "
                 "NoSpill band (normal between runs)."),
            stat("EOT this run", f"max(na64_run_eot{{{S}}})", unit="sci",
                 thresholds=NEUTRAL, width=3,
                 description="Electrons on target since the run started, live-time "
                 "corrected."),
            stat("EOT total", f"sum(na64_eot_total{{{S}}})", unit="sci", thresholds=NEUTRAL,
                 width=3, description="Electrons on target since the monitor started."),
            stat("EOT per spill", f"sum(increase(na64_eot_total{{{S}}}[{RI}])) / "
                 f"sum(increase(na64_spills_total{{{S}}}[{RI}]))", unit="sci",
                 thresholds=NEUTRAL, width=3),
            stat("Live time", f"max(na64_live_time_ratio{{{S}}})", unit="percentunit",
                 thresholds=falling(0.8, 0.95), width=3,
                 description="Last spill: events / (events + shed). Amber below 95 %, red "
                 "below 80 % (dead time from shedding)."),
        )),
        Row("Trigger and beam", (
            ts("Trigger rates by type",
               Query(f"sum by (type) (rate(na64_trigger_events_total{{{S}}}[{RI}]))",
                     "{{type}}"), unit="hertz"),
            ts("Zero-threshold efficiencies",
               Query(f'max by (detector) (na64_efficiency_ratio{{{S},bound="value"}})',
                     "{{detector}}"), unit="percentunit", lo=0.8, hi=1,
               thresholds=alarm_below(_BANDS.veto_efficiency.low or 0.9)),
            ts("Pileup fraction", Query(f"max(na64_pileup_ratio{{{S}}})", "pileup"),
               unit="percentunit", lo=0,
               thresholds=alarm_above(_BANDS.pileup.high or 0.15)),
            ts("Beam composition",
               Query(f"max by (species) (na64_composition_ratio{{{S}}})", "{{species}}"),
               unit="percentunit", lo=0, hi=1),
            ts("EOT rate", Query(f"sum(rate(na64_eot_total{{{S}}}[{RI}]))", "EOT/s"),
               unit="hertz"),
            ts("ECAL energy scale",
               Query(f'max by (bound) (na64_monitor_ecal_scale{{{S}}})', "{{bound}}"),
               unit="percentunit", lo=0.85, hi=1.15,
               thresholds=((None, "red"), (_BANDS.ecal_scale.low or 0.97, "green"),
                           (_BANDS.ecal_scale.high or 1.03, "red")),
               description="Peak of E_ECAL of the calibration trigger's electrons / "
               "nominal, last spill (value, value -/+ its error); the lines are the "
               "EcalScaleDrift band."),
            stat("Firing alerts", 'count(ALERTS{alertstate="firing"}) or vector(0)',
                 thresholds=ZERO_IS_GOOD),
        )),
        Row("Physics benchmarks", (
            ts("Sideband C and dimuons per spill",
               Query(f"max(na64_sideband_c_events{{{S}}})", "sideband C"),
               Query(f"max(na64_dimuon_events{{{S}}})", "dimuons"), lo=0,
               description="Last spill: box candidates in sideband C (50 <= E_ECAL < 90 "
               "GeV, E_HCAL < 1 GeV, the box's other cuts) and dimuon candidates "
               "(docs/monitors.md). The signal box itself is blind by default: it has no "
               "series until the monitor is unblinded."),
            stat("Dimuons per EOT", f"max(na64_dimuons_per_eot{{{S}}})", unit="sci",
                 thresholds=NEUTRAL, width=6,
                 description="Last spill: dimuon candidates / EOT, NA64's benchmark "
                 "(~1e-4 per electron on target times the selection's efficiency)."),
        )),
        Row("Alarms", (
            state("Monitor alarms",
                  Query(f"max by (alarm) (na64_alarm_active{{{S}}})", "{{alarm}}"),
                  width=24),
        )),
    ),
    annotations=RUN_ANNOTATIONS,
)

TRIGGER = Dashboard(
    "na64-trigger", "NA64 trigger",
    "Trigger rates by type, the shadow trigger, the active configuration version and the "
    "workers.",
    rows=(
        Row("Rates", (
            ts("Fired events by type (monitors)",
               Query(f"sum by (type) (na64:trigger_events:rate1m{{{S}}})", "{{type}}"),
               unit="hertz"),
            ts("Fired events by type (workers)",
               Query(f"sum by (type) (rate(na64_trigger_accepted_total[{RI}]))", "{{type}}"),
               unit="hertz"),
            ts("Shadow trigger by type",
               Query(f"sum by (type) (rate(na64_trigger_shadow_accepted_total[{RI}]))",
                     "shadow {{type}}"),
               Query(f"sum by (type) (rate(na64_trigger_accepted_total[{RI}]))",
                     "active {{type}}"), unit="hertz"),
            ts("Accepted fraction", Query(f"max(na64_accepted_ratio{{{S}}})", "accepted"),
               unit="percentunit", lo=0),
        )),
        Row("Configuration and workers", (
            stat("Configuration version", "max(na64_trigger_config_version)",
                 thresholds=NEUTRAL),
            stat("Workers ready", "sum(na64_trigger_ready)", thresholds=NEUTRAL, width=2),
            stat("Workers not ready", 'count(up{job="trigger"}) - '
                 "(sum(na64_trigger_ready) or vector(0))", thresholds=ZERO_IS_GOOD, width=2,
                 description="Scrape targets of the trigger job that are down or still "
                 "compiling their kernels."),
            ts("Events per worker",
               Query(f"sum by (instance) (rate(na64_trigger_processed_events_total[{RI}]))",
                     "{{instance}}"), unit="hertz"),
            ts("Configuration version per worker",
               Query("max by (instance) (na64_trigger_config_version)", "{{instance}}")),
            ts("Refused by reason",
               Query(f"sum by (reason) (rate(na64_trigger_refused_total[{RI}]))",
                     "{{reason}}"), unit="hertz"),
        )),
    ),
    annotations=RUN_ANNOTATIONS,
)

BEAM = Dashboard(
    "na64-beam", "NA64 beam and detector",
    "Spectra, efficiencies with their 68 % Wilson intervals, pileup and composition.",
    rows=(
        Row("Spectra", (
            heat("E_ECAL (GeV)",
                 f"sum by (le) (increase(na64_ecal_energy_gev_bucket{{{S}}}[{RI}]))"),
            heat("E_HCAL (GeV)",
                 f"sum by (le) (increase(na64_hcal_energy_gev_bucket{{{S}}}[{RI}]))"),
        )),
        Row("Efficiencies", (
            ts("VETO efficiency (68 % interval)",
               Query(f'max by (bound) (na64_efficiency_ratio{{{S},detector="veto"}})',
                     "{{bound}}"), unit="percentunit", width=8,
               thresholds=alarm_below(_BANDS.veto_efficiency.low or 0.9)),
            ts("HCAL efficiency (68 % interval)",
               Query(f'max by (bound) (na64_efficiency_ratio{{{S},detector="hcal"}})',
                     "{{bound}}"), unit="percentunit", width=8,
               thresholds=alarm_below(_BANDS.hcal_efficiency.low or 0.9)),
            ts("Electron sample size",
               Query(f"max by (detector) (na64_efficiency_sample_size{{{S}}})",
                     "{{detector}}"), width=8),
        )),
        Row("Beam", (
            ts("Pileup fraction", Query(f"max(na64_pileup_ratio{{{S}}})", "pileup"),
               unit="percentunit", lo=0, thresholds=alarm_above(_BANDS.pileup.high or 0.15)),
            ts("Mean beam multiplicity",
               Query(f"max(na64_beam_multiplicity_mean{{{S}}})", "mean")),
            ts("Beam composition",
               Query(f"max by (species) (na64_composition_ratio{{{S}}})", "{{species}}"),
               unit="percentunit", lo=0, hi=1),
        )),
    ),
    annotations=RUN_ANNOTATIONS,
)

DAQ = Dashboard(
    "na64-daq", "NA64 DAQ health",
    "Stage throughputs, queues, latency, incomplete events and losses.",
    rows=(
        Row("Throughput", (
            ts("Events/s through each stage",
               Query("na64:stage_events:rate1m", "{{stage}}"), unit="hertz", width=12),
            ts("Recorder write rate",
               Query(f"sum(rate(na64_recorder_bytes_total{{{S}}}[{RI}]))", "bytes/s"),
               unit="Bps", width=6),
            stat("Services up", 'sum(up{job=~"frontend|builder|trigger|recorder|monitor|'
                 'control"})', thresholds=NEUTRAL, width=3),
            stat("Services down", 'count(up{job=~"frontend|builder|trigger|recorder|monitor|'
                 'control"} == 0) or vector(0)', thresholds=ZERO_IS_GOOD, width=3),
        )),
        Row("Queues and latency", (
            ts("Queues",
               Query("max(na64_builder_pending_events)", "builder pending events"),
               Query("max(na64_builder_queued_events)", "builder queued events"),
               Query("max(na64_monitor_open_spills)", "monitor open spills"), width=6),
            ts("Builder buffers (bounded by max_pending_bytes)",
               Query("max(na64_builder_pending_bytes)", "partly built"),
               Query("max(na64_builder_queued_bytes)", "queued to the trigger"),
               unit="bytes", lo=0, width=6),
            ts("Backpressure and shedding",
               Query("max(na64_builder_backpressure)", "backpressure"),
               Query("max(na64_builder_shedding)", "shedding"),
               Query(f"sum(rate(na64_builder_shed_events_total{{{S}}}[{RI}]))",
                     "shed events/s"), width=6),
            ts("Processing time p99",
               Query("histogram_quantile(0.99, sum by (le) "
                     f"(rate(na64_trigger_processing_seconds_bucket[{RI}])))", "trigger slice"),
               Query("histogram_quantile(0.99, sum by (le) "
                     f"(rate(na64_monitor_processing_seconds_bucket[{RI}])))",
                     "monitor message"),
               Query("histogram_quantile(0.99, sum by (le) "
                     f"(rate(na64_recorder_fsync_seconds_bucket[{RI}])))", "recorder fsync"),
               unit="s", width=6),
        )),
        Row("Incomplete events and losses", (
            ts("Incomplete events by board",
               Query(f"sum by (board) (rate(na64_builder_incomplete_events_total{{{S}}}[{RI}]))",
                     "{{board}}"), unit="hertz"),
            ts("Incomplete fraction", Query(f"max(na64_incomplete_ratio{{{S}}})", "incomplete"),
               unit="percentunit", lo=0,
               thresholds=alarm_above(_BANDS.incomplete_fraction.high or 0.01)),
            ts("Lost messages (sequence gaps)",
               Query(f"sum by (board) (increase(na64_builder_seq_gaps_total{{{S}}}[{RI}]))",
                     "builder {{board}}"),
               Query(f"sum(increase(na64_stream_gaps_total{{{S}}}[{RI}])) or vector(0)",
                     "monitor (all worker streams)")),
            ts("Refused messages",
               Query(f"sum by (board) (increase(na64_builder_decode_errors_total[{RI}]))",
                     "builder {{board}}"),
               Query(f"sum by (reason) (increase(na64_trigger_refused_total[{RI}]))",
                     "trigger {{reason}}"),
               Query(f"sum by (reason) (increase(na64_monitor_refused_total[{RI}]))",
                     "monitor {{reason}}"),
               Query(f"sum(increase(na64_recorder_write_errors_total[{RI}]))",
                     "recorder write errors"), width=12),
            ts("Late and duplicate fragments",
               Query(f"sum by (board) (increase(na64_builder_late_fragments_total[{RI}]))",
                     "late {{board}}"),
               Query(f"sum by (board) (increase(na64_builder_duplicates_total[{RI}]))",
                     "duplicate {{board}}"), width=12),
        )),
    ),
    annotations=RUN_ANNOTATIONS,
)

DASHBOARDS: tuple[Dashboard, ...] = (SHIFT, TRIGGER, BEAM, DAQ)
