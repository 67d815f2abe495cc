"""`na64daq` subcommands of the trigger package (parsing and printing only)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the na64daq parser."""
    p = sub.add_parser("analyze", help="run the trigger over a run file, print per-spill results",
                       description="Run the trigger in-process over a run file as fast as "
                       "possible and print the per-spill trigger counts.")
    p.add_argument("file", help="run file (raw or built; a .partial file is read up to its "
                   "last complete record)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--trigger-config", metavar="FILE",
                   help="apply this configuration (JSON or TOML) to every spill instead of "
                   "the one recorded in the stream")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one setting of the configuration (repeatable)")
    p.set_defaults(func=_analyze)

    w = sub.add_parser("trigger-worker", help="run one trigger worker service",
                       description="PULL built slices from the builder, run the trigger, PUSH "
                       "accepted events to the recorder and features to the monitors; ends "
                       "when the input stream ends.")
    w.add_argument("--input", required=True, help="builder output endpoint (connect)")
    w.add_argument("--recorder", help="recorder endpoint (connect)")
    w.add_argument("--monitor", action="append", default=[], help="monitor endpoint (repeatable)")
    w.add_argument("--index", type=int, default=0, help="worker number (stream trigger-<i>)")
    w.add_argument("--metrics-port", type=int, help="serve /metrics on 127.0.0.1:PORT")
    w.set_defaults(func=_worker)


def _analyze(a: argparse.Namespace) -> int:
    from daq.geometry import load_geometry
    from trigger.analyze import analyze_run, load_config_file
    from trigger.config import TriggerConfig, apply_overrides

    cfg = None
    if a.trigger_config or a.set:
        geom = load_geometry()
        base = load_config_file(a.trigger_config, geom) if a.trigger_config else TriggerConfig()
        cfg = apply_overrides(base, a.set, geometry=geom)
    result = analyze_run(a.file, cfg)
    if a.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0
    from rich.console import Console

    from daq.live import run_summary, spill_table

    console = Console()
    console.print(spill_table(result["spills"], last=len(result["spills"])))
    console.print(run_summary(result["spills"], result.get("totals")))
    if result["refused"]:
        print(f"refused slices: {result['refused']}")
    return 0


def _worker(a: argparse.Namespace) -> int:
    import asyncio

    from trigger.worker import WorkerConfig, run_worker

    cfg = WorkerConfig.parse(
        {"input": a.input, "recorder": a.recorder, "monitors": a.monitor, "index": a.index})
    try:
        asyncio.run(run_worker(cfg, metrics_port=a.metrics_port))
    finally:
        from daq.transport import close_transport

        close_transport()  # the last zero-copy frames must leave before exit
    return 0
