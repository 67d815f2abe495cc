"""The run-control state machine as data: states, commands and one transition table.

    idle ──configure──> configured ──start──> running <──resume── paused
      ^  \\________________start______________^   │  \\──pause──────^  │
      │                                           stop                stop
    reset                                          v                   │
      └──── error <──fail── (any)          stopped <──────────────────┘
                                           (configure / start / reset from here)

`start` from idle or stopped configures implicitly (the snapshot is taken at start), so
the shift crew needs only start/stop/pause/resume. `fail` is internal: the service issues
it when the data path raises; only `reset` leaves `error`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daq.errors import StateError


class RunState(enum.StrEnum):
    IDLE = "idle"
    CONFIGURED = "configured"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"


class Command(enum.StrEnum):
    CONFIGURE = "configure"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    RESET = "reset"
    FAIL = "fail"


S, C = RunState, Command

#: (state, command) -> next state. Anything not listed is refused with StateError.
TRANSITIONS: Mapping[tuple[RunState, Command], RunState] = {
    (S.IDLE, C.CONFIGURE): S.CONFIGURED,
    (S.CONFIGURED, C.CONFIGURE): S.CONFIGURED,
    (S.STOPPED, C.CONFIGURE): S.CONFIGURED,
    (S.IDLE, C.START): S.RUNNING,
    (S.CONFIGURED, C.START): S.RUNNING,
    (S.STOPPED, C.START): S.RUNNING,
    (S.RUNNING, C.PAUSE): S.PAUSED,
    (S.PAUSED, C.RESUME): S.RUNNING,
    (S.RUNNING, C.STOP): S.STOPPED,
    (S.PAUSED, C.STOP): S.STOPPED,
    (S.CONFIGURED, C.RESET): S.IDLE,
    (S.STOPPED, C.RESET): S.IDLE,
    (S.ERROR, C.RESET): S.IDLE,
    **{(s, C.FAIL): S.ERROR for s in RunState},
}

#: States in which a run is open (the data path is taking data or holding it).
RUN_OPEN = frozenset({S.RUNNING, S.PAUSED})

#: Commands that people may send; `fail` is reserved for the service itself.
PUBLIC_COMMANDS = frozenset(Command) - {C.FAIL}


def next_state(state: RunState, command: Command) -> RunState:
    """The state after `command` in `state`; raises StateError if the table does not allow it."""
    try:
        return TRANSITIONS[(state, command)]
    except KeyError:
        raise StateError(state.value, command.value) from None


def allowed(state: RunState) -> list[str]:
    """The public commands accepted in `state`, for error messages and `ctl status`."""
    return sorted(c.value for (s, c) in TRANSITIONS if s is state and c in PUBLIC_COMMANDS)


@dataclass
class RunRecord:
    """One run: its number, configuration snapshot and what the data path counted."""

    run: int
    snapshot: dict[str, Any]
    started_by: str
    started_at: float
    stopped_at: float | None = None
    stop_reason: str | None = None
    events: int = 0
    spills: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "snapshot": self.snapshot, "started_by": self.started_by,
            "started_at": self.started_at, "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason, "events": self.events, "spills": self.spills,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunRecord:
        return cls(**{k: d[k] for k in (
            "run", "snapshot", "started_by", "started_at", "stopped_at", "stop_reason",
            "events", "spills")})


@dataclass
class ControlState:
    """Everything run control persists: survives a restart of the service.

    `replies` maps recently applied commands ("user/verb/id", core.reply_key) to the reply
    they got, so a command
    delivered twice (QoS 1 redelivery, a retrying client) is answered again, not re-applied.
    """

    state: RunState = RunState.IDLE
    last_run: int = 0
    run: RunRecord | None = None
    run_params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    trigger_active: dict[str, Any] | None = None
    trigger_desired: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value, "last_run": self.last_run,
            "run": self.run.to_json() if self.run else None,
            "run_params": self.run_params, "error": self.error, "replies": self.replies,
            "trigger_active": self.trigger_active, "trigger_desired": self.trigger_desired,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ControlState:
        run = d.get("run")
        return cls(
            state=RunState(d["state"]), last_run=int(d["last_run"]),
            run=RunRecord.from_json(run) if run else None,
            run_params=dict(d.get("run_params") or {}), error=d.get("error"),
            replies=dict(d.get("replies") or {}),
            trigger_active=d.get("trigger_active"), trigger_desired=d.get("trigger_desired"),
        )
