"""Errors of the simulators package (all derive from daq.errors.DaqError)."""

from __future__ import annotations

from daq.errors import DaqError


class SimulatorError(DaqError):
    """The simulator cannot do what was asked (e.g. a fault that needs a stream, not a file)."""
