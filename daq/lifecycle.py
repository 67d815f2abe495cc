"""The lifecycle every data-path service shares, as data: phases, transitions, one table.

    booted ──configure──> configured ──start N──> running <──resume── paused
                            ^   ^                   │  \\───pause─────^  │
                            │   └──────stop (drain)─┘                   │
                            └───────────────────stop────────────────────┘
    (any) ──shutdown──> terminated          (any) ──fail──> error ──configure──> configured

A service takes run after run in one process (DUNE-DAQ's conf/start/stop/scrap, artdaq's
init/start/pause/resume/stop/shutdown). What belongs to one run lives in a `RunContext`
that `start` opens and `stop` closes; end of stream means shutdown, not end of run.
`start` from `booted` configures implicitly (a service restarted during a run rejoins it
with one command). Sans I/O: no sockets, no event loop.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daq.errors import StateError


class Phase(enum.StrEnum):
    BOOTED = "booted"
    CONFIGURED = "configured"
    RUNNING = "running"
    PAUSED = "paused"
    ERROR = "error"
    TERMINATED = "terminated"


class Transition(enum.StrEnum):
    CONFIGURE = "configure"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    SHUTDOWN = "shutdown"
    FAIL = "fail"


P, T = Phase, Transition

#: (phase, transition) -> next phase. Anything else is refused with StateError.
TABLE: Mapping[tuple[Phase, Transition], Phase] = {
    (P.BOOTED, T.CONFIGURE): P.CONFIGURED,
    (P.CONFIGURED, T.CONFIGURE): P.CONFIGURED,
    (P.ERROR, T.CONFIGURE): P.CONFIGURED,
    (P.BOOTED, T.START): P.RUNNING,
    (P.CONFIGURED, T.START): P.RUNNING,
    (P.RUNNING, T.PAUSE): P.PAUSED,
    (P.PAUSED, T.RESUME): P.RUNNING,
    (P.RUNNING, T.STOP): P.CONFIGURED,
    (P.PAUSED, T.STOP): P.CONFIGURED,
    **{(p, T.SHUTDOWN): P.TERMINATED for p in Phase if p is not P.TERMINATED},
    **{(p, T.FAIL): P.ERROR for p in Phase if p is not P.TERMINATED},
}

#: phases in which a run context is open
RUN_OPEN = frozenset({P.RUNNING, P.PAUSED})


def next_phase(phase: Phase, transition: Transition) -> Phase:
    """The phase after `transition`; raises StateError naming both if the table refuses."""
    try:
        return TABLE[(phase, transition)]
    except KeyError:
        raise StateError(phase.value, transition.value) from None


def allowed(phase: Phase) -> list[str]:
    """Transitions accepted in `phase` (for refusals and status documents)."""
    return sorted(t.value for (p, t) in TABLE if p is phase and t is not T.FAIL)


@dataclass(frozen=True)
class RunContext:
    """One run as a service sees it: opened by `start`, closed by `stop`."""

    run: int
    replay: bool = False
    snapshot: dict[str, Any] = field(default_factory=dict)
    #: the service joined a run already under way (it was restarted during it)
    joined: bool = False
    #: front ends: end the run by themselves after this many spills (None: until stopped)
    max_spills: int | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> RunContext:
        """From a start command's arguments; StateError-free, ValueError on bad types."""
        run = args.get("run")
        if type(run) is not int or run < 0:
            raise ValueError(f"run={run!r} is not a run number (an integer >= 0)")
        ms = args.get("max_spills")
        if ms is not None and (type(ms) is not int or ms < 1):
            raise ValueError(f"max_spills={ms!r} must be an integer >= 1 or absent")
        snap = args.get("snapshot")
        snap = {} if snap is None else snap
        if not isinstance(snap, dict):
            raise ValueError("snapshot must be an object")
        return cls(run=run, replay=bool(args.get("replay", False)), snapshot=dict(snap),
                   joined=bool(args.get("joined", False)), max_spills=ms)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "replay": self.replay, "joined": self.joined,
                "max_spills": self.max_spills}


@dataclass
class Lifecycle:
    """A service's phase and open run, changed only through `apply`."""

    phase: Phase = Phase.BOOTED
    context: RunContext | None = None
    error: str | None = None
    runs_taken: int = 0

    def check(self, transition: Transition) -> Phase:
        """The phase `transition` would lead to (StateError if refused); changes nothing."""
        return next_phase(self.phase, transition)

    def apply(self, transition: Transition, context: RunContext | None = None,
              error: str | None = None) -> Phase:
        new = next_phase(self.phase, transition)
        if transition is T.START:
            if context is None:
                raise ValueError("start needs a run context")
            self.context = context
            self.runs_taken += 1
        elif transition in (T.STOP, T.SHUTDOWN) or new not in RUN_OPEN:
            self.context = None
        if transition is T.FAIL:
            self.error = error or "failed"
        elif transition is T.CONFIGURE:
            self.error = None
        self.phase = new
        return new

    @property
    def run(self) -> int | None:
        return self.context.run if self.context is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase.value, "run": self.run,
                "context": self.context.to_json() if self.context else None,
                "error": self.error, "runs_taken": self.runs_taken,
                "allowed": allowed(self.phase)}


# --- ready and settled: the one definition every stack and run control use ----------------

#: run-control states in which a run is open (the retained run-state document's `state`)
RUN_OPEN_STATES = frozenset({"running", "paused"})


def not_ready(docs: Mapping[str, Mapping[str, Any]], expected: Iterable[str],
              pids: Mapping[str, int] | None = None) -> list[str]:
    """The services of `expected` that are not ready yet (empty: the stack is ready).

    Ready means: the service's status document says `online`; it was sent by the very
    process in question when `pids` are known (a broker keeps the retained documents of
    earlier processes); and a service that reports `ready` (a trigger worker compiling
    its kernels) says true. `docs` are the status documents by service name, as run
    control holds them (Conductor.documents) or republishes them (`na64/services/<name>`).
    """
    missing = []
    for name in expected:
        d = docs.get(name) or {}
        if (d.get("status") != "online" or d.get("ready") is False
                or (pids is not None and d.get("pid") != pids.get(name))):
            missing.append(name)
    return missing


def run_settled(state: Mapping[str, Any], run: int | None = None) -> bool:
    """Run control's run-state document says the run is over: no run open, and, with
    `run`, that very run was the last one (closed, drained: run control answers a stop
    only once the recorder has closed the file and the monitor its last spill)."""
    if state.get("state") in RUN_OPEN_STATES or not state.get("state"):
        return False
    if run is None:
        return True
    last = state.get("run") or {}
    return last.get("run") == run or int(state.get("last_run") or 0) >= run
