"""`na64daq` subcommands of the simulators package (parsing and printing only)."""

from __future__ import annotations

import argparse
from typing import Any

from daq.errors import ConfigError


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the na64daq parser."""
    p = sub.add_parser("simulate", help="simulate beam, detector and front-end boards",
                       description="Write a raw (pre-trigger) run file, or stream the "
                       "board fragments to an event builder.")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", metavar="FILE", help="raw run file to write")
    out.add_argument("--to", metavar="ENDPOINT", help="stream to this endpoint (PUSH per board)")
    p.add_argument("--truth", metavar="FILE", help="also write the per-event truth here")
    p.add_argument("--spills", type=int, default=1, help="spills to simulate (default 1)")
    p.add_argument("--intensity", type=float, default=6e6, help="particles per spill")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mode", choices=("waveform", "feature"), default="feature")
    p.add_argument("--zero-suppress", action="store_true",
                   help="waveform mode: send only the channels that reach --zs-adc "
                   "(feature mode always does)")
    p.add_argument("--zs-adc", type=float, default=None, metavar="X",
                   help="zero-suppression threshold, ADC counts (default 6)")
    p.add_argument("--generated-s", type=float, default=0.1,
                   help="seconds of each spill to generate, at the full rate so that pileup "
                   "is right (default 0.1, as the demo: ~125,000 events a spill at 6e6; "
                   "4.8 is the whole spill, ~48x the size)")
    p.add_argument("--slice-events", type=int, default=None)
    p.add_argument("--run", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other simulation setting (e.g. hadron_fraction=0.02)")
    p.add_argument("--pace", choices=("max", "realtime", "factor"), default="max")
    p.add_argument("--factor", type=float, default=10.0, help="time compression for --pace factor")
    f = p.add_argument_group("faults")
    f.add_argument("--fault-stop", metavar="BOARD:SPILL:FRACTION",
                   help="board stops sending after FRACTION of spill SPILL")
    f.add_argument("--fault-empty", metavar="BOARD:RATE", help="zero-suppressed fragments")
    f.add_argument("--fault-corrupt", type=float, metavar="RATE", help="corrupted frames")
    f.add_argument("--fault-duplicate", type=float, metavar="RATE", help="duplicated slices")
    f.add_argument("--fault-reorder", type=float, metavar="RATE", help="reordered slices")
    f.add_argument("--fault-ramp", type=float, metavar="R", help="intensity x (1 + R spill)")
    p.add_argument("--quiet", action="store_true", help="no size estimate, no progress bar")
    p.set_defaults(func=_simulate)


def _fault_dict(a: argparse.Namespace) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if a.fault_stop:
        parts = a.fault_stop.split(":")
        if len(parts) != 3:
            raise ConfigError("--fault-stop", a.fault_stop, "expected BOARD:SPILL:FRACTION")
        d.update(stop_board=parts[0], stop_spill=parts[1], stop_fraction=parts[2])
    if a.fault_empty:
        board, _, rate = a.fault_empty.partition(":")
        d.update(empty_board=board, empty_rate=rate or "1")
    for key in ("corrupt", "duplicate", "reorder"):
        v = getattr(a, f"fault_{key}")
        if v is not None:
            d[f"{key}_rate"] = v
    if a.fault_ramp is not None:
        d["ramp"] = a.fault_ramp
    return d


def _sim_dict(a: argparse.Namespace) -> dict[str, Any]:
    d: dict[str, Any] = {"intensity": a.intensity, "seed": a.seed, "mode": a.mode, "run": a.run}
    if a.generated_s is not None:
        d["generated_s"] = a.generated_s
    d["slice_events"] = a.slice_events or (4096 if a.mode == "feature" else 1024)
    if a.zero_suppress:
        d["zero_suppress"] = True
    if a.zs_adc is not None:
        d["zs_adc"] = a.zs_adc
    return {**d, **settings(a.set)}


def settings(items: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` items as a dict (the values validated by SimConfig)."""
    d: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError("--set", item, "expected KEY=VALUE")
        d[key.strip()] = value.strip()
    return d


def _simulate(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from daq.geometry import load_calibration, load_geometry
    from simulators import run
    from simulators.config import FaultConfig, SimConfig

    if a.spills < 1:
        raise ConfigError("--spills", a.spills, "must be at least 1")
    cfg = SimConfig.parse(_sim_dict(a))
    faults = FaultConfig.parse(_fault_dict(a))
    geom = load_geometry()
    calib = load_calibration(geom)
    where = a.out or a.to
    size = run.estimate(cfg, geom, calib, faults, a.spills)
    total = size.total(truth=a.truth is not None)
    if not a.quiet:
        print(f"simulate: {a.spills} spill(s) of ~{size.events / a.spills:,.0f} events (the "
              f"first {cfg.gen_s:g} s of each {cfg.spill_length_s:g} s spill at "
              f"{cfg.intensity:.3g} particles a spill), {cfg.mode} mode, "
              f"~{size.bytes_per_event:,.0f} B/event: about {_human(total)} "
              f"{'to write to' if a.out else 'to send to'} {where}"
              + (" (with the truth)" if a.truth else ""), flush=True)
    fe = run.build(cfg, geom, calib, faults, a.spills, a.truth is not None)
    columns = (TextColumn("spill {task.fields[spill]}/{task.fields[spills]}"), BarColumn(),
               DownloadColumn(), TextColumn("{task.fields[events]:,} events"),
               TimeRemainingColumn())
    with Progress(*columns, disable=a.quiet, transient=True,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("simulate", total=total, spill=0, spills=a.spills, events=0)
        events = 0

        def progress(em: Any) -> None:
            nonlocal events
            if em.msg.kind == "slice":
                events += em.msg.count if em.src == fe.boards[0] else 0
                bar.update(task, advance=em.msg.nbytes, events=events)
            elif em.src == fe.boards[0] and em.msg.kind == "spill_end":
                bar.update(task, spill=em.msg.spill + 1)

        if a.out:
            summary = run.to_file(fe, a.out, a.truth, progress)
        else:
            summary = run.to_endpoint(fe, a.to, pace=a.pace, factor=a.factor, truth=a.truth,
                                      progress=progress)
    events = max(summary.events.values(), default=0)
    print(f"simulated {a.spills} spill(s), {events} events per board, "
          f"{sum(summary.messages.values())} messages -> {where}")
    for path in summary.files:
        print(f"  wrote {path} ({_human(path.stat().st_size)})")
    return 0


def _human(n: float) -> str:
    """Bytes in the largest unit that keeps the figure at least 1: 48.0 MB, 3.46 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"
