"""`na64daq dashboards build|check|push` (parsing and printing only)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the dashboards subcommand to the na64daq parser."""
