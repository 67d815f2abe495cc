"""Recording and alert rules for the shift crew, and their promtool unit tests, as data.

Alert thresholds come from the monitors' AlarmConfig (the same bands that raise the MQTT
alarms), so Prometheus and the monitor judge a spill alike. Every alert selects
source="live": a replay never pages the shift. `for_s` renders the same rule set with
another `for:` (the integration test uses a short one; the deployed file the control-room
values below).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitors.config import AlarmConfig

LIVE = 'source="live"'


@dataclass(frozen=True)
class Example:
    """A promtool unit-test case: input series, when to look, which alerts must be there.

    `shown` is what the summary's value renders to for the firing alerts (promtool compares
    the expanded annotations)."""

    series: dict[str, str]
    eval_time: str
    fires: list[dict[str, str]] = field(default_factory=list)  # exp_labels; [] = stays quiet
    shown: str = ""


@dataclass(frozen=True)
class Alert:
    """One alert rule. `summary` says `{value}` where the alert's value goes (`value` is
    its Go template, e.g. humanizePercentage); `summary`, `description` and `runbook` may
    use {{ $labels.x }} only besides that (the tests render them). `runbook` is what the
    shifter does (docs/monitors.md, section `anchor`, and the shift page); `alarm` the
    monitor's MQTT alarm of the same condition, if any."""

    name: str
    expr: str
    for_s: float
    severity: str
    summary: str
    description: str
    runbook: str
    examples: tuple[Example, ...]
    value: str = "{{ $value }}"
    alarm: str | None = None

    @property
    def anchor(self) -> str:
        """The section of docs/monitors.md with this alert's runbook (GitHub's anchor of the
        heading `### <name>`)."""
        return self.name.lower()

    def runbook_url(self, base: str | None = None) -> str:
        return f"{base or RUNBOOK_BASE}#{self.anchor}"

    def annotations(self, *, shown: str | None = None, labels: dict[str, str] | None = None,
                    runbook_base: str | None = None) -> dict[str, str]:
        """The rule's annotations; with `shown`/`labels`, as promtool renders them."""
        summary = self.summary.replace("{value}", self.value if shown is None else shown)
        out = {"summary": summary, "description": self.description,
               "runbook_url": self.runbook_url(runbook_base)}
        return {k: _render(v, labels or {}) for k, v in out.items()}


@dataclass(frozen=True)
class Record:
    """One recording rule (static `labels` let several rules build one series family).

    `series` are input series of its promtool unit test and `expect` the value the rule
    must give for them at 2m (with `labels`)."""

    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)
    expect: tuple[tuple[dict[str, str], float], ...] = ()


#: where the runbook sections are: docs/monitors.md of this repository, as a path relative
#: to the repository root (set it to where the control room serves the docs, and rebuild)
RUNBOOK_BASE = "docs/monitors.md"

#: stage throughput (events/s) of every service, one family for the DAQ-health panel. Summed
#: over live and replay alike: it is the machinery's load that matters here. The unit
#: tests' series grow linearly (so rate() is exact): 60 per 15 s is 4 events/s.
RECORDS: tuple[Record, ...] = (
    Record("na64:stage_events:rate1m",
           'sum(rate(na64_frontend_events_total{board="BEAM"}[1m]))', {"stage": "1-frontend"},
           {'na64_frontend_events_total{board="BEAM"}': "0+60x10",
            'na64_frontend_events_total{board="ECAL"}': "0+600x10"},
           (({"stage": "1-frontend"}, 4.0),)),
    Record("na64:stage_events:rate1m", "sum(rate(na64_builder_events_total[1m]))",
           {"stage": "2-builder"}, {"na64_builder_events_total": "0+30x10"},
           (({"stage": "2-builder"}, 2.0),)),
    Record("na64:stage_events:rate1m", "sum(rate(na64_trigger_processed_events_total[1m]))",
           {"stage": "3-trigger"},
           {'na64_trigger_processed_events_total{instance="w0"}': "0+15x10",
            'na64_trigger_processed_events_total{instance="w1"}': "0+15x10"},
           (({"stage": "3-trigger"}, 2.0),)),
    Record("na64:stage_events:rate1m", "sum(rate(na64_events_total[1m]))",
           {"stage": "4-monitor"},
           {'na64_events_total{source="live"}': "0+45x10",
            'na64_events_total{source="replay"}': "0+15x10"},
           (({"stage": "4-monitor"}, 4.0),)),
    Record("na64:stage_events:rate1m", "sum(rate(na64_recorder_events_total[1m]))",
           {"stage": "5-recorder (accepted)"}, {"na64_recorder_events_total": "0+6x10"},
           (({"stage": "5-recorder (accepted)"}, 0.4),)),
    Record("na64:trigger_events:rate1m",
           "sum by (source, type) (rate(na64_trigger_events_total[1m]))", {},
           {'na64_trigger_events_total{source="live",type="physics",instance="m"}': "0+15x10",
            'na64_trigger_events_total{source="live",type="beam",instance="m"}': "0+150x10",
            'na64_trigger_events_total{source="replay",type="beam",instance="m"}': "0+30x10"},
           (({"source": "live", "type": "physics"}, 1.0),
            ({"source": "live", "type": "beam"}, 10.0),
            ({"source": "replay", "type": "beam"}, 2.0))),
    Record("na64:eot:rate1m", "sum by (source) (rate(na64_eot_total[1m]))", {},
           {'na64_eot_total{source="live"}': "0+1500000x10"},
           (({"source": "live"}, 100000.0),)),
)


# the refused-message series of the alert's examples (each with one of its reasons)
_BUILDER_REFUSED = 'na64_builder_decode_errors_total{job="builder",board="ECAL",reason="checksum"}'
_TRIGGER_REFUSED = 'na64_trigger_refused_total{job="trigger",reason="checksum"}'
_MONITOR_REFUSED = 'na64_monitor_refused_total{job="monitor",reason="header"}'
_RECORDER_REFUSED = 'na64_recorder_decode_errors_total{job="recorder",reason="too_large"}'
#: counters of messages a service refused (each one is data lost)
_REFUSED = ("na64_builder_decode_errors_total", "na64_trigger_refused_total",
            "na64_monitor_refused_total")


def _fmt(x: float) -> str:
    return f"{x:g}"


def _pct(x: float) -> str:
    """`x` as Prometheus' humanizePercentage writes it (0.9 -> 90%)."""
    return f"{100 * x:.4g}%"


def _dur(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}m" if s and s % 60 == 0 else f"{s}s"


_PCT = "{{ $value | humanizePercentage }}"
_COUNT = '{{ printf "%.0f" $value }}'


def alerts(a: AlarmConfig | None = None) -> tuple[Alert, ...]:
    """Every alert of the shift crew, with the bands of `a` (default: AlarmConfig())."""
    a = a or AlarmConfig()
    veto_lo = a.veto_efficiency.low if a.veto_efficiency.low is not None else 0.90
    hcal_lo = a.hcal_efficiency.low if a.hcal_efficiency.low is not None else 0.90
    pile_hi = a.pileup.high if a.pileup.high is not None else 0.15
    had_hi = a.hadron_fraction.high if a.hadron_fraction.high is not None else 0.05
    inc_hi = a.incomplete_fraction.high if a.incomplete_fraction.high is not None else 0.01
    scale_lo = a.ecal_scale.low if a.ecal_scale.low is not None else 0.97
    scale_hi = a.ecal_scale.high if a.ecal_scale.high is not None else 1.03
    n = a.min_sample
    spills = 60.0  # ~3.5 SPS cycles of 16.8 s: one odd spill does not page anyone

    def eff(det: str, name: str, low: float, what: str, alarm: str) -> Alert:
        sel = f'{LIVE},detector="{det}"'
        return Alert(
            name=name, for_s=spills, severity="warning", alarm=alarm, value=_PCT,
            expr=(f'max by (source, detector) (na64_efficiency_ratio{{{sel},bound="high"}}) '
                  f"< {_fmt(low)} and on (source, detector) "
                  f"max by (source, detector) (na64_efficiency_sample_size{{{sel}}}) >= {n}"),
            summary=f"{what} efficiency at most {{value}} (upper edge of its 68 % interval), "
                    f"below {_pct(low)}",
            description=(f"The {what} zero-threshold efficiency, measured on identified "
                         f"electrons (at least {n} a spill), has been below {_pct(low)} even "
                         "at the upper edge of its 68 % Wilson interval for several spills. "
                         "An electron with a charged particle (the beam halo, a hadron, a "
                         f"muon) whose pulse reaches the {what} reconstruction window counts as "
                         "inefficient, so high intensity lowers it."),
            runbook=(f"Check the beam intensity and pileup first (high intensity lowers the "
                     f"{what} efficiency); if the beam is nominal, check {what} HV and "
                     f"thresholds on the Beam and detector dashboard and call the {what} "
                     "expert."),
            examples=(
                Example({f'na64_efficiency_ratio{{{sel},bound="high"}}': "0.80x10",
                         f'na64_efficiency_sample_size{{{sel}}}': f"{n * 10}x10"}, "2m",
                        [{"source": "live", "detector": det}], shown="80%"),
                Example({f'na64_efficiency_ratio{{{sel},bound="high"}}': "0.95x10",
                         f'na64_efficiency_sample_size{{{sel}}}': f"{n * 10}x10"}, "2m"),
                Example({f'na64_efficiency_ratio{{{sel},bound="high"}}': "0.80x10",
                         f'na64_efficiency_sample_size{{{sel}}}': f"{n - 1}x10"}, "2m"),
                Example({f'na64_efficiency_ratio{{source="replay",detector="{det}",'
                         'bound="high"}': "0.80x10",
                         f'na64_efficiency_sample_size{{source="replay",detector="{det}"}}':
                         f"{n * 10}x10"}, "2m"),
            ))

    def above(name: str, metric: str, hi: float, what: str, description: str, runbook: str,
              alarm: str) -> Alert:
        return Alert(
            name=name, for_s=spills, severity="warning", alarm=alarm, value=_PCT,
            expr=f"max by (source) ({metric}) > {_fmt(hi)}",
            summary=f"{what} {{value}}, above {_pct(hi)}", description=description,
            runbook=runbook,
            examples=(
                Example({metric: f"{_fmt(hi * 2)}x10"}, "2m", [{"source": "live"}],
                        shown=_pct(hi * 2)),
                Example({metric: f"{_fmt(hi / 2)}x10"}, "2m"),
                Example({metric: f"{_fmt(hi * 2)} {_fmt(hi / 2)}x10"}, "2m"),  # one bad spill
                Example({metric.replace(LIVE, 'source="replay"'): f"{_fmt(hi * 2)}x10"}, "2m"),
            ))

    def hadrons() -> Alert:
        ratio = f'na64_composition_ratio{{{LIVE},species="hadron"}}'
        size = f"na64_composition_sample_size{{{LIVE}}}"
        return Alert(
            name="HadronFractionHigh", for_s=spills, severity="warning",
            alarm="hadron_fraction_high", value=_PCT,
            expr=(f"max by (source) ({ratio}) > {_fmt(had_hi)} and on (source) "
                  f"max by (source) ({size}) >= {n}"),
            summary=f"Hadron fraction of the beam {{value}}, above {_pct(had_hi)}",
            description=(f"More than {_pct(had_hi)} of the beam particles were identified "
                         "as hadrons (no SRD tag, energy in the HCAL) for several spills, "
                         f"counted on at least {n} events a spill isolated in time: the beam "
                         "line delivers a contaminated beam, or the SRD tagging fails."),
            runbook=("Check the beam-line settings (collimators, target, momentum) with the "
                     "beam operator; check the SRD tagging on the Beam and detector "
                     "dashboard."),
            examples=(
                Example({ratio: f"{_fmt(had_hi * 2)}x10", size: f"{n * 10}x10"}, "2m",
                        [{"source": "live"}], shown=_pct(had_hi * 2)),
                Example({ratio: f"{_fmt(had_hi / 2)}x10", size: f"{n * 10}x10"}, "2m"),
                Example({ratio: f"{_fmt(had_hi * 2)}x10", size: f"{n - 1}x10"}, "2m"),
                Example({ratio.replace(LIVE, 'source="replay"'): f"{_fmt(had_hi * 2)}x10",
                         size.replace(LIVE, 'source="replay"'): f"{n * 10}x10"}, "2m"),
            ))

    up_jobs = 'up{job=~"frontend|builder|trigger|recorder|monitor|control"}'
    return (
        eff("veto", "VetoEfficiencyLow", veto_lo, "VETO", "veto_efficiency_low"),
        eff("hcal", "HcalEfficiencyLow", hcal_lo, "HCAL", "hcal_efficiency_low"),
        above("PileupHigh", f"na64_pileup_ratio{{{LIVE}}}", pile_hi,
              "Pileup fraction (beam multiplicity > 1)",
              f"More than {_pct(pile_hi)} of the events had a second beam particle resolved "
              "by the beam counters, for several spills: the intensity is too high for "
              "clean events and lowers the VETO and HCAL efficiencies.",
              "Ask the SPS/beam operator (CCC) to lower the intensity; note the spill range "
              "in the logbook.", "pileup_high"),
        hadrons(),
        above("IncompleteEventsHigh", f"na64_incomplete_ratio{{{LIVE}}}", inc_hi,
              "Fraction of incomplete events",
              f"More than {_pct(inc_hi)} of the events lacked a board's fragment for several "
              "spills: a front end or its link drops data (the events are kept, flagged).",
              "Open the DAQ health dashboard: the incomplete-events panel names the board; "
              "check that board's front end and its link, then call the DAQ expert.",
              "incomplete_high"),
        _scale_alert(scale_lo, scale_hi, spills),
        Alert(
            name="NoSpill", for_s=0.0, severity="warning", alarm="no_spill", value=_COUNT,
            expr=(f"time() - max by (source) (na64_last_spill_timestamp_seconds{{{LIVE}}}) "
                  f"> {_fmt(a.no_spill_s)} and on () ((max(na64_recorder_run) > 0 and on () "
                  "max(na64_recorder_replay) == 0) or max(na64_control_run_open) == 1)"),
            summary=f"No spill closed for {{value}} s while a run is open (band "
                    f"{_fmt(a.no_spill_s)} s)",
            description=("A run is open but the monitors have closed no spill for longer "
                          "than the band: no beam, or no data reaches the monitors."),
            runbook=("Check the SPS page 1 for beam; if the beam is there, check the "
                     "front ends and the event builder on the DAQ health dashboard; pause "
                     "the run if the beam is off for long."),
            examples=(
                Example({f'na64_last_spill_timestamp_seconds{{{LIVE}}}': "0x20",
                         "na64_recorder_run": "7x20", "na64_recorder_replay": "0x20"}, "3m",
                        [{"source": "live"}], shown="180"),
                Example({f'na64_last_spill_timestamp_seconds{{{LIVE}}}': "0x20",
                         "na64_control_run_open": "1x20"}, "3m", [{"source": "live"}],
                        shown="180"),
                Example({f'na64_last_spill_timestamp_seconds{{{LIVE}}}': "0+15x20",
                         "na64_recorder_run": "7x20", "na64_recorder_replay": "0x20"}, "3m"),
                Example({f'na64_last_spill_timestamp_seconds{{{LIVE}}}': "0x20",
                         "na64_recorder_run": "0x20", "na64_control_run_open": "0x20"}, "3m"),
            )),
        Alert(
            name="ServiceDown", for_s=60.0, severity="critical",
            expr=f"{up_jobs} == 0",
            summary="{{ $labels.job }} at {{ $labels.instance }} does not answer scrapes "
                    "(up = {value})",
            description=("Prometheus could not scrape this service's /metrics for a minute: "
                         "the process is down, hung or unreachable. Its part of the data "
                         "path is missing."),
            runbook=("Look at the service's log on its host; restart it "
                     "(`na64daq serve {{ $labels.job }} --config /etc/na64/topology.toml`, or "
                     "`docker compose restart`); call the DAQ expert if it does not stay up."),
            examples=(
                Example({'up{job="builder",instance="daq1:9101"}': "0x10"}, "2m",
                        [{"job": "builder", "instance": "daq1:9101"}], shown="0"),
                Example({'up{job="builder",instance="daq1:9101"}': "1x10"}, "2m"),
                Example({'up{job="builder",instance="daq1:9101"}': "1x6 0x3"}, "2m"),
            )),
        Alert(
            name="StreamLosses", for_s=0.0, severity="warning", value=_COUNT,
            expr=("sum by (source) (increase({__name__=~\"na64_builder_seq_gaps_total|"
                  f'na64_stream_gaps_total",{LIVE}}}[5m])) > 0'),
            summary="About {value} messages lost between the front ends and the monitors "
                    "in 5 minutes",
            description=("Sequence numbers jumped at the event builder (per board) or at the "
                         "monitors (per worker stream): messages were lost on the way, and "
                         "with them events."),
            runbook=("The DAQ health dashboard shows where (builder: per board; monitor: per "
                     "worker stream); check network links and CPU load of that host; "
                     "note the spills in the logbook."),
            examples=(
                Example({f'na64_builder_seq_gaps_total{{{LIVE},board="ECAL"}}': "0x4 2x10"},
                        "2m", [{"source": "live"}], shown="2"),
                Example({f'na64_stream_gaps_total{{{LIVE},stream="trigger-0"}}': "0 1x10"},
                        "1m", [{"source": "live"}], shown="1"),
                Example({f'na64_builder_seq_gaps_total{{{LIVE},board="ECAL"}}': "3x30"},
                        "6m"),
            )),
        Alert(
            name="MessagesRefused", for_s=0.0, severity="warning", value=_COUNT,
            expr=(f'sum by (job) (increase({{__name__=~"{"|".join(_REFUSED)}"}}[5m])) > 0 '
                  "or sum by (job) (increase(na64_recorder_decode_errors_total[5m])) "
                  "+ sum by (job) (increase(na64_recorder_write_errors_total[5m])) > 0"),
            summary="{{ $labels.job }} refused or could not write about {value} messages in "
                    "5 minutes (data lost)",
            description=("A service received messages it could not decode or use, or the "
                         "recorder could not write: their data is lost."),
            runbook=("The DAQ health dashboard's refused-messages panel says why; a recorder "
                     "write error means the run-file disk: check its free space; call the "
                     "DAQ expert."),
            examples=(
                Example({_BUILDER_REFUSED: "0x20",
                         _TRIGGER_REFUSED: "0x4 1x16",
                         _MONITOR_REFUSED: "0x20",
                         _RECORDER_REFUSED: "0x20",
                         'na64_recorder_write_errors_total{job="recorder"}': "0x20"}, "2m",
                        [{"job": "trigger"}], shown="1"),
                Example({_RECORDER_REFUSED: "0x20",
                         'na64_recorder_write_errors_total{job="recorder"}': "0x4 1x16"},
                        "2m", [{"job": "recorder"}], shown="1"),
                Example({_BUILDER_REFUSED: "0x20",
                         _TRIGGER_REFUSED: "0x20",
                         _MONITOR_REFUSED: "0x20",
                         _RECORDER_REFUSED: "0x20",
                         'na64_recorder_write_errors_total{job="recorder"}': "0x20"}, "2m"),
            )),
    )


def _scale_alert(lo: float, hi: float, for_s: float) -> Alert:
    """EcalScaleDrift: the calibration trigger's electron peak left its band (a gain change
    the calibration does not know of moves every energy, and the physics trigger's
    threshold with them)."""
    scale = f'na64_monitor_ecal_scale{{{LIVE},bound="value"}}'
    return Alert(
        name="EcalScaleDrift", for_s=for_s, severity="warning", alarm="ecal_scale_drift",
        value=_PCT,
        expr=(f"max by (source) ({scale}) < {_fmt(lo)} or "
              f"max by (source) ({scale}) > {_fmt(hi)}"),
        summary=f"ECAL energy scale {{value}} of nominal, outside {_pct(lo)} to {_pct(hi)}",
        description=("The E_ECAL peak of the calibration trigger's 100 GeV electrons has "
                     "moved out of its band for several spills: the ECAL gains changed "
                     "(HV, temperature) and every energy, the physics trigger's E_ECAL "
                     "threshold included, is off by that much."),
        runbook=("Look at the ECAL energy scale panel of the shift dashboard: a step in "
                 "the scale points at HV or a power cut, a slow drift at temperature. "
                 "Check the ECAL HV and temperature; call the ECAL expert, who decides on "
                 "a new calibration; note the spill range in the logbook (those spills "
                 "need the corrected scale)."),
        examples=(
            Example({scale: "0.92x10"}, "2m", [{"source": "live"}], shown="92%"),
            Example({scale: "1.05x10"}, "2m", [{"source": "live"}], shown="105%"),
            Example({scale: "1.0x10"}, "2m"),
            Example({scale: "0.92 1.0x10"}, "2m"),  # one bad spill
            Example({scale.replace(LIVE, 'source="replay"'): "0.92x10"}, "2m"),
        ))


def by_alarm(a: AlarmConfig | None = None) -> dict[str, Alert]:
    """The alert of each monitor alarm (MQTT name, e.g. `pileup_high`)."""
    return {al.alarm: al for al in alerts(a) if al.alarm is not None}


def rule_groups(*, for_s: float | None = None, alarm: AlarmConfig | None = None,
                runbook_base: str | None = None) -> dict[str, dict[str, Any]]:
    """{file name: rule-file document}; `for_s` overrides every non-zero `for:`."""
    records = {"groups": [{"name": "na64-records", "rules": [
        {"record": r.record, "expr": r.expr, **({"labels": r.labels} if r.labels else {})}
        for r in RECORDS]}]}
    rules = []
    for al in alerts(alarm):
        f = al.for_s if (for_s is None or al.for_s == 0) else for_s
        rule: dict[str, Any] = {"alert": al.name, "expr": al.expr}
        if f:
            rule["for"] = _dur(f)
        rule["labels"] = {"severity": al.severity}
        rule["annotations"] = al.annotations(runbook_base=runbook_base)
        rules.append(rule)
    return {"na64-records.yml": records,
            "na64-alerts.yml": {"groups": [{"name": "na64-shift", "rules": rules}]}}


def _render(template: str, labels: dict[str, str]) -> str:
    for k, v in labels.items():
        template = template.replace("{{ $labels." + k + " }}", v)
    return template


def rule_tests(alarm: AlarmConfig | None = None, *,
               rule_files: tuple[str, ...] = ("rules/na64-alerts.yml", "rules/na64-records.yml"),
               runbook_base: str | None = None) -> dict[str, Any]:
    """The promtool `test rules` document: every alert fires and stays quiet as it should
    (with its annotations as rendered), every recording rule gives the expected values."""
    tests = []
    for al in alerts(alarm):
        for ex in al.examples:
            exp = [{"exp_labels": {**lab, "severity": al.severity},
                    "exp_annotations": al.annotations(shown=ex.shown, labels=lab,
                                                      runbook_base=runbook_base)}
                   for lab in ex.fires]
            tests.append({
                "name": f"{al.name}: {'fires' if ex.fires else 'stays quiet'}",
                "interval": "15s",
                "input_series": [{"series": s, "values": v} for s, v in ex.series.items()],
                "alert_rule_test": [{"eval_time": ex.eval_time, "alertname": al.name,
                                     "exp_alerts": exp}],
            })
    for name in dict.fromkeys(r.record for r in RECORDS):
        family = [r for r in RECORDS if r.record == name]
        tests.append({
            "name": f"{name}: recorded",
            "interval": "15s",
            "input_series": [{"series": s, "values": v}
                             for r in family for s, v in r.series.items()],
            "promql_expr_test": [{"expr": name, "eval_time": "2m", "exp_samples": [
                {"labels": _series(name, lab), "value": val}
                for r in family for lab, val in r.expect]}],
        })
    return {"rule_files": list(rule_files), "evaluation_interval": "15s", "tests": tests}


def _series(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}}" if inner else name
