"""Errors of the trigger package.

    DaqError (daq.errors)
    └── TriggerError          root of the trigger package's own errors
        └── SliceError        a built slice cannot be processed (reason, detail); the worker
                              refuses it and counts it under `reason`

A bad trigger configuration raises daq.errors.ConfigError (field, value, bound).
"""

from __future__ import annotations

from daq.errors import DaqError


class TriggerError(DaqError):
    """Root of the trigger package's errors."""


class SliceError(TriggerError):
    """A built slice is refused. `reason` is a short label (a metric label value)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
