"""Run control's end of the command channel: a ROUTER that drives every service's lifecycle.

The `Conductor` is the DataPath that run control (daq.control.service, or the demo's
in-process controller) acts through. Services connect with an `Agent` (daq.agent) and say
hello; the conductor sends them transitions in data-flow order and waits for each reply:

    start N:  recorder, monitor, trigger workers, builder (snapshot)  then  front ends
    stop:     front ends (they end the spill under way and send run_stop)  then  builder
              (closes the run once every board's run_stop is in)  then  wait until the
              recorder has closed the run's file and the monitor its summary
    pause / resume: front ends (they hold at the next spill boundary)

A service that says hello while a run is open (it was restarted) is brought into the run
(`start` with `joined`); the builder first gets the active trigger configuration, applied
at once. Front ends that end a run by themselves (`max_spills`) raise `run_ended`, which
run control answers with its ordinary stop.

With CURVE (`keys`: each service's public key, daq.curve) the name is bound to the key: a
message whose ZAP-authenticated key (its User-Id) is not the one listed under the name it
claims is refused and counted (`impostors`), and the name counts as offline until its
own key speaks again: the impostor's connection holds the name's route meanwhile
(ROUTER_HANDOVER, which a restarted service needs), so commands to it would go astray
(decision 0018).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from daq.agent import dumps, loads
from daq.control.core import Activation
from daq.control.datapath import DataPath
from daq.curve import SocketHook
from daq.errors import DaqError, StateError
from daq.lifecycle import RUN_OPEN, Phase, not_ready
from daq.transport import context

log = logging.getLogger("na64.conductor")

#: the stages of a start, in order (front ends last: they make the data)
START_ORDER = ("recorder", "monitor", "trigger", "builder", "frontend")
SINKS = ("recorder", "monitor")


class DataPathError(DaqError):
    """A service refused a transition or did not answer in time."""

    def __init__(self, service: str, command: str, reason: str) -> None:
        super().__init__(f"{service} {command}: {reason}")
        self.service = service
        self.command = command
        self.reason = reason


#: commands for a service in the run: after a restart, sent once it has rejoined it
_IN_RUN = frozenset({"stop", "pause", "resume"})


def role(name: str) -> str:
    """`trigger-1` -> `trigger`."""
    return name.split("-", 1)[0]


@dataclass
class Member:
    """One service as run control sees it."""

    name: str
    doc: dict[str, Any] = field(default_factory=dict)
    last_seen: float = 0.0
    online: bool = False
    hellos: int = 0

    @property
    def phase(self) -> Phase:
        try:
            return Phase(self.doc.get("phase", "booted"))
        except ValueError:
            return Phase.ERROR


@dataclass
class OpenRun:
    run: int
    replay: bool
    snapshot: dict[str, Any]
    max_spills: int | None
    closed: dict[str, dict[str, Any]] = field(default_factory=dict)  # sink -> its event
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended_by_frontends: bool = False


class Conductor(DataPath):
    """Binds a ROUTER on `endpoint`; `members` are the service names expected to connect."""

    def __init__(self, endpoint: str, members: Sequence[str], *,
                 ctx: zmq.asyncio.Context | None = None, reply_timeout_s: float = 30.0,
                 close_timeout_s: float = 120.0, stale_s: float = 5.0,
                 rejoin_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 secure: SocketHook | None = None,
                 keys: Mapping[str, bytes] | None = None) -> None:
        """`secure`: CURVE server options of the ROUTER; `keys`: name -> z85 public key,
        the only key each name is heard from."""
        super().__init__()
        self.ctx = ctx or context()
        self.expected = tuple(members)
        self.members: dict[str, Member] = {n: Member(n) for n in members}
        self.reply_timeout_s = reply_timeout_s
        self.close_timeout_s = close_timeout_s
        #: a command to a service that is not connected waits this long for it to come back
        #: (a supervisor restarting it) before it fails
        self.rejoin_timeout_s = rejoin_timeout_s
        self.stale_s = stale_s
        self.clock, self.monotonic = clock, monotonic
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted service takes its name
        self.keys = dict(keys) if keys is not None else None
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to nobody raises, not drops
        if secure is not None:
            secure(self.sock, endpoint)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._activations: asyncio.Queue[Activation] = asyncio.Queue()
        self._ended: asyncio.Queue[int] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._rejoins: set[asyncio.Task[None]] = set()
        self.open: OpenRun | None = None
        self.paused = False
        self.trigger: tuple[dict[str, Any], str] | None = None  # last configuration given
        self.unknown = 0  # messages from names not in the topology, or malformed
        self.impostors = 0  # messages refused: the name's listed key did not send them
        #: the CURVE authenticator of this process, when configured (daq.curve): stopped here
        self.authenticator: Any = None
        self.refusals: list[dict[str, Any]] = []

    # --- the channel ------------------------------------------------------------------

    async def serve(self, stopping: asyncio.Event) -> None:
        """Receive hellos, statuses, replies and events until `stopping`."""
        try:
            while not stopping.is_set():
                if not await self.sock.poll(200):
                    self._expire()
                    continue
                while await self.sock.poll(0):
                    got = await self._recv()
                    if got is not None:
                        self._take(*got)
                self._expire()
        finally:
            for t in list(self._rejoins):
                t.cancel()
            await asyncio.gather(*self._rejoins, return_exceptions=True)
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(DataPathError("run control", "stop", "shutting down"))
            self.sock.close()
            if self.authenticator is not None:
                await self.authenticator.aclose()

    async def _recv(self) -> tuple[str, bytes] | None:
        """(name, document); None: refused, not the key of that name."""
        frames = await self.sock.recv_multipart(copy=False)
        if len(frames) != 2:
            return "", b""
        ident = frames[0].bytes.decode(errors="replace")
        if self.keys is not None and ident in self.members \
                and str(frames[1].get("User-Id")).encode() != self.keys.get(ident):
            self.impostors += 1  # refused unread: another key claims this name
            self.members[ident].online = False  # and holds its route for now
            self._changed.set()
            log.warning("command channel: %r claimed by a key not its own: refused", ident)
            return None
        return ident, frames[1].bytes

    def _take(self, ident: str, raw: bytes) -> None:
        m = self.members.get(ident)
        try:
            doc = loads(raw)
        except ValueError:
            self.unknown += 1
            return
        if m is None:
            self.unknown += 1
            log.warning("command channel: %r is not a service of this topology", ident)
            return
        t = doc.get("t")
        m.last_seen = self.monotonic()
        back = not m.online and t == "status"  # its hello was lost: as good as one
        if t in ("hello", "status", "reply", "bye"):
            m.doc = {k: v for k, v in doc.items() if k not in ("t", "id", "ok")}
            m.online = t != "bye"
            self._changed.set()
        if t in ("status", "hello", "reply"):
            self._closed_by_document(m)
        if t == "hello" or back:
            m.hellos += 1
            self._maybe_rejoin(m)
        elif t == "reply":
            fut = self._waiting.pop(str(doc.get("id")), None)
            if fut is not None and not fut.done():
                fut.set_result(doc)
        elif t == "event":
            self._event(m, doc)

    def _expire(self) -> None:
        now = self.monotonic()
        for m in self.members.values():
            if m.online and now - m.last_seen > self.stale_s:
                m.online = False
                self._changed.set()

    def _event(self, m: Member, doc: dict[str, Any]) -> None:
        ev = doc.get("event")
        run = self.open
        if ev == "run_closed" and run is not None and doc.get("run") == run.run \
                and bool(doc.get("replay")) == run.replay:
            run.closed[role(m.name)] = doc
            if all(s in run.closed for s in SINKS if s in self._roles()):
                run.done.set()
        elif ev == "run_ended" and run is not None and doc.get("run") == run.run:
            if not run.ended_by_frontends:
                run.ended_by_frontends = True
                self._ended.put_nowait(run.run)
        elif ev == "activated":
            config, run_, spill = doc.get("config"), doc.get("run"), doc.get("spill")
            if not isinstance(config, dict) or not all(
                    v is None or type(v) is int for v in (run_, spill)):
                self.unknown += 1  # refused: not what a builder sends
                log.warning("command channel: malformed 'activated' from %s", m.name)
                return
            self._activations.put_nowait(Activation(
                config, str(doc.get("who", "")), self.clock(), run_, spill))

    def _closed_by_document(self, m: Member) -> None:
        """A sink's status names the last run it closed: the event that said so may have
        been lost (run control was being restarted)."""
        run = self.open
        if run is None or role(m.name) not in SINKS:
            return
        last = m.doc.get("last_closed") or m.doc.get("last_run")
        if isinstance(last, dict) and last.get("run") == run.run \
                and bool(last.get("replay")) == run.replay:
            self._event(m, {**last, "event": "run_closed"})

    async def adopt_run(self, run: int, *, replay: bool, snapshot: Mapping[str, Any],
                        max_spills: int | None, timeout_s: float = 30.0) -> bool:
        """Run control was restarted while run `run` was open: take it up again if the
        builder is still in it (the data never stopped). A run whose front ends ended it
        meanwhile is stopped at once (`run_ended`). False: the run is gone."""
        deadline = self.monotonic() + timeout_s
        names = self.names("builder") + ([] if replay else self.names("frontend"))
        while not all(self.members[n].online for n in names):
            if self.monotonic() > deadline:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)
        builder = self.members[names[0]]
        if builder.phase not in RUN_OPEN or builder.doc.get("run") != run:
            return False
        self.open = OpenRun(run, replay, dict(snapshot), max_spills)
        for m in self.members.values():
            self._closed_by_document(m)
        fe = [self.members[n] for n in self.names("frontend")]
        if not replay and fe and not any(m.doc.get("streaming") for m in fe):
            self.open.ended_by_frontends = True
            self._ended.put_nowait(run)
        log.warning("run control restarted: took up run %d, still open in the data path", run)
        return True

    def _roles(self) -> set[str]:
        return {role(n) for n in self.expected}

    # --- commands ---------------------------------------------------------------------

    async def _send(self, name: str, cmd: str, frames: list[bytes]) -> None:
        """Send a command; to a service that is not connected (ROUTER_MANDATORY raises),
        once it is back: a supervisor restarts a crashed service, and a stop that reached
        nobody would turn a recoverable crash into a failed run. In a run, "back" means
        rejoined (its welcome brought it into the run), so that a stop never overtakes
        the start that brings a restarted service into the run."""
        deadline = self.monotonic() + self.rejoin_timeout_s
        m = self.members.get(name)
        waited = False
        while True:
            try:
                await self.sock.send_multipart(frames)
                return
            except zmq.ZMQError as e:
                if m is None or self.monotonic() >= deadline:
                    raise DataPathError(name, cmd, f"not connected ({e.strerror})"
                                        + (f"; not back within {self.rejoin_timeout_s:g} s"
                                           if waited else "")) from None
                if not waited:
                    log.warning("%s is not connected: %s waits up to %g s for it to come "
                                "back", name, cmd, self.rejoin_timeout_s)
                    waited = True
            while True:  # at least one wait: the document may still be the dead one's
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.2)
                if self.monotonic() >= deadline or (m.online and (
                        self.open is None or cmd not in _IN_RUN or m.phase in RUN_OPEN)):
                    break

    async def command(self, name: str, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its reply; DataPathError if refused or silent."""
        rid = f"c{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await self._send(name, cmd, [name.encode(), dumps(
                {"t": "cmd", "id": rid, "cmd": cmd, "args": args})])
            try:
                reply = await asyncio.wait_for(fut, self.reply_timeout_s)
            except TimeoutError:
                raise DataPathError(name, cmd, f"no reply within {self.reply_timeout_s} s"
                                    ) from None
        finally:
            self._waiting.pop(rid, None)
        if not reply.get("ok"):
            self.refusals.append({"service": name, "cmd": cmd, **reply})
            raise DataPathError(name, cmd, str(reply.get("reason") or reply.get("error")))
        return reply

    def names(self, role_: str) -> list[str]:
        return [n for n in self.expected if role(n) == role_]

    async def _each(self, role_: str, cmd: str, **args: Any) -> list[dict[str, Any]]:
        names = self.names(role_)
        return list(await asyncio.gather(*(self.command(n, cmd, **args) for n in names)))

    def not_ready(self) -> list[str]:
        """The expected services not ready yet (daq.lifecycle.not_ready: the one definition)."""
        return not_ready(self.documents(), self.members)

    def ready(self) -> bool:
        """Every expected service is connected, and the trigger workers have compiled."""
        return not self.not_ready()

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = self.monotonic() + timeout_s
        while missing := self.not_ready():
            if self.monotonic() > deadline:
                raise DataPathError(", ".join(missing), "hello",
                                    f"not connected and ready within {timeout_s} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)

    async def changed(self) -> None:
        """Wait until some member's document changed."""
        self._changed.clear()
        await self._changed.wait()

    # --- DataPath ---------------------------------------------------------------------

    async def start_run(self, run: int, snapshot: Mapping[str, Any], *, replay: bool = False,
                        max_spills: int | None = None) -> None:
        if self.open is not None:
            raise StateError(f"running run {self.open.run}", "start_run")
        params = dict(snapshot.get("params") or {})
        max_spills = max_spills if max_spills is not None else params.get("max_spills")
        replay = replay or bool(params.get("replay"))
        self.open = OpenRun(run, replay, dict(snapshot), max_spills)
        self.paused = False
        args = {"run": run, "replay": replay, "snapshot": dict(snapshot),
                "max_spills": max_spills}
        try:
            for stage in START_ORDER:
                if replay and stage == "frontend":
                    continue  # a replay's data come from the run file, not the beam
                await self._each(stage, "start", **args)
        except DaqError:
            self.open = None
            raise

    async def stop_run(self) -> dict[str, int]:
        run = self.open
        if run is None:
            raise StateError("idle", "stop_run")
        if not run.replay:
            await self._each("frontend", "stop", run=run.run)
        await self._each("builder", "stop", run=run.run)
        try:
            await asyncio.wait_for(run.done.wait(), self.close_timeout_s)
        except TimeoutError:
            missing = [s for s in SINKS if s not in run.closed]
            raise DataPathError(", ".join(missing), "stop", f"run {run.run} not closed within "
                                f"{self.close_timeout_s} s") from None
        finally:
            self.open = None
        for stage in ("trigger", "recorder", "monitor"):
            with contextlib.suppress(DaqError):
                await self._each(stage, "stop", run=run.run)
        mon = run.closed.get("monitor", {})
        rec = run.closed.get("recorder", {})
        return {"events": int(mon.get("events", 0)), "spills": int(mon.get("spills", 0)),
                "accepted": int(rec.get("events", 0)),
                "lost": int(mon.get("lost", 0))}

    async def pause(self) -> None:
        await self._each("frontend", "pause")
        self.paused = True

    async def resume(self) -> None:
        await self._each("frontend", "resume")
        self.paused = False

    async def set_trigger_config(self, config: Mapping[str, Any], who: str) -> None:
        """From the next spill start; with no run open, at once (the next run starts with
        it, and its first spill_start announces it)."""
        self.trigger = (dict(config), who)
        at_once = self.open is None
        await self._each("builder", "set", trigger=dict(config), who=who, at_once=at_once)
        if at_once:
            self._activations.put_nowait(Activation(dict(config), who, self.clock(), None,
                                                    None))

    async def resume_trigger_config(self, config: Mapping[str, Any], who: str) -> None:
        self.trigger = (dict(config), who)
        with contextlib.suppress(DaqError):  # not connected yet: given again at its hello
            await self._each("builder", "set", trigger=dict(config), who=who, at_once=True)

    async def activation(self) -> Activation:
        return await self._activations.get()

    async def run_ended(self) -> int:
        """Wait until the front ends end a run by themselves; returns its number."""
        return await self._ended.get()

    # --- a service restarted during a run -------------------------------------------------

    def _maybe_rejoin(self, m: Member) -> None:
        self._spawn(self._welcome(m))

    async def _welcome(self, m: Member) -> None:
        """A service said hello: the builder gets the trigger configuration, a service
        restarted while a run is open is brought into it, and then every service hears
        `welcome` (run control has said all it had to say: a builder starts reading its
        input then, without waiting for its timeout)."""
        if role(m.name) == "builder" and self.trigger is not None:
            await self._give_trigger(m.name)
        run = self.open
        if (run is not None and role(m.name) != "frontend"  # a beam is never restarted
                and not (m.phase in RUN_OPEN and m.doc.get("run") == run.run)):
            await self._rejoin(m.name, run)
        try:
            await self.command(m.name, "welcome")
        except DaqError as e:  # gone again: its next hello gets another welcome
            log.info("%s was not welcomed: %s", m.name, e)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._rejoins.add(task)
        task.add_done_callback(self._rejoins.discard)

    async def _give_trigger(self, name: str) -> None:
        assert self.trigger is not None
        config, who = self.trigger
        try:
            await self.command(name, "set", trigger=config, who=who, at_once=True)
        except DaqError as e:
            log.warning("could not give %s the trigger configuration: %s", name, e)

    async def _rejoin(self, name: str, run: OpenRun) -> None:
        try:
            await self.command(name, "start", run=run.run, replay=run.replay,
                               snapshot=run.snapshot, max_spills=run.max_spills, joined=True)
            log.warning("%s restarted during run %d: rejoined it", name, run.run)
        except DaqError as e:
            log.error("%s restarted during run %d and could not rejoin: %s", name, run.run, e)

    def documents(self) -> dict[str, dict[str, Any]]:
        """Each member's status document, `status` online/offline."""
        return {n: {**m.doc, "service": n, "status": "online" if m.online else "offline"}
                for n, m in self.members.items()}
