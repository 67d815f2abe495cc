"""One Stack: the whole DAQ of a topology under run control, however it is deployed.

    async with LocalStack(cfg) as stack:            # daq.app: one process (demo, soak, tests)
    async with ProcessStack(path) as stack:         # daq.launch: processes (`up`, bench, crash)
        await stack.take_run(spills=3)              # start, 3 spills, stop: drained, recorded

Both are entered once every expected service is ready and leave in data-flow order after
closing a run still open. What "ready" and "settled" mean is defined once
(`daq.lifecycle.not_ready`, `daq.lifecycle.run_settled`) over the documents run control
itself holds: the services' status documents and run control's run-state document (the
one it publishes retained as `na64/control/state`). Nothing reads another object's private
state or scrapes /metrics to decide what to do next.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from daq.errors import ServiceError
from daq.lifecycle import not_ready, run_settled
from daq.stack import StackConfig

Tick = Callable[[], Awaitable[None]]


class Stack(abc.ABC):
    """Every service of `cfg` and its run control. Subclasses say where the documents come
    from, how a request reaches run control, and what one supervision step is."""

    cfg: StackConfig

    @property
    @abc.abstractmethod
    def expected(self) -> list[str]:
        """The services run control expects, in data-flow order."""

    @abc.abstractmethod
    def run_document(self) -> dict[str, Any]:
        """Run control's run-state document (`state`, `run`, `last_run`, `error`, ...)."""

    @abc.abstractmethod
    def service_documents(self) -> dict[str, dict[str, Any]]:
        """Each service's status document as run control holds it, by name."""

    def pids(self) -> Mapping[str, int] | None:
        """Each service's process id when they are processes of their own (None: one
        process, where a document cannot come from a process that no longer exists)."""
        return None

    @abc.abstractmethod
    async def request(self, verb: str, **args: Any) -> dict[str, Any]:
        """A run command (start, stop, pause, resume) as the shift crew sends it; the reply
        (`ok` false with a `reason` when refused)."""

    @abc.abstractmethod
    async def tick(self) -> None:
        """One step of waiting: a short sleep, and whatever supervision the stack does."""

    # --- ready ----------------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        return not_ready(self.service_documents(), self.expected, self.pids())

    def check_starting(self) -> None:
        """Raise ServiceError when a service cannot start (a process that exited); the
        in-process stack has nothing to check (a service that fails raises itself)."""
        return None

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every expected service is ready; ServiceError naming the missing ones, or
        the one that could not start (`check_starting`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while missing := self.not_ready():
            self.check_starting()
            if loop.time() > deadline:
                raise ServiceError(f"not ready within {timeout_s:g} s: {', '.join(missing)}")
            await self.tick()

    # --- runs -----------------------------------------------------------------------------

    @property
    def run_state(self) -> str:
        return str(self.run_document().get("state") or "unknown")

    @property
    def run(self) -> int | None:
        """The open run's number, or the last one's once it is closed (None: no run yet)."""
        r = self.run_document().get("run") or {}
        return int(r["run"]) if r.get("run") is not None else None

    async def start_run(self, *, spills: int | None = None, **params: Any) -> dict[str, Any]:
        """Run control's start; `spills`: the front ends end the run by themselves after that
        many, and run control stops it. ServiceError with run control's reason if refused."""
        if spills is not None:
            params["max_spills"] = spills
        reply = await self.request("start", params=params)
        if not reply.get("ok"):
            raise ServiceError(f"run control refused the start: {reply.get('reason', reply)}")
        return reply

    async def stop_run(self, reason: str = "stopped") -> dict[str, Any]:
        return await self.request("stop", reason=reason)

    async def wait_run_closed(self, run: int | None = None, *, on_tick: Tick | None = None,
                              until: Callable[[], bool] | None = None) -> bool:
        """Until run control says the run is settled (`run`: that very run), or `until()`
        is true (False then). `on_tick` runs after every step (a live view)."""
        while not run_settled(self.run_document(), run):
            if until is not None and until():
                return False
            await self.tick()
            if on_tick is not None:
                await on_tick()
        return True

    async def take_run(self, *, spills: int, on_tick: Tick | None = None,
                       until: Callable[[], bool] | None = None,
                       **params: Any) -> dict[str, Any]:
        """Start a run of `spills` spills and wait until it is closed; its run record."""
        reply = await self.start_run(spills=spills, **params)
        await self.wait_run_closed(reply.get("run"), on_tick=on_tick, until=until)
        return dict(self.run_document().get("run") or {})
