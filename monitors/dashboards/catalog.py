"""The one description of every dashboard: a panel is one line.

Physics series select `source="$source"` (live by default, replay on request) so a replay
never mixes with live data. Rates use `$__rate_interval`; counters of the monitors move at
spill close (every ~16.8 s), so Grafana's interval is kept at >= 1m by the datasource's
scrape interval and the panels' `interval` (see grafana.py).
"""

from __future__ import annotations

from monitors.dashboards.model import Annotation, Dashboard, Query, Row, heat, stat, state, ts

S = 'source="$source"'
RI = "$__rate_interval"

#: run start and stop: the recorder's run gauge (0 between runs) changing
RUN_ANNOTATIONS = (
    Annotation("Run start",
               "(na64_recorder_run > 0) and (changes(na64_recorder_run[20s]) > 0)",
               "green", "run started"),
    Annotation("Run stop",
               "(na64_recorder_run == 0) and (changes(na64_recorder_run[20s]) > 0)",
               "red", "run stopped"),
)

SHIFT = Dashboard(
    "na64-shift", "NA64 shift overview",
    "What the shift crew watches: run, spill, EOT, trigger rates, efficiencies, pileup, "
    "beam composition and alarms.",
    rows=(
        Row("Run", (
            stat("Run", f"max(na64_run_number{{{S}}})"),
            stat("Spill", f"max(na64_spill_number{{{S}}})"),
            stat("Seconds since last spill",
                 f"time() - max(na64_last_spill_timestamp_seconds{{{S}}})", unit="s"),
            stat("EOT (monitor lifetime)", f"sum(na64_eot_total{{{S}}})", unit="sci"),
            stat("EOT per spill", f"sum(increase(na64_eot_total{{{S}}}[{RI}])) / "
                 f"sum(increase(na64_spills_total{{{S}}}[{RI}]))", unit="sci"),
            stat("Live time", f"max(na64_live_time_ratio{{{S}}})", unit="percentunit"),
        )),
        Row("Trigger and beam", (
            ts("Trigger rates by type",
               Query(f"sum by (type) (rate(na64_trigger_events_total{{{S}}}[{RI}]))",
                     "{{type}}"), unit="hz"),
            ts("Zero-threshold efficiencies",
               Query(f'max by (detector) (na64_efficiency_ratio{{{S},bound="value"}})',
                     "{{detector}}"), unit="percentunit", lo=0.8, hi=1),
            ts("Pileup fraction", Query(f"max(na64_pileup_ratio{{{S}}})", "pileup"),
               unit="percentunit", lo=0),
            ts("Beam composition",
               Query(f"max by (species) (na64_composition_ratio{{{S}}})", "{{species}}"),
               unit="percentunit", lo=0, hi=1),
            ts("EOT rate", Query(f"sum(rate(na64_eot_total{{{S}}}[{RI}]))", "EOT/s"),
               unit="hz"),
            stat("Firing alerts", 'count(ALERTS{alertstate="firing"}) or vector(0)'),
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
               unit="hz"),
            ts("Fired events by type (workers)",
               Query(f"sum by (type) (rate(na64_trigger_accepted_total[{RI}]))", "{{type}}"),
               unit="hz"),
            ts("Shadow trigger by type",
               Query(f"sum by (type) (rate(na64_trigger_shadow_accepted_total[{RI}]))",
                     "shadow {{type}}"),
               Query(f"sum by (type) (rate(na64_trigger_accepted_total[{RI}]))",
                     "active {{type}}"), unit="hz"),
            ts("Accepted fraction", Query(f"max(na64_accepted_ratio{{{S}}})", "accepted"),
               unit="percentunit", lo=0),
        )),
        Row("Configuration and workers", (
            stat("Configuration version", "max(na64_trigger_config_version)"),
            stat("Workers ready", "sum(na64_trigger_ready)"),
            ts("Events per worker",
               Query(f"sum by (instance) (rate(na64_trigger_processed_events_total[{RI}]))",
                     "{{instance}}"), unit="hz"),
            ts("Configuration version per worker",
               Query("max by (instance) (na64_trigger_config_version)", "{{instance}}")),
            ts("Refused by reason",
               Query(f"sum by (reason) (rate(na64_trigger_refused_total[{RI}]))",
                     "{{reason}}"), unit="hz"),
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
                     "{{bound}}"), unit="percentunit", width=8),
            ts("HCAL efficiency (68 % interval)",
               Query(f'max by (bound) (na64_efficiency_ratio{{{S},detector="hcal"}})',
                     "{{bound}}"), unit="percentunit", width=8),
            ts("Electron sample size",
               Query(f"max by (detector) (na64_efficiency_sample_size{{{S}}})",
                     "{{detector}}"), width=8),
        )),
        Row("Beam", (
            ts("Pileup fraction", Query(f"max(na64_pileup_ratio{{{S}}})", "pileup"),
               unit="percentunit", lo=0),
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
               Query("na64:stage_events:rate1m", "{{stage}}"), unit="hz", width=12),
            ts("Recorder write rate",
               Query(f"sum(rate(na64_recorder_bytes_total{{{S}}}[{RI}]))", "bytes/s"),
               unit="Bps", width=6),
            stat("Services up", 'sum(up{job=~"frontend|builder|trigger|recorder|monitor|'
                 'control"})', width=6),
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
                     "{{board}}"), unit="hz"),
            ts("Incomplete fraction", Query(f"max(na64_incomplete_ratio{{{S}}})", "incomplete"),
               unit="percentunit", lo=0),
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
