"""Base class of every service: an async context manager running a TaskGroup of named loops."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ctypes
import ctypes.util
import enum
import signal
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from daq.errors import ServiceError
from daq.lifecycle import Lifecycle as RunLifecycle
from daq.lifecycle import RunContext, Transition

if TYPE_CHECKING:
    from daq.agent import Agent

Loop = Callable[[], Coroutine[Any, Any, None]]

#: the signals that ask a service process to drain and stop
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _libc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another C library)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(
            ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


MALLOC_TRIM = _libc_trim()


async def release_freed_memory() -> None:
    """Give the allocator's free memory back to the system. glibc keeps the arenas a
    burst freed (a run's input backlog, queued in this process by ZeroMQ), so a standing
    service's RSS would stay at its highest backlog, and grow in steps when a later run's
    backlog lands elsewhere; a stop trims it (a few ms, off the event loop)."""
    if MALLOC_TRIM is not None:
        await asyncio.to_thread(MALLOC_TRIM, 0)


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


async def next_or_stop(queue: asyncio.Queue[Any], stopping: asyncio.Event) -> Any | None:
    """The next item of `queue`, or None once `stopping` is set first (a standing service
    waiting for its next run)."""
    get = asyncio.ensure_future(queue.get())
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not get.done():
            get.cancel()
        await asyncio.gather(stop, return_exceptions=True)
    return get.result() if get.done() and not get.cancelled() else None


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
        #: the run lifecycle (daq.lifecycle) that run control drives through `agent`
        self.lifecycle = RunLifecycle()
        #: this service's end of the command channel (None: not under run control)
        self.agent: Agent | None = None

    # --- run lifecycle: services override what a transition means for them ---------------

    async def on_transition(self, transition: Transition, context: RunContext | None,
                            args: dict[str, Any]) -> dict[str, Any]:
        """Carry out a transition the table allowed; returns fields for the reply."""
        return {}

    async def on_set(self, args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"{self.name} takes no settings")

    def status(self) -> dict[str, Any]:
        """The status document's service-specific fields (JSON-able)."""
        return {}

    @abc.abstractmethod
    def loops(self) -> dict[str, Loop]:
        """The named coroutines that make up the service."""

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            main = [tg.create_task(fn(), name=f"{self.name}.{loop_name}")
                    for loop_name, fn in self.loops().items()]
            if self.agent is not None:
                # the command channel lives as long as the service's own loops: once they
                # have ended (end of stream, or drained after stop) it says goodbye
                tg.create_task(self._stop_after(main), name=f"{self.name}.ended")
                tg.create_task(self.agent.run(self.stopping), name=f"{self.name}.agent")

    async def _stop_after(self, tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.wait(tasks)
        self.stopping.set()

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
