"""`na64daq` subcommands of the daq.control package (parsing and printing only)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the na64daq parser."""
