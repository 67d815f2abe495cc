"""Base class of every service: an async context manager running a TaskGroup of named loops."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import signal
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self

from daq.errors import ServiceError

Loop = Callable[[], Coroutine[Any, Any, None]]

#: the signals that ask a service process to drain and stop
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call `stop` (drain, then end) instead of killing the process."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)


def ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Once a service has drained: a late SIGTERM/SIGINT must not kill the exiting process.

    Closing the event loop would put the default handlers back, and a supervisor that asks
    every service to stop can signal one that already ended its input and is tearing the
    interpreter down; it would then report death by signal (-15) for a clean exit.
    """
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


class Lifecycle(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"


class Service(abc.ABC):
    """A service runs named loops in one TaskGroup; `stop()` asks them to drain and return.

    Usage::

        async with MyService(...) as svc:
            await svc.wait()          # until the loops finish (or stop() is called)

    Leaving the block cancels whatever loop is still running. Subclasses implement
    `loops()` and check `self.stopping` to drain in-flight work before they return.
    """

    name: str = "service"

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.state = Lifecycle.NEW
        self._runner: asyncio.Task[None] | None = None

    @abc.abstractmethod
    def loops(self) -> dict[str, Loop]:
        """The named coroutines that make up the service."""

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for loop_name, fn in self.loops().items():
                tg.create_task(fn(), name=f"{self.name}.{loop_name}")

    async def __aenter__(self) -> Self:
        if self.state is not Lifecycle.NEW:
            raise ServiceError(f"{self.name} is {self.state.value}, cannot start again")
        self.state = Lifecycle.RUNNING
        self._runner = asyncio.create_task(self._run(), name=f"{self.name}.supervisor")
        return self

    def stop(self) -> None:
        """Ask the loops to drain and finish."""
        if self.state is Lifecycle.RUNNING:
            self.state = Lifecycle.STOPPING
        self.stopping.set()

    async def wait(self) -> None:
        """Wait until every loop has returned (re-raises a loop's failure)."""
        if self._runner is None:
            raise ServiceError(f"{self.name} was never started")
        await asyncio.shield(self._runner)

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.stop()
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
        if runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self.state = Lifecycle.CLOSED
