"""The demo's live terminal view and its end-of-run summary (rich renderables, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _eff(e: dict[str, Any] | None, *, full: bool = False) -> str:
    if not e or e.get("value") is None:
        return "-"
    if full:
        return f"{e['value']:.4f} [{e['low']:.4f}, {e['high']:.4f}]  n={e['n']}"
    half = (e["high"] - e["low"]) / 2
    return f"{e['value']:.3f}±{half:.3f}"


def spill_table(summaries: Sequence[dict[str, Any]], *, last: int = 8) -> Table:
    """One row per recent spill: the figures the shift crew reads first."""
    t = Table(title="Spills (latest last)", expand=True)
    for col in ("spill", "events", "EOT", "live", "pileup", "VETO eff", "HCAL eff",
                "hadron", "muon", "phys", "beam", "incompl", "sig box"):
        t.add_column(col, justify="right", no_wrap=True)
    for s in summaries[-last:]:
        c = s.get("composition") or {}
        trig = s.get("triggers") or {}
        box = s.get("signal_box")
        t.add_row(
            str(s["spill"]), f"{s['events']:,}",
            "-" if s.get("eot") is None else f"{s['eot']:.3g}",
            _pct(s.get("live_time_ratio")), _pct(s.get("pileup_fraction")),
            _eff(s.get("veto_efficiency")), _eff(s.get("hcal_efficiency")),
            _pct(c.get("hadron")), _pct(c.get("muon")),
            str(trig.get("physics", 0)), str(trig.get("beam", 0)),
            str(s.get("incomplete_events", 0)), "blind" if box is None else str(box),
        )
    return t


def view(*, run: int | None, sent_events: int, summaries: Sequence[dict[str, Any]],
         alarms: Sequence[str], metrics_url: str | None, elapsed_s: float,
         run_file: str | None) -> Group:
    """The whole live view: header line, spill table, alarms."""
    eot = sum(s.get("eot") or 0 for s in summaries)
    head = Table.grid(expand=True)
    for _ in range(4):
        head.add_column()
    head.add_row(f"run [bold]{run if run is not None else '-'}[/]",
                 f"spills closed [bold]{len(summaries)}[/]",
                 f"EOT [bold]{eot:,.0f}[/]",
                 f"generated {sent_events:,} events in {elapsed_s:.1f} s")
    head.add_row(f"metrics {metrics_url or 'off'}", f"run file {run_file or '-'}", "", "")
    alarm_text = ", ".join(alarms) if alarms else "none"
    style = "bold red" if alarms else "green"
    return Group(Panel(head, title="na64-daq demo"), spill_table(summaries),
                 Panel(f"[{style}]{alarm_text}[/]", title="alarms"))


def run_summary(summaries: Sequence[dict[str, Any]], totals: dict[str, Any] | None) -> Table:
    """The table printed when the run ends."""
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
        trig = totals.get("triggers") or {}
        t.add_row("triggers", ", ".join(f"{k} {v}" for k, v in trig.items()))
    return t
