"""Terminal views (rich renderables, no I/O): the demo's live view and run summary, the
status line and figures of `na64daq up`, the results of `na64daq bench`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

#: what a blinded signal box shows, and where it is unblinded (plain text: a table cell
#: is rich markup, which would take "[monitor]" for a style; `escape` when adding it)
BLIND = "blind (analyze --unblind; live: [monitor] blind = false)"


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _si(x: float | None) -> str:
    """A count in at most 6 characters: 987, 12.3k, 6.12M (a spill's EOT is ~6e6)."""
    if x is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale * 0.9995:  # what rounds up to 1.00 of a unit takes that unit
            v = x / scale
            return f"{v:#.3g}{unit}" if abs(v) < 99.95 else f"{v:.0f}{unit}"  # 6.00M, not 6M
    return f"{x:.0f}"


def _eff(e: dict[str, Any] | None, *, full: bool = False) -> str:
    if not e or e.get("value") is None:
        return "-"
    if full:
        return f"{e['value']:.4f} [{e['low']:.4f}, {e['high']:.4f}]  n={e['n']}"
    half = (e["high"] - e["low"]) / 2
    return f"{e['value']:.3f}±{half:.3f}"


#: the spill table's columns, as shown left to right; trigger rates in Hz (the spill's
#: events over the time since the spill before closed: per second of the SPS cycle)
_COLUMNS = ("spill", "events", "EOT", "live", "pileup", "VETO eff", "HCAL eff", "ECAL scale",
            "hadron", "muon", "phys Hz", "beam Hz", "lost/shed", "incompl", "sig box", "cfg")
#: on a terminal too narrow for all of them, columns are left out whole, last of this
#: order first (rather than every figure shortened to an ellipsis)
_KEEP_FIRST = ("spill", "events", "EOT", "VETO eff", "HCAL eff", "pileup", "incompl",
               "lost/shed", "cfg", "live", "phys Hz", "beam Hz", "hadron", "muon", "ECAL scale",
               "sig box")


def _scale(e: dict[str, Any] | None, *, full: bool = False) -> str:
    """The ECAL energy scale (calibration peak / nominal); `full`: with its statistical
    error (a spill's is ~0.001 at 6e6: the last digit shown)."""
    if not e:
        return "-"
    return f"{e['value']:.4f}±{e['error']:.4f}" if full else f"{e['value']:.3f}"


def _hz(n: int, seconds: float | None) -> str:
    return "-" if not seconds else _si(n / seconds)


def _lost_shed(s: dict[str, Any]) -> str:
    """Events the BEAM board announced but nobody processed or shed / events shed."""
    beam = (s.get("scalers") or {}).get("beam")
    shed = int(s.get("shed") or 0)
    lost = "-" if beam is None else _si(max(0, beam - s["events"] - shed))
    return f"{lost}/{_si(shed)}"


class SpillTable:
    """One row per recent spill: the figures the shift crew reads first. A 120-column
    terminal shows all but the muon fraction, the ECAL scale and the signal box (~150
    columns show every one; a raised ecal_scale_drift alarm's line shows the scale
    anyway); a narrower one shows the most important columns whole.
    `intervals`: seconds between each spill's close and the one before (the rates' time
    base, `MonitorMetrics.intervals`); without it the rates show "-"."""

    def __init__(self, summaries: Sequence[dict[str, Any]], *, last: int = 8,
                 intervals: Mapping[int, float | None] | None = None) -> None:
        iv = intervals or {}
        self.rows = [self._row(s, iv.get(s["spill"])) for s in summaries[-last:]]

    @staticmethod
    def _row(s: dict[str, Any], seconds: float | None = None) -> tuple[str, ...]:
        c = s.get("composition") or {}
        trig = s.get("triggers") or {}
        box_ = s.get("signal_box")
        return (str(s["spill"]), _si(s["events"]), _si(s.get("eot")),
                _pct(s.get("live_time_ratio"), 1), _pct(s.get("pileup_fraction")),
                _eff(s.get("veto_efficiency")), _eff(s.get("hcal_efficiency")),
                _scale(s.get("ecal_scale")), _pct(c.get("hadron")), _pct(c.get("muon")),
                _hz(trig.get("physics", 0), seconds), _hz(trig.get("beam", 0), seconds),
                _lost_shed(s),
                str(s.get("incomplete_events", 0)), "blind" if box_ is None else str(box_),
                (s.get("trigger_cfg") or "-")[:6])  # the hash's head, as git shows one

    def columns(self, width: int) -> list[int]:
        """Indices of the columns shown in `width` characters."""
        need = {i: max([len(col), *(len(r[i]) for r in self.rows)]) + 2
                for i, col in enumerate(_COLUMNS)}
        shown: list[int] = []
        for col in _KEEP_FIRST:
            i = _COLUMNS.index(col)
            if sum(need[j] for j in shown) + need[i] <= width or not shown:
                shown.append(i)
        return sorted(shown)

    def table(self, width: int) -> Table:
        shown = self.columns(width)
        t = Table(title="Spills (latest last)", expand=True, box=box.SIMPLE_HEAD,
                  show_edge=False, collapse_padding=True)
        for i in shown:
            t.add_column(_COLUMNS[i], justify="right", no_wrap=True)
        for r in self.rows:
            t.add_row(*(r[i] for i in shown))
        return t

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)


def spill_table(summaries: Sequence[dict[str, Any]], *, last: int = 8,
                intervals: Mapping[int, float | None] | None = None) -> SpillTable:
    """The spill table of the live view (see SpillTable)."""
    return SpillTable(summaries, last=last, intervals=intervals)


def builder_health(b: Mapping[str, Any] | None) -> str:
    """The event builder's state in one line of markup: its queues, refusals, and red
    while it applies backpressure or sheds events."""
    if not b:
        return "builder -"
    refused = sum((b.get("refused") or {}).values())
    bp, shed = bool(b.get("backpressure")), bool(b.get("shedding"))
    state = ("[bold red]shedding[/]" if shed else "[bold yellow]backpressure[/]" if bp
             else "[green]ok[/]")
    return (f"builder {state}: pending {_si(b.get('pending_events', 0))}, queued "
            f"{_si(b.get('queued_events', 0))}, refused "
            + (f"[bold red]{refused}[/]" if refused else "0"))


def view(*, run: int | None, sent_events: int, summaries: Sequence[dict[str, Any]],
         alarms: Sequence[str], metrics_url: str | None, elapsed_s: float,
         run_file: str | None, earlier_alarms: Sequence[str] = (),
         run_state: str | None = None, web_url: str | None = None,
         intervals: Mapping[int, float | None] | None = None,
         builder: Mapping[str, Any] | None = None,
         alarm_lines: Sequence[str] | None = None) -> Group:
    """The whole live view: header lines (run, builder health, addresses), spill table,
    alarms (`alarms` raised now in red, as `alarm_lines` when given: value and band, see
    monitors.alarmtext; `earlier_alarms` raised earlier in the run and cleared since in
    yellow)."""
    eot = sum(s.get("eot") or 0 for s in summaries)
    gap = "   "
    head = Text.from_markup(
        gap.join((f"run [bold]{run if run is not None else '-'}[/]"
                  + (f" ({run_state})" if run_state else ""),
                  f"spills closed [bold]{len(summaries)}[/]", f"EOT [bold]{eot:,.0f}[/]",
                  f"generated {sent_events:,} events in {elapsed_s:.1f} s"))
        + "\n" + builder_health(builder)
        + "\n" + gap.join(((f"shift page {escape(web_url)}" if web_url else ""),
                           f"metrics {escape(metrics_url or 'off')}",
                           f"run file {escape(run_file or '-')}")).strip())
    if alarms and alarm_lines:
        text = "\n".join(f"[bold red]{escape(x)}[/]" for x in alarm_lines)
    else:
        text = f"[bold red]{', '.join(alarms)}[/]" if alarms else "[green]none now[/]"
    if earlier_alarms:
        text += f"{chr(10) if alarm_lines and alarms else '   '}[yellow]raised earlier, " \
                f"cleared since: {', '.join(earlier_alarms)}[/]"
    elif not alarms:
        text = "[green]none[/]"
    return Group(Panel(head, title="na64-daq demo"), spill_table(summaries, intervals=intervals),
                 Panel(text, title="alarms"))


def run_summary(summaries: Sequence[dict[str, Any]], totals: dict[str, Any] | None,
                alarms: Sequence[str] | None = None) -> Table:
    """The table printed when the run ends; `alarms`: those raised during the run (None:
    alarms were not judged, as in an offline analysis)."""
    t = Table(title="Run summary", show_header=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("spills", str(len(summaries)))
    t.add_row("events processed", f"{sum(s['events'] for s in summaries):,}")
    t.add_row("electrons on target", f"{sum(s.get('eot') or 0 for s in summaries):,.0f}")
    if totals:
        for key in ("veto_efficiency", "hcal_efficiency"):
            t.add_row(key.replace("_", " "), _eff(totals.get(key), full=True))
        t.add_row("pileup fraction", _pct(totals.get("pileup_fraction")))
        t.add_row("ECAL scale (run)", _scale(totals.get("ecal_scale"), full=True))
        trig = totals.get("triggers") or {}
        t.add_row("triggers", ", ".join(f"{k} {v}" for k, v in trig.items()))
        box_ = totals.get("signal_box")
        t.add_row("signal box", escape(BLIND) if box_ is None else f"{box_:,}")
        t.add_row("sideband C", f"{totals.get('sideband_c', 0):,}")
        rate = totals.get("dimuons_per_eot")
        t.add_row("dimuons", f"{totals.get('dimuons', 0):,}"
                  + ("" if rate is None else f" ({rate:.2e} per EOT)"))
        if totals.get("untracked_events"):
            t.add_row("no spectrometer", f"{totals['untracked_events']:,} events without "
                      "momentum or tracks: the box had no cut (i) for them")
    if alarms is not None:
        t.add_row("alarms raised", ", ".join(alarms) or "none")
    return t


def _ratio(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def run_status(fig: dict[str, Any]) -> Text:
    """One line for a run under `na64daq up`, from the monitor's figures (`run_figures`)."""
    alarms = ", ".join(fig["alarms"]) or "none"
    line = Text.assemble(
        ("spills closed ", ""), (str(fig["spills"]), "bold"),
        ("   events ", ""), (f"{fig['events']:,}", "bold"),
        ("   EOT ", ""), (f"{fig['eot']:,.0f}", "bold"),
        ("   lost ", ""), (f"{fig['lost']:,}", "bold red" if fig["lost"] else "bold"),
        ("   alarms ", ""), (alarms, "bold red" if fig["alarms"] else "green"))
    restarts = fig.get("restarts") or {}
    if restarts:
        line.append("   restarted ", "")
        line.append(", ".join(f"{n} x{k}" for n, k in sorted(restarts.items())), "bold yellow")
    return line


def up_status(d: dict[str, Any]) -> Text:
    """`na64daq up`'s live line: the run state, run number and active trigger configuration
    (from run control's retained state), the services online, then the monitor's figures."""
    st = d.get("run_state") or {}
    run = st.get("run") or {}
    state = st.get("state", "?")
    style = {"running": "bold green", "paused": "bold yellow", "error": "bold red"}.get(
        state, "bold")
    svcs = d.get("services") or {}
    online = sum(1 for x in svcs.values() if x.get("status") == "online")
    line = Text.assemble(("run ", ""), (f"{run.get('run', '-')} ", "bold"), (state, style))
    cfg = (d.get("trigger") or {}).get("cfg") or (run.get("snapshot") or {}).get("cfg")
    if cfg:
        line.append(f"   trigger {cfg[:8]}", "")
    line.append(f"   services {online}/{len(svcs)} online", "")
    if "spills" in d:  # the monitor's counters: every run since the monitor started
        line.append("   since start: ", "dim")
        line.append_text(run_status(d))
    return line


def run_figures_table(fig: dict[str, Any]) -> Table:
    """The run's figures at the end of `na64daq up` (from the monitor's /metrics)."""
    t = Table(title="Run figures (monitor)", show_header=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    forced = f" ({fig['forced_spills']} forced)" if fig["forced_spills"] else ""
    t.add_row("spills closed", f"{fig['spills']}{forced}")
    t.add_row("events processed", f"{fig['events']:,}")
    t.add_row("electrons on target", f"{fig['eot']:,.0f}")
    t.add_row("events shed / lost", f"{fig['shed']:,} / {fig['lost']:,}")
    t.add_row("veto efficiency (last spill)", _ratio(fig["veto_efficiency"]))
    t.add_row("hcal efficiency (last spill)", _ratio(fig["hcal_efficiency"]))
    t.add_row("pileup fraction (last spill)", _pct(fig["pileup"]))
    t.add_row("alarms raised during the run", ", ".join(fig["alarms_raised"]) or "none")
    return t


#: NA64's peak event rate during a 4.8 s spill, events/s (docs/performance.md)
BEAM_PEAK_EVENTS_PER_S = 1.5e6
#: issue 9's targets: end-to-end events/s and the fraction of bare ZeroMQ, per mode
BENCH_TARGETS = {"feature": (3e6, 0.5), "waveform": (0.3e6, 0.6)}


def _mps(x: float) -> str:
    return f"{x / 1e6:.2f} M/s"


def bench_table(res: dict[str, Any]) -> Table:
    """`na64daq bench` results beside their targets and the beam's peak rate."""
    t = Table(title="na64daq bench", show_header=True, box=box.SIMPLE_HEAD)
    for col, just in (("figure", "left"), ("measured", "right"), ("target / against", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    k = res["kernel"]
    t.add_row("trigger kernel, full waveforms, 1 core",
              _mps(k["waveform_kernel_events_per_s_1core"]),
              f"{k['speedup_vs_reference_1core']}x the NumPy reference "
              f"({_mps(k['numpy_reference_events_per_s'])})")
    t.add_row(f"trigger kernel, all {k['cores']} cores",
              _mps(k["waveform_kernel_events_per_s_all_cores"]),
              f"memory bound {_mps(k['bandwidth_bound_events_per_s'])} "
              f"({k['memory_read_bandwidth_gb_s']} GB/s)")
    for mode, (rate, ratio) in BENCH_TARGETS.items():
        p, z = res[f"pipeline_{mode}_events_per_s"], res[f"zmq_{mode}_events_per_s"]
        r = res[f"pipeline_{mode}_vs_zmq_ratio"]
        runs = res.get(f"runs_{mode}") or []
        worst = f"; the worst of {len(runs)} runs" if len(runs) > 1 else ""
        t.add_row(f"end to end, {mode} mode", _mps(p),
                  f"{'met' if p >= rate else 'MISSED'}: >= {_mps(rate)}; "
                  f"{p / BEAM_PEAK_EVENTS_PER_S:.2f}x the beam's peak{worst}")
        t.add_row(f"  / bare ZeroMQ ({_mps(z)})", f"{r:.3f}",
                  f"{'met' if r >= ratio else 'MISSED'}: >= {ratio}{worst}")
        for i, x in enumerate(runs if len(runs) > 1 else []):
            px, zx = x["pipeline_events_per_s"], x["zmq_events_per_s"]
            ok = px >= rate and px / zx >= ratio and x["lost_events"] == 0
            t.add_row(f"  run {x.get('run', i + 1)}", _mps(px),
                      f"{'met' if ok else 'MISSED'}: {px / zx:.3f} of bare ZeroMQ "
                      f"({_mps(zx)}), {x['lost_events']:,} lost")
    t.add_row("events lost", f"{res['lost_events']:,}",
              "met: 0" if res["lost_events"] == 0 else "MISSED: 0")
    for name, b in sorted(res["peak_rss_bytes"].items()):
        t.add_row(f"peak memory, {name}", f"{b / 2**20:.0f} MiB", "")
    return t
