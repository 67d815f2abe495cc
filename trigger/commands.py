"""`na64daq` subcommands of the trigger package (parsing and printing only)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the na64daq parser."""
    p = sub.add_parser("analyze", help="re-analyse a run file, print per-spill results",
                       description="Re-analyse a run file in-process: a raw file through the "
                       "builder, the trigger and the monitors; a recorded file (accepted "
                       "events) as far as its events allow (it says what it re-derived). A "
                       "file without events is an error.")
    p.add_argument("file", nargs="+", help="run file(s) of any kind (a .partial file is read "
                   "up to its last complete record); several are analysed in parallel on "
                   "Dask and printed in the order given")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="several files: an existing Dask cluster's scheduler (tcp://HOST:PORT) "
                   "instead of a local one")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="several files: worker processes of the local Dask cluster (default 2)")
    p.add_argument("--serial", action="store_true",
                   help="several files: one after the other in this process, no Dask")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    add_trigger_config_args(p)
    p.add_argument("--sample", choices=("unbiased", "accepted"), default="unbiased",
                   help="recorded files: the accepted events the monitor figures are made "
                   "of (default unbiased: those with the prescaled beam or random bit)")
    p.add_argument("--unblind", action="store_true",
                   help="show the signal box's count (withheld by default: blind analysis, "
                   "docs/monitors.md)")
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
    from daq.analysis.reanalyze import analyze_file
    from monitors.config import MonitorConfig

    cfg = trigger_config_from_args(a)
    if len(a.file) == 1 and a.scheduler is None:
        result = analyze_file(a.file[0], cfg, MonitorConfig(blind=not a.unblind),
                              sample=a.sample)
        if a.json:
            json.dump(result, sys.stdout, indent=1)
            print()
            return 0
        _print_analysis(result)
        return 0
    results = _analyze_many(a, cfg)
    errors = [r for r in results if "error" in r]
    if a.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    else:
        for r in results:
            if "error" not in r:
                _print_analysis(r)
    for r in errors:
        print(f"na64daq analyze: error: {r['error']}", file=sys.stderr)
    return 2 if errors else 0


def _analyze_many(a: argparse.Namespace, cfg: Any) -> list[dict[str, Any]]:
    """Several files: on Dask (a local cluster, or --scheduler), or --serial."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from daq.analysis.parallel import analyze_many, analyze_serial
    from daq.errors import ConfigError

    if not 1 <= a.workers <= 256:
        raise ConfigError("--workers", a.workers, "1 to 256 worker processes")
    where = ("serial" if a.serial else a.scheduler or f"local Dask cluster, {a.workers} "
             "worker processes")
    with Progress(f"[bold]analyze ({where})", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True, disable=a.no_progress,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("files", total=len(a.file))

        def show(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if a.serial:
            return analyze_serial(a.file, trigger_config=cfg, sample=a.sample, progress=show,
                                  blind=not a.unblind)
        return analyze_many(a.file, scheduler=a.scheduler, workers=a.workers,
                            trigger_config=cfg, sample=a.sample, progress=show,
                            blind=not a.unblind)


def add_trigger_config_args(p: argparse.ArgumentParser) -> None:
    """--trigger-config FILE and --set KEY=VALUE: decide with another configuration."""
    p.add_argument("--trigger-config", metavar="FILE",
                   help="apply this configuration (JSON or TOML) to every spill instead of "
                   "the one recorded in the stream")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one setting of the configuration (repeatable)")


def trigger_config_from_args(a: argparse.Namespace) -> Any:
    """The TriggerConfig of --trigger-config / --set, or None (the recorded one)."""
    from daq.geometry import load_geometry
    from trigger.analyze import load_config_file
    from trigger.config import TriggerConfig, apply_overrides

    if not (a.trigger_config or a.set):
        return None
    geom = load_geometry()
    base = load_config_file(a.trigger_config, geom) if a.trigger_config else TriggerConfig()
    return apply_overrides(base, a.set, geometry=geom)


def _print_analysis(result: dict[str, Any]) -> None:
    import sys

    from rich.console import Console

    from daq.live import run_summary, spill_table
    from monitors.alarmtext import line as alarm_line
    from monitors.config import Band

    # into a file or a pipe rich assumes 80 columns and cuts every figure to an ellipsis
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"{result['file']}: {result['kind']} run file, run {result.get('run')}"
                  + (" (replay)" if result.get("replay") else ""))
    if result["kind"] == "recorded":
        console.print(_recorded_table(result))
    else:
        console.print(spill_table(result["spills"], last=len(result["spills"])))
        raised = sorted({a["alarm"] for a in result.get("alarms", [])
                         if a["state"] == "raised"})
        console.print(run_summary(result["spills"], result.get("totals"), raised))
    for a in result.get("alarms", []):  # judged on the spills in order, as online
        console.print("alarm " + alarm_line(a["alarm"], a["state"], a["value"],
                                            Band(**a["band"]), spill=a["spill"]),
                      highlight=False, soft_wrap=True)
    for line in result.get("derived", []):
        console.print(f"derived: {line}", highlight=False, soft_wrap=True)
    for line in result.get("not_derived", []):
        console.print(f"not derived: {line}", highlight=False, soft_wrap=True)
    if result.get("monitor_sample"):
        console.print(f"monitor sample: {result['monitor_sample']}", highlight=False,
                      soft_wrap=True)
    if result["refused"]:
        print(f"refused slices: {result['refused']}")


def _recorded_table(result: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title="Spills of a recorded file (accepted events)", box=box.SIMPLE_HEAD,
              show_edge=False)
    for col in ("spill", "events", "accepted", "phys", "beam", "rand", "calib", "EOT",
                "E scale", "features ok", "re-run same", "VETO eff", "HCAL eff", "cfg"):
        t.add_column(col, justify="right")

    def eff(e: dict[str, Any] | None) -> str:
        if not e or e.get("value") is None:
            return "-"
        return f"{e['value']:.3f}±{(e['high'] - e['low']) / 2:.3f} (n={e['n']})"

    for s in [*result["spills"], {**result["totals"], "spill": "all", "trigger_cfg": None}]:
        trig, eot, mon = s["triggers"], s.get("eot"), s.get("monitor") or {}
        scale = s.get("ecal_scale")
        feat, rerun = s["features"], s.get("rerun") or {}
        t.add_row(str(s["spill"]), f"{s['events'] or 0:,}", f"{s['accepted']:,}",
                  *(str(trig[k]) for k in ("physics", "beam", "random", "calibration")),
                  "-" if not eot else f"{eot['value']:,.0f}",
                  "-" if not scale else f"{scale['value']:.3f}",
                  f"{feat['checked'] - feat['differ']}/{feat['checked']}",
                  f"{rerun.get('same_bits', 0)}/{rerun.get('events', 0)}",
                  eff(mon.get("veto_efficiency")), eff(mon.get("hcal_efficiency")),
                  (s.get("trigger_cfg") or "-")[:6])
    return t


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
