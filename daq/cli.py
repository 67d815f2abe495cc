"""The `na64daq` command: argument parsing and printing only; the logic lives in the packages.

Subcommands are contributed by `commands` modules of the packages; each has
`register(subparsers)` adding parsers whose `func(args) -> int` runs the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from daq import __version__
from daq.errors import DaqError

COMMAND_MODULES = (
    "daq.commands",
    "simulators.commands",
    "trigger.commands",
    "monitors.commands",
    "daq.control.commands",
    "daq.app_commands",
    "monitors.dashboard_commands",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="na64daq",
        description="Online missing-energy trigger and DAQ monitoring for an NA64-style "
        "experiment.",
    )
    p.add_argument("--version", action="version", version=f"na64daq {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _no_abbreviations(p)
    return p


def _no_abbreviations(p: argparse.ArgumentParser) -> None:
    """Options only by their full names: `demo --run 7` once meant `--run-dir 7` after
    `--run` was removed, and wrote run files into ./7. A misspelt option is an error."""
    p.allow_abbrev = False
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return int(func(args) or 0)
    except DaqError as e:
        print(f"na64daq {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, and keep Python from complaining
        # again when it flushes stdout at exit
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
