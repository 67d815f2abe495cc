"""A service's end of the run-control command channel: ZeroMQ DEALER to run control's ROUTER.

Every data-path service (front ends, builder, trigger workers, recorder, monitor) runs one
`Agent` loop. It says `hello` (name, pid, phase, run) when it connects, sends its status
document every `heartbeat_s`, applies the commands run control sends through the shared
lifecycle table (daq.lifecycle), answers each with a reply carrying the command's id, and
forwards the service's events (`run_closed`, `run_ended`, `activated`). Decision 0016 says
why this channel is ZeroMQ and not MQTT. docs/control.md has the message forms.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import zmq
import zmq.asyncio

from daq.curve import SocketHook
from daq.errors import DaqError, StateError
from daq.lifecycle import Lifecycle, Phase, RunContext, Transition
from daq.service import release_freed_memory
from daq.transport import context

log = logging.getLogger("na64.agent")

#: largest command or event document taken (bytes); anything larger is refused unread
MAX_DOC = 256 * 1024


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def loads(raw: bytes) -> dict[str, Any]:
    """A command-channel document; ValueError naming what is wrong."""
    if len(raw) > MAX_DOC:
        raise ValueError(f"document of {len(raw)} bytes, limit {MAX_DOC}")
    try:
        doc = json.loads(raw)
    except RecursionError:  # deep nesting: refused like any other malformed document
        raise ValueError("document nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
    return doc


class Participant(Protocol):
    """What a service gives its agent."""

    lifecycle: Lifecycle

    async def on_transition(self, transition: Transition, context: RunContext | None,
                            args: dict[str, Any]) -> dict[str, Any]:
        """Carry out `transition` (the table has allowed it); return reply fields."""
        ...

    def status(self) -> dict[str, Any]:
        """The service's status document (phase and run are added by the agent)."""
        ...

    async def on_set(self, args: dict[str, Any]) -> dict[str, Any]:
        """Apply settings that are no transition (the builder: a trigger configuration)."""
        ...


class Agent:
    """Connects to `endpoint`, identity `name`; see the module docstring."""

    def __init__(self, endpoint: str, name: str, participant: Participant, *,
                 ctx: zmq.asyncio.Context | None = None, heartbeat_s: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 secure: SocketHook | None = None) -> None:
        """`secure`: CURVE client options of the DEALER (daq.curve); with CURVE, run
        control hears this agent only if its key is the one listed under `name`."""
        self.endpoint = endpoint
        self.secure = secure
        self.name = name
        self.participant = participant
        self.ctx = ctx or context()
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = asyncio.Event()
        self.refused = 0  # commands refused (state or malformed)
        self.unsent = 0  # documents dropped while run control was not there
        self.commands = 0
        #: set once the hello is sent (or dropped: run control not there): readiness
        self.greeted = asyncio.Event()
        #: set when run control has said all it had to say after the hello (the trigger
        #: configuration, the run under way to rejoin): the `welcome` command, sent last
        self.welcomed = asyncio.Event()

    def notify(self, event: str, **fields: Any) -> None:
        """Queue an event for run control (sent by the agent's loop, in order)."""
        self._events.append({"t": "event", "event": event, **fields})
        self._wake.set()

    def document(self) -> dict[str, Any]:
        lc = self.participant.lifecycle
        return {"service": self.name, "pid": os.getpid(), "when": self.clock(),
                **lc.to_json(), **self.participant.status()}

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve the channel until `stopping` is set; says goodbye on the way out."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.name.encode())
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.SNDHWM, 1000)
        if self.secure is not None:
            self.secure(sock, self.endpoint)
        sock.connect(self.endpoint)
        try:
            await self._send(sock, {"t": "hello", **self.document()})
            self.greeted.set()
            next_beat = time.monotonic() + self.heartbeat_s
            stop_wait = asyncio.ensure_future(stopping.wait())
            try:
                while not stopping.is_set():
                    await self._flush(sock)
                    timeout = max(0.0, next_beat - time.monotonic())
                    self._wake.clear()
                    wake = asyncio.ensure_future(self._wake.wait())
                    rx = asyncio.ensure_future(sock.poll(int(timeout * 1000) + 1))
                    try:
                        await asyncio.wait({wake, rx, stop_wait},
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:  # cancelled too (the service is torn down): leave no task
                        for f in (wake, rx):
                            f.cancel()
                        await asyncio.gather(wake, rx, return_exceptions=True)
                    while await sock.poll(0):
                        reply = await self._command(await sock.recv())
                        await self._send(sock, reply)
                    if time.monotonic() >= next_beat:
                        next_beat = time.monotonic() + self.heartbeat_s
                        await self._send(sock, {"t": "status", **self.document()})
            finally:
                stop_wait.cancel()
                await asyncio.gather(stop_wait, return_exceptions=True)
            await self._flush(sock)
            await self._send(sock, {"t": "bye", **self.document()})
        finally:
            sock.close()

    async def _flush(self, sock: zmq.asyncio.Socket) -> None:
        while self._events:
            await self._send(sock, self._events.popleft())

    async def _send(self, sock: zmq.asyncio.Socket, doc: dict[str, Any]) -> None:
        """Never wait for run control: with nobody listening (not started yet, or being
        restarted) a document is dropped and counted; the next heartbeat says it again."""
        try:
            await sock.send(dumps(doc), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.unsent += 1

    async def _command(self, raw: bytes) -> dict[str, Any]:
        """Apply one command; every outcome is a reply (never an exception)."""
        self.commands += 1
        rid = None
        lc = self.participant.lifecycle
        try:
            doc = loads(raw)
            rid = doc.get("id")
            if doc.get("cmd") == "welcome":  # run control has nothing more to say now
                self.welcomed.set()
                return self._reply(rid, True)
            if doc.get("cmd") == "set":  # not a transition: settings applied in any phase
                args = doc.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError("'args' must be an object")
                return self._reply(rid, True, **await self.participant.on_set(args))
            transition = Transition(str(doc.get("cmd")))
            if transition is Transition.FAIL:
                raise ValueError("'fail' is not a command")
            args = doc.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
            ctx = RunContext.from_args(args) if transition is Transition.START else None
            if (transition is Transition.START and lc.phase in (Phase.RUNNING, Phase.PAUSED)
                    and ctx is not None and lc.run == ctx.run):
                return self._reply(rid, True, rejoined=False, already=True)  # repeated start
            if transition is Transition.STOP and lc.phase is Phase.CONFIGURED \
                    and args.get("run") is not None and args.get("run") != lc.run:
                return self._reply(rid, True, already=True)  # that run is closed here
            lc.check(transition)
            extra = await self.participant.on_transition(transition, ctx, args)
            lc.apply(transition, ctx)
            if transition is Transition.STOP:
                await release_freed_memory()  # the run's backlog, freed, back to the system
            return self._reply(rid, True, **extra)
        except StateError as e:
            self.refused += 1
            return self._reply(rid, False, error="state", reason=str(e))
        except (ValueError, TypeError) as e:
            self.refused += 1
            return self._reply(rid, False, error="malformed", reason=str(e))
        except DaqError as e:
            self.refused += 1
            lc.apply(Transition.FAIL, error=str(e))
            return self._reply(rid, False, error="failed", reason=str(e))

    def _reply(self, rid: Any, ok: bool, **fields: Any) -> dict[str, Any]:
        return {"t": "reply", "id": rid, "ok": ok, **fields, **self.document()}


async def run_agent(agent: Agent | None, stopping: asyncio.Event) -> None:
    """A service's `agent` loop: nothing when the service has no command channel."""
    if agent is not None:
        await agent.run(stopping)


AgentFactory = Callable[[Participant], Agent]
StartHook = Callable[[], Awaitable[None]]
