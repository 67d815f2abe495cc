"""What run control asks of the data path, and an in-memory twin of it.

The real implementation is daq.control.conductor.Conductor: it drives every service's
lifecycle over the command channel (start, drained stop, pause, resume, the trigger
configuration from the next spill boundary). The twin does the same bookkeeping without
a stream; tests and `python -m daq.control.service` drive its spills by hand.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from daq.control.core import Activation
from daq.errors import StateError


class DataPath(abc.ABC):
    """The data-path operations run control needs."""

    @abc.abstractmethod
    async def start_run(self, run: int, snapshot: Mapping[str, Any]) -> None:
        """Open run `run`; `snapshot` goes into the run's `run_start` marker."""

    @abc.abstractmethod
    async def stop_run(self) -> dict[str, int]:
        """Drain what is in flight, close the run; returns counts (`events`, `spills`)."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Stop taking new spills; the run stays open."""

    @abc.abstractmethod
    async def resume(self) -> None:
        """Take spills again."""

    @abc.abstractmethod
    async def set_trigger_config(self, config: Mapping[str, Any], who: str) -> None:
        """Apply `config` from the next spill boundary (at once when no run is open)."""

    @abc.abstractmethod
    async def activation(self) -> Activation:
        """Wait for the next configuration to become active and say from which spill."""

    async def run_ended(self) -> int:
        """Wait until the data path ends a run by itself (front ends after `max_spills`);
        returns its number. Data paths that never do wait forever."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def resume_trigger_config(self, config: Mapping[str, Any], who: str) -> None:
        """Run control restarted: give the data path what was active before. A data path
        that starts empty takes it like any change; one that can apply it at once does."""
        await self.set_trigger_config(config, who)


class MemoryDataPath(DataPath):
    """In-memory twin: counts spills and events it is told about, activates at spill starts."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._activations: asyncio.Queue[Activation] = asyncio.Queue()
        self._pending: tuple[dict[str, Any], str] | None = None
        self.run: int | None = None
        self.snapshot: dict[str, Any] | None = None
        self.paused = False
        self.spill: int | None = None
        self.spills = 0
        self.events = 0
        self.in_flight = 0
        self.active_config: dict[str, Any] | None = None
        self.closed_runs: list[dict[str, Any]] = []
        self.fail_next: str | None = None  # tests: make the next operation raise

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            reason, self.fail_next = self.fail_next, None
            raise RuntimeError(reason)

    async def start_run(self, run: int, snapshot: Mapping[str, Any]) -> None:
        self._maybe_fail()
        if self.run is not None:
            raise StateError("running", "start_run")
        self.run, self.snapshot = run, dict(snapshot)
        self.spill, self.spills, self.events, self.in_flight = None, 0, 0, 0
        self.paused = False

    async def stop_run(self) -> dict[str, int]:
        self._maybe_fail()
        if self.run is None:
            raise StateError("idle", "stop_run")
        await asyncio.sleep(0)  # a real drain waits for the stream; keep the await honest
        self.events += self.in_flight
        self.in_flight = 0
        counts = {"run": self.run, "events": self.events, "spills": self.spills}
        self.closed_runs.append({**counts, "snapshot": self.snapshot})
        self.run = None
        if self._pending is not None:
            self._activate(None)
        return {"events": counts["events"], "spills": counts["spills"]}

    async def pause(self) -> None:
        self._maybe_fail()
        self.paused = True

    async def resume(self) -> None:
        self._maybe_fail()
        self.paused = False

    async def set_trigger_config(self, config: Mapping[str, Any], who: str) -> None:
        self._maybe_fail()
        self._pending = (dict(config), who)
        if self.run is None:
            self._activate(None)

    async def activation(self) -> Activation:
        return await self._activations.get()

    # --- driving the twin (tests, demo) ----------------------------------------------

    def spill_start(self) -> int:
        """A spill begins: a pending configuration becomes active from it. Returns its number."""
        if self.run is None or self.paused:
            raise StateError("not running", "spill_start")
        self.spill = 0 if self.spill is None else self.spill + 1
        self.spills += 1
        if self._pending is not None:
            self._activate(self.spill)
        return self.spill

    def add_events(self, n: int, *, in_flight: int = 0) -> None:
        """Events recorded, and events still travelling (drained by stop_run)."""
        self.events += n
        self.in_flight += in_flight

    def _activate(self, spill: int | None) -> None:
        assert self._pending is not None
        config, who = self._pending
        self._pending = None
        self.active_config = config
        self._activations.put_nowait(Activation(config, who, self._clock(), self.run, spill))
