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
    p.add_argument("--generated-s", type=float, default=None,
                   help="seconds of each spill to generate (default: the whole spill)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    for item in a.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError("--set", item, "expected KEY=VALUE")
        d[key.strip()] = value.strip()
    return d


def _simulate(a: argparse.Namespace) -> int:
    from rich.progress import Progress

    from daq.geometry import load_calibration, load_geometry
    from simulators import run
    from simulators.config import FaultConfig, SimConfig

    if a.spills < 1:
        raise ConfigError("--spills", a.spills, "must be at least 1")
    cfg = SimConfig.parse(_sim_dict(a))
    faults = FaultConfig.parse(_fault_dict(a))
    geom = load_geometry()
    fe = run.build(cfg, geom, load_calibration(geom), faults, a.spills, a.truth is not None)
    with Progress(disable=a.quiet, transient=True) as bar:
        task = bar.add_task("spills", total=a.spills)

        def progress(em: Any) -> None:
            if em.src == fe.boards[0] and em.msg.kind == "spill_end":
                bar.advance(task)

        if a.out:
            summary = run.to_file(fe, a.out, a.truth, progress)
        else:
            summary = run.to_endpoint(fe, a.to, pace=a.pace, factor=a.factor, truth=a.truth,
                                      progress=progress)
    events = max(summary.events.values(), default=0)
    where = a.out or a.to
    print(f"simulated {a.spills} spill(s), {events} events per board, "
          f"{sum(summary.messages.values())} messages -> {where}")
    for path in summary.files:
        print(f"  wrote {path}")
    return 0
