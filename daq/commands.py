"""`na64daq` subcommands of the daq package (parsing and printing only)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the na64daq parser."""
    p = sub.add_parser("curve", help="CURVE keys of an installation (daq.curve)")
    cv = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    k = cv.add_parser("keys", help="write a key pair per service: DIR/public/<name>.key (to "
                      "every host) and DIR/secret/<name>.key_secret (only to its host)",
                      description="Existing pairs are kept. Name the services with --names "
                      "or take every service of a topology (and run control) with --config.")
    k.add_argument("dir", type=Path, metavar="DIR")
    names = k.add_mutually_exclusive_group(required=True)
    names.add_argument("--names", metavar="A,B,...", help="service names, comma separated")
    names.add_argument("--config", type=Path, metavar="FILE", help="topology TOML")
    k.set_defaults(func=_curve_keys)

    p = sub.add_parser("inspect", help="summarise a run file per spill")
    p.add_argument("file", help="run file (closed or .partial)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("replay", help="re-send a run file into a running system",
                       description=(
                           "With --config: a replay run of its own in the standing system of "
                           "that topology (run control gives it a run number, marks it replay, "
                           "refuses it while a live run is open). With --to: send the file to "
                           "a builder's input as it is (no run control), waiting until it is "
                           "delivered. A raw file is sent as recorded; a recorded file's "
                           "accepted events are sent again as board streams (renumbered, "
                           "decided by the receiving system's trigger: docs/analysis.md)."))
    p.add_argument("file", help="raw or recorded run file")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="FILE", help="topology of a running `na64daq up`")
    where.add_argument("--to", metavar="ENDPOINT", help="a builder's input (no run control)")
    p.add_argument("--as", dest="user", default="shift", help="broker account (default shift)")
    p.add_argument("--speed", default="max", help="realtime, max or a factor (default max)")
    p.add_argument("--spills", default=None, metavar="A:B", help="spills A to B inclusive")
    p.add_argument("--eos", action="store_true", help="also send the recorded end of stream")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="--to: seconds to wait for a receiver, for it to take the next "
                   "message, and for the last ones to be delivered (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_replay)

    from trigger.commands import add_trigger_config_args

    p = sub.add_parser("export", help="write a run file's events as Parquet, ROOT or HDF5",
                       description="Write the events of a run file of any kind (docs/"
                       "analysis.md) as Parquet (pyarrow), a ROOT TTree (uproot) or HDF5 "
                       "(h5py), spill by spill; pip install 'na64-daq[export]'.")
    p.add_argument("file", help="run file (raw, recorded, replay run, truth)")
    p.add_argument("--format", required=True, choices=("parquet", "root", "hdf5"))
    p.add_argument("--out", required=True, metavar="PATH", help="file to write")
    add_trigger_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_export)

    p = sub.add_parser("plot", help="draw a run file's E_ECAL spectrum, E_ECAL-E_HCAL plane "
                       "and per-spill figures as PNG files",
                       description="Draw the pictures of a run file (docs/analysis.md, "
                       "\"Plots\") with matplotlib and mplhep into a directory: "
                       "ecal_spectrum.png, ecal_hcal_plane.png, spill_figures.png and the "
                       "numbers drawn, plots.json; pip install 'na64-daq[plots]'.")
    p.add_argument("file", help="run file with events (raw, recorded, replay run)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the files")
    p.add_argument("--sample", choices=("unbiased", "accepted"), default="unbiased",
                   help="recorded files: the events of the per-spill figures (as analyze)")
    p.add_argument("--monitor-config", metavar="FILE", help="monitor configuration (signal "
                   "box, cuts, blind) as TOML or JSON")
    p.add_argument("--unblind", action="store_true",
                   help="show the signal box's events and count (blind by default)")
    add_trigger_config_args(p)
    p.set_defaults(func=_plot)


def _inspect(args: argparse.Namespace) -> int:
    from daq.inspect import format_text, summarize

    fs = summarize(args.file)
    print(json.dumps(fs.to_dict(), indent=2) if args.json else format_text(fs))
    return 0 if fs.closed_cleanly else 1


def _export(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from daq.analysis.export import export
    from trigger.commands import trigger_config_from_args

    with Progress(transient=True, disable=args.no_progress,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("export (spills)", total=None)
        res = export(args.file, args.format, args.out,
                     trigger_config=trigger_config_from_args(args),
                     progress=lambda done, total: bar.update(task, completed=done, total=total))
    spills = (f"spills {res.spills[0]}-{res.spills[-1]}" if len(res.spills) > 1
              else f"spill {res.spills[0]}")
    print(f"exported {res.events:,} events of {spills} to {res.path} ({res.format}, "
          f"{res.bytes:,} bytes, {len(res.columns)} columns)")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from daq.analysis.plots import plot_file
    from monitors.config import load_config
    from trigger.commands import trigger_config_from_args

    mcfg = load_config(args.monitor_config)
    if args.unblind:
        mcfg = mcfg.model_copy(update={"blind": False})
    for path in plot_file(args.file, args.out, monitor_config=mcfg,
                          sample=args.sample, trigger_config=trigger_config_from_args(args)):
        print(f"wrote {path}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    import sys

    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from daq.errors import ConfigError
    from daq.replay import check_endpoint, parse_speed, parse_spills, replay

    speed, spills = parse_speed(args.speed), parse_spills(args.spills)
    if args.config:
        return _replay_run(args, speed, spills)
    check_endpoint(args.to)
    if not 0 < args.timeout <= 86400:
        raise ConfigError("--timeout", args.timeout, "seconds within (0, 86400]")
    with Progress("[bold magenta]REPLAY", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), disable=args.no_progress) as bar:
        task = bar.add_task("replay", total=None)

        def show(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        res = asyncio.run(replay(args.file, args.to, speed=speed, spills=spills,
                                 send_eos=args.eos, progress=show, timeout_s=args.timeout))
    if not res.delivered:
        print(f"sent {res.messages} messages ({res.events} events) in {res.seconds:.2f} s; "
              f"{'not all' if res.messages else 'none'} delivered")
        print(f"na64daq replay: error: {res.reason}", file=sys.stderr)
        return 1
    print(f"replayed {res.messages} messages, {res.events} events, {res.bytes} bytes "
          f"in {res.seconds:.2f} s (marked replay), all delivered to {args.to}")
    return 0


def _replay_run(args: argparse.Namespace, speed: float, spills: Any) -> int:
    """A replay run in the standing system of a topology (run control over MQTT)."""
    import sys
    from pathlib import Path

    from daq.control.localbroker import require_credentials
    from daq.errors import DaqError
    from daq.geometry import load_calibration, load_geometry
    from daq.mqtt import MqttSettings
    from daq.replay import check_configuration, replay_run
    from daq.stack import load_stack_config

    try:
        cfg = load_stack_config(args.config)
        geom = load_geometry(cfg.geometry)  # the files the topology's `na64daq up` loads
        note = check_configuration(args.file, geom.hash,
                                   load_calibration(geom, cfg.calibration).hash)
        if note:
            print(f"na64daq replay: note: {note}", file=sys.stderr)
        settings = (MqttSettings.from_env().model_copy(update={"host": _host(cfg.mqtt),
                                                               "port": _port(cfg.mqtt)})
                    if cfg.mqtt else MqttSettings.from_file(require_credentials(
                        Path(cfg.run_dir), args.user, config=Path(args.config))))
        res, stop = asyncio.run(replay_run(args.file, cfg.endpoints.builder_in, settings,
                                           speed=speed, spills=spills))
    except DaqError as e:
        print(f"na64daq replay: error: {e}", file=sys.stderr)
        return 1
    if not res.delivered:
        print(f"na64daq replay: error: {res.reason}", file=sys.stderr)
    print(f"replay run {stop['run']}: sent {res.messages} messages, {res.events} events in "
          f"{res.seconds:.2f} s; run control closed it with {stop.get('spills')} spills, "
          f"{stop.get('events')} events ({'ok' if stop.get('ok') else stop.get('reason')})")
    if not stop.get("ok") or not stop.get("events"):
        print("na64daq replay: error: the replay run recorded no event", file=sys.stderr)
        return 1
    if stop.get("events") != res.events:
        print(f"na64daq replay: error: the monitors counted {stop.get('events')} events of "
              f"the {res.events} sent", file=sys.stderr)
        return 1
    return 0 if res.delivered else 1


def _host(url: str | None) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url or "").hostname or "127.0.0.1"


def _port(url: str | None) -> int:
    from urllib.parse import urlsplit

    return urlsplit(url or "").port or 1883


def _curve_keys(a: argparse.Namespace) -> int:
    from daq.curve import generate_installation

    if a.config is not None:
        from daq.app import member_names
        from daq.stack import load_stack_config

        names = [*member_names(load_stack_config(a.config)), "control"]
    else:
        names = [n.strip() for n in a.names.split(",") if n.strip()]
    made = generate_installation(a.dir, names)
    kept = [n for n in names if n not in made]
    print(f"wrote {len(made)} key pair(s) into {a.dir}: {', '.join(made) or '-'}"
          + (f"; kept existing: {', '.join(kept)}" if kept else ""))
    return 0
