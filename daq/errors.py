"""The exception tree of the daq package.

    DaqError                      root of everything raised on purpose by this project
    ├── WireError                 a wire message could not be decoded or encoded (reason, detail)
    ├── ConfigError               a configuration or geometry value is invalid (field, value, bound)
    ├── RunFileError              a run file cannot be opened, written or read (path, offset)
    ├── StateError                a command is not allowed in the current state (state, command)
    └── ServiceError              a service was misused (e.g. started twice)

Other packages (trigger, monitors, simulators) derive their errors from DaqError too, so a
service can catch one root and count what it refused.
"""

from __future__ import annotations


class DaqError(Exception):
    """Root of every error this project raises on purpose."""


class WireError(DaqError):
    """A wire message is malformed. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConfigError(DaqError):
    """A configuration value is invalid: names the field, the value and the allowed range."""

    def __init__(self, field: str, value: object, bound: str) -> None:
        super().__init__(f"{field}={value!r} is invalid: {bound}")
        self.field = field
        self.value = value
        self.bound = bound


class RunFileError(DaqError):
    """A run file cannot be opened, written or read."""

    def __init__(self, path: str, detail: str, offset: int | None = None) -> None:
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{path}{where}: {detail}")
        self.path = path
        self.offset = offset
        self.detail = detail


class StateError(DaqError):
    """A command is not allowed in the current state."""

    def __init__(self, state: str, command: str) -> None:
        super().__init__(f"command {command!r} is not allowed in state {state!r}")
        self.state = state
        self.command = command


class ServiceError(DaqError):
    """A service was used in a way its lifecycle does not allow."""
