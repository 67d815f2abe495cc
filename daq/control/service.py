"""The run-control service: the pure core behind MQTT (aiomqtt), persisting every change.

    python -m daq.control.service --state-dir DIR [--credentials FILE] [--metrics-port N]

runs it with the in-memory data path (trying the protocol). Over the real data path it
runs on the Conductor (daq.control.conductor): in its own process under `na64daq up`
(`na64daq serve control`), in the demo's process with `na64daq demo --mqtt`. Requests are handled
one at a time; state is persisted before a request is answered, so an acknowledged change
survives a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
from prometheus_client import CollectorRegistry, Counter, Gauge

from daq.control import protocol as P
from daq.control.controller import Controller
from daq.control.core import Plan
from daq.control.datapath import DataPath, MemoryDataPath
from daq.control.mqtt import command_subscription, reply_properties, response_of
from daq.control.store import StateStore
from daq.errors import DaqError
from daq.metrics import PREFIX, MetricsServer
from daq.mqtt import Client, MqttSettings, Session
from daq.service import Loop, Service

HISTORY_LENGTH = 50
RESULTS = ("ok", "duplicate", *P.ERROR_CODES)

log = logging.getLogger("na64.control")


class RunControlService(Service):
    """Run control and trigger configuration over MQTT."""

    name = "runcontrol"

    def __init__(self, settings: MqttSettings, store: StateStore, datapath: DataPath, *,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time, adopt: bool = False) -> None:
        """`adopt`: a run left open by a previous run control is taken up by `adopt()` if
        the data path is still in it (daq.control.controller.Controller.adopt_run)."""
        super().__init__()
        self.settings = settings
        self.store = store
        self.datapath = datapath
        self._clock = clock
        self.ctl = Controller(store, datapath, clock=clock, adopt=adopt)
        self.ctl.after.append(self._executed)
        self.core = self.ctl.core
        self.ready = asyncio.Event()
        self._lock = self.ctl.lock
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        self._requests = Counter(f"{PREFIX}control_requests", "Control requests by outcome.",
                                 ["kind", "result"], registry=reg)
        for kind in ("run", "trigger"):
            for r in RESULTS:
                self._requests.labels(kind, r)
        self._run_number = Gauge(f"{PREFIX}control_run_number",
                                 "Number of the current (or last) run.", registry=reg)
        self._run_open = Gauge(f"{PREFIX}control_run_open", "1 while a run is open.",
                               registry=reg)
        self._pending_audit: list[dict[str, Any]] = []  # audit entries not yet published
        self._reconnects = Counter(f"{PREFIX}control_reconnects",
                                   "Broker connections lost or refused.", registry=reg)
        self._restored = False
        self.last_failure: str | None = None
        # a fresh, unguessable client id per connection (daq.mqtt.client): a fixed one let
        # any account take this session over by connecting with it (issue 20)
        self.session = Session(settings, settings.account(), stopping=self.stopping,
                               clock=clock, backoff=(0.2, 10.0), on_lost=self._lost)

    @property
    def _client(self) -> Client | None:
        return self.session.client

    @property
    def status_topic(self) -> str:
        return self.session.topic

    def refused(self, kind: str, code: str) -> int:
        """How many requests of `kind` were answered with error `code` (or 'ok')."""
        v = self.registry.get_sample_value(f"{PREFIX}control_requests_total",
                                           {"kind": kind, "result": code})
        return int(v or 0)

    def loops(self) -> dict[str, Loop]:
        return {"mqtt": self._mqtt, "ends": self._follow_ends}

    async def adopt(self) -> bool | None:
        """Take up (or close as an error) a run the previous run control left open."""
        result = await self.ctl.adopt_run()
        if result is not None and self._client is not None:
            async with self._lock:
                await self._publish_state()
        return result

    async def _follow_ends(self) -> None:
        """Runs the data path ends by itself (max_spills) get run control's stop."""
        follow = asyncio.ensure_future(self.ctl.follow_run_ends())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({follow, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (follow, stop):
                t.cancel()
            await asyncio.gather(follow, stop, return_exceptions=True)
        exc = follow.exception() if follow.done() and not follow.cancelled() else None
        if exc is not None:
            raise exc

    async def _members_offline(self, c: aiomqtt.Client) -> None:
        """Leaving cleanly: nobody supervises the services any more, say so."""
        documents = getattr(self.datapath, "documents", None)
        for name, doc in (documents() if documents else {}).items():
            doc = {**doc, "status": "offline", "reason": "run control stopped"}
            await c.publish(f"{P.SERVICES}/{name}", P.dumps(doc), qos=1, retain=True)

    async def _members(self, c: aiomqtt.Client) -> None:
        """Every data-path service's status document, retained under na64/services/<name>
        (run control's view of them: phase, run, pid, their own figures, online/offline)."""
        documents = getattr(self.datapath, "documents", None)
        if documents is None:
            await asyncio.Event().wait()
            return
        sent: dict[str, bytes] = {}
        while True:
            for name, doc in documents().items():
                # the clock moves every heartbeat: publish what changed besides it
                key = P.dumps({k: v for k, v in doc.items() if k != "when"})
                if sent.get(name) != key:
                    await c.publish(f"{P.SERVICES}/{name}", P.dumps(doc), qos=1, retain=True)
                    sent[name] = key
            changed = getattr(self.datapath, "changed", None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed() if changed else asyncio.sleep(1.0), 1.0)

    async def _mqtt(self) -> None:
        """Stay on the broker (daq.mqtt.Session: reconnects with backoff until stopped)."""
        await self.session.run(self._serve, prepare=self._prepare)

    def _lost(self, e: Exception) -> None:
        self.ready.clear()
        self._reconnects.inc()

    async def _prepare(self, c: Client) -> None:
        """Before "online": what a client that sees run control online may rely on."""
        if self.core.state.trigger_active is not None and not self._restored:
            # the data path starts empty: give it what was active before the restart
            act = self.core.state.trigger_active
            await self.datapath.resume_trigger_config(act["config"], act["who"])
            self._restored = True
        # subscribed before "online" is said: a request sent as soon as a client sees
        # it must not arrive before the subscription (QoS 1 is not kept for nobody)
        # retain-as-published: a command published retained arrives flagged as such
        # even while subscribed (MQTT v5 clears the flag otherwise), and is refused
        await c.subscribe(P.RUN_CMD_SUB, options=command_subscription())
        await c.subscribe(P.DESIRED_SUB, options=command_subscription())
        await self._publish_state()
        await self._publish_trigger(history=True)

    async def _serve(self, c: Client) -> None:
        """One connection: serve requests until stop or disconnect."""
        self.ready.set()
        tasks = [asyncio.create_task(self._commands(c), name=f"{self.name}.commands"),
                 asyncio.create_task(self._activations(), name=f"{self.name}.activations"),
                 asyncio.create_task(self._members(c), name=f"{self.name}.members"),
                 asyncio.create_task(self.stopping.wait(), name=f"{self.name}.stopping")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            async with self._lock:  # let the request in hand finish before leaving
                for t in tasks:
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                raise exc
        await self._members_offline(c)

    # --- requests --------------------------------------------------------------------

    async def _commands(self, c: aiomqtt.Client) -> None:
        async for msg in c.messages:
            async with self._lock:
                raw = msg.payload if isinstance(msg.payload, bytes | bytearray) else b""
                try:
                    await self._handle(str(msg.topic), bytes(raw), msg.properties,
                                       retained=bool(msg.retain))
                except (DaqError, OSError, ValueError, KeyError) as e:
                    # a bug or a full disk must not take the control plane down; it is
                    # logged, counted and the state is whatever was last persisted
                    log.exception("request on %s failed", msg.topic)
                    self._requests.labels("trigger" if P.DESIRED in str(msg.topic) else "run",
                                          P.FAILED).inc()
                    self.last_failure = f"{type(e).__name__}: {e}"

    async def _handle(self, topic: str, payload: bytes, props: Any, *,
                      retained: bool = False) -> None:
        response, correlation = response_of(props)
        kind = "trigger" if topic.startswith(P.DESIRED + "/") else "run"
        user = topic.rsplit("/", 1)[-1]
        if retained and not payload:
            return  # a retained command being cleared (ours below, or its sender's)
        try:
            if retained:
                # a retained command would be replayed at every (re)subscription: refuse
                # it and take it off the broker (an empty retained message clears it)
                assert self._client is not None
                await self._client.publish(topic, b"", qos=1, retain=True)
                raise P.ProtocolError(P.MALFORMED, "commands must not be retained")
            req = P.parse(topic, payload)
            plan = self.core.plan(req)
        except P.ProtocolError as e:
            log.info("refused %s on %s: %s", e.code, topic, e.reason)
            self._requests.labels(kind, e.code).inc()
            if kind == "trigger":
                self._audit({"event": "refused", "who": user, "id": e.request_id,
                             "error": e.code, "reason": e.reason})
            await self._reply(user, response, correlation,
                              P.error_reply(e.request_id, e.code, e.reason,
                                            state=self.core.state.state.value))
            return
        if plan.duplicate_reply is not None:
            self._requests.labels(kind, "duplicate").inc()
            await self._reply(user, response, correlation, plan.duplicate_reply)
            return
        reply = await self._execute(plan)
        self._requests.labels(kind, "ok" if reply["ok"] else reply["error"]).inc()
        await self._reply(user, response, correlation, reply)

    async def _execute(self, plan: Plan) -> dict[str, Any]:
        return await self.ctl.execute(plan)

    async def _executed(self, plan: Plan, reply: dict[str, Any]) -> None:
        """After every request (from a client or run control's own): audit and publish."""
        if plan.request.kind == "trigger" and reply.get("ok"):
            d = self.core.state.trigger_desired or {}
            self._audit({"event": "requested", **d})
        if self._client is not None:
            await self._publish_state()
            await self._publish_trigger()

    async def _reply(self, user: str, response: str | None, correlation: bytes | None,
                     body: dict[str, Any]) -> None:
        # answer only under the sender's own reply tree: a crafted response topic must
        # not make this service (which may write state topics) publish elsewhere
        own = f"{P.REPLY}/{user}"
        topic = response if response and (response == own or response.startswith(own + "/")) \
            else own
        if "+" in topic or "#" in topic:
            topic = own
        assert self._client is not None
        await self._client.publish(topic, P.dumps(body), qos=1,
                                   properties=reply_properties(correlation))

    # --- trigger activation ------------------------------------------------------------

    async def _activations(self) -> None:
        while True:
            act = await self.datapath.activation()
            async with self._lock:
                try:
                    active = self.core.activated(act)
                except (DaqError, ValueError, TypeError) as e:
                    # a service's "activated" event with a configuration that does not
                    # validate must not end run control (found by fuzzing, issue 20)
                    log.error("activation from %s refused: %s", act.who or "?", e)
                    continue
                self.store.save(self.core.state)
                self._audit({"event": "activated", **active})
                await self._publish_trigger()

    def _audit(self, entry: dict[str, Any]) -> None:
        entry = {"when": self._clock(), **entry}
        self.store.append_audit(entry)
        self._pending_audit.append(entry)

    async def _publish_state(self) -> None:
        st = self.core.state
        self._run_number.set(st.run.run if st.run else st.last_run)
        self._run_open.set(1 if st.state.value in ("running", "paused") else 0)
        assert self._client is not None
        doc = self.core.status()
        await self._client.publish(P.RUN_STATE, P.dumps(doc), qos=1, retain=True)

    async def _publish_trigger(self, *, history: bool = False) -> None:
        c, st = self._client, self.core.state
        assert c is not None
        await c.publish(P.ACTIVE, P.dumps(st.trigger_active) if st.trigger_active else b"",
                        qos=1, retain=True)
        await c.publish(P.DESIRED, P.dumps(st.trigger_desired) if st.trigger_desired else b"",
                        qos=1, retain=True)
        pending, self._pending_audit = self._pending_audit, []
        for entry in pending:
            await c.publish(P.AUDIT, P.dumps(entry), qos=1)
        if pending or history:
            await c.publish(P.HISTORY, P.dumps(self.store.read_audit(HISTORY_LENGTH)), qos=1,
                            retain=True)



async def serve(settings: MqttSettings, state_dir: Path, metrics_port: int | None) -> None:
    registry = CollectorRegistry()
    metrics = MetricsServer(registry, port=metrics_port) if metrics_port is not None else None
    try:
        svc = RunControlService(settings, StateStore(state_dir), MemoryDataPath(),
                                registry=registry)
        async with svc:
            await svc.wait()
    finally:
        if metrics is not None:
            metrics.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m daq.control.service", description=__doc__)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--credentials", type=Path, help="file of NA64_MQTT_* lines (mode 600)")
    p.add_argument("--metrics-port", type=int)
    args = p.parse_args(argv)
    from daq.logs import setup_logging

    setup_logging("runcontrol")
    try:
        settings = (MqttSettings.from_file(args.credentials) if args.credentials
                    else MqttSettings.from_env())
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, args.state_dir, args.metrics_port))
    except DaqError as e:
        print(f"runcontrol: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
