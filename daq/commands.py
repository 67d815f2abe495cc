"""`na64daq` subcommands of the daq package (parsing and printing only)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the na64daq parser."""
    p = sub.add_parser("inspect", help="summarise a run file per spill")
    p.add_argument("file", help="run file (closed or .partial)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("replay", help="re-send a recorded raw run into a running system")
    p.add_argument("file", help="raw run file")
    p.add_argument("--to", required=True, metavar="ENDPOINT", help="the builder's input")
    p.add_argument("--speed", default="max", help="realtime, max or a factor (default max)")
    p.add_argument("--spills", default=None, metavar="A:B", help="spills A to B inclusive")
    p.add_argument("--eos", action="store_true", help="also send the recorded end of stream")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_replay)


def _inspect(args: argparse.Namespace) -> int:
    from daq.inspect import format_text, summarize

    fs = summarize(args.file)
    print(json.dumps(fs.to_dict(), indent=2) if args.json else format_text(fs))
    return 0 if fs.closed_cleanly else 1


def _replay(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from daq.replay import parse_speed, parse_spills, replay

    speed, spills = parse_speed(args.speed), parse_spills(args.spills)
    with Progress("[bold magenta]REPLAY", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), disable=args.no_progress) as bar:
        task = bar.add_task("replay", total=None)

        def show(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        res = asyncio.run(replay(args.file, args.to, speed=speed, spills=spills,
                                 send_eos=args.eos, progress=show))
    print(f"replayed {res.messages} messages, {res.events} events, {res.bytes} bytes "
          f"in {res.seconds:.2f} s (marked replay)")
    return 0
