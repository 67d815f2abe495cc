"""Run control's command channel on real ZeroMQ sockets: a Conductor and services' Agents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import zmq

from daq.agent import Agent
from daq.control.conductor import Conductor, DataPathError
from daq.lifecycle import Lifecycle, RunContext, Transition
from daq.transport import context


class Fake:
    """A participant that records what it was told (a service's stand-in)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lifecycle = Lifecycle()
        self.seen: list[tuple[str, int | None]] = []
        self.settings: list[dict[str, Any]] = []
        self.agent: Agent | None = None
        self.doc: dict[str, Any] = {"ready": True}

    async def on_transition(self, t: Transition, ctx: RunContext | None,
                            args: dict[str, Any]) -> dict[str, Any]:
        self.seen.append((t.value, ctx.run if ctx else None))
        return {}

    async def on_set(self, args: dict[str, Any]) -> dict[str, Any]:
        self.settings.append(args)
        return {"cfg": "h"}

    def status(self) -> dict[str, Any]:
        return dict(self.doc)


NAMES = ["frontend", "builder", "trigger-0", "recorder", "monitor"]


@asynccontextmanager
async def channel(tag: str, names: list[str] = NAMES, **kw: Any
                  ) -> AsyncIterator[tuple[Conductor, dict[str, Fake], dict[str, Any]]]:
    ctx = context()
    cond = Conductor(f"inproc://cond-{tag}", NAMES, ctx=ctx, **kw)
    stop = asyncio.Event()
    fakes = {n: Fake(n) for n in names}
    tasks = {"conductor": asyncio.create_task(cond.serve(stop))}
    for n, f in fakes.items():
        f.agent = Agent(cond.endpoint, n, f, ctx=ctx, heartbeat_s=0.05)
        tasks[n] = asyncio.create_task(f.agent.run(stop))
    try:
        yield cond, fakes, tasks
    finally:
        stop.set()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def closes(fakes: dict[str, Fake], run: int) -> None:
    """The sinks report the run closed (what the recorder and monitor do at run_stop)."""
    for n in ("recorder", "monitor"):
        agent = fakes[n].agent
        assert agent is not None
        agent.notify("run_closed", run=run, replay=False, events=10, spills=2)


@pytest.mark.asyncio
async def test_start_and_stop_go_to_every_service_in_data_flow_order() -> None:
    async with channel("order") as (cond, fakes, _):
        await asyncio.wait_for(cond.wait_ready(), 10)
        await cond.start_run(1, {"params": {"max_spills": 3}})
        assert all(f.lifecycle.run == 1 for f in fakes.values())
        stop = asyncio.create_task(cond.stop_run())
        await asyncio.sleep(0.2)
        assert not stop.done()  # answered only once the sinks closed the run
        closes(fakes, 1)
        counts = await asyncio.wait_for(stop, 10)
        assert counts["events"] == 10 and counts["spills"] == 2
        assert all(f.lifecycle.phase.value == "configured" for f in fakes.values())
        assert fakes["frontend"].seen == [("start", 1), ("stop", None)]
        await cond.start_run(2, {})
        assert fakes["builder"].lifecycle.runs_taken == 2


@pytest.mark.asyncio
async def test_a_refused_transition_names_the_service_and_the_phase() -> None:
    async with channel("refuse") as (cond, _fakes, _):
        await asyncio.wait_for(cond.wait_ready(), 10)
        with pytest.raises(DataPathError, match=r"frontend pause: .*'booted'") as e:
            await cond.pause()
        assert e.value.service == "frontend"


@pytest.mark.asyncio
async def test_a_service_that_never_connects_is_named() -> None:
    async with channel("missing", names=NAMES[:-1]) as (cond, _, _t):
        with pytest.raises(DataPathError, match="monitor") as e:
            await cond.wait_ready(timeout_s=0.5)
        assert e.value.service == "monitor"


@pytest.mark.asyncio
async def test_a_service_restarted_during_a_run_rejoins_it_with_the_trigger_config() -> None:
    async with channel("rejoin") as (cond, _fakes, tasks):
        await asyncio.wait_for(cond.wait_ready(), 10)
        await cond.set_trigger_config({"v": 2}, "expert")
        await cond.start_run(4, {})
        # the builder dies and a new one (booted) says hello under the same name
        tasks["builder"].cancel()
        await asyncio.gather(tasks["builder"], return_exceptions=True)
        new = Fake("builder")
        new.agent = Agent(cond.endpoint, "builder", new, ctx=context(), heartbeat_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(new.agent.run(stop))
        try:
            for _ in range(200):
                if new.lifecycle.run == 4:
                    break
                await asyncio.sleep(0.02)
            assert new.lifecycle.run == 4 and new.lifecycle.context is not None
            assert new.lifecycle.context.joined
            assert new.settings[0]["trigger"] == {"v": 2} and new.settings[0]["at_once"]
        finally:
            stop.set()
            await task


@pytest.mark.asyncio
async def test_garbage_on_the_channel_is_counted_and_changes_nothing() -> None:
    async with channel("garbage") as (cond, _fakes, _):
        await asyncio.wait_for(cond.wait_ready(), 10)
        sock = context().socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"intruder")  # not a service of the topology
        sock.connect(cond.endpoint)
        try:
            for junk in (b"[" * 5000, b"\xff\xfe", b"{}" * 10, b'{"t":"event"}' + b" " * 300_000):
                await sock.send(junk)
            await asyncio.sleep(0.3)
        finally:
            sock.close(linger=0)
        assert cond.unknown == 4  # each counted once, whoever sent it
        await cond.start_run(1, {})  # the channel still works


async def gone(cond: Conductor, name: str) -> None:
    """Until the ROUTER has no route to `name` any more (a closed socket's pipe ends a
    moment after close() returns): what a SIGKILL leaves behind."""
    for _ in range(500):
        try:
            await cond.sock.send_multipart([name.encode(), b"{}"])
        except zmq.ZMQError:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} still routable")


@pytest.mark.asyncio
async def test_a_stop_while_a_service_is_restarting_waits_until_it_has_rejoined() -> None:
    """A stop that finds the builder gone (killed, being restarted by its supervisor) is
    sent once the new builder has been brought into the run, never before its start."""
    async with channel("stop-rejoin", rejoin_timeout_s=20.0) as (cond, fakes, tasks):
        await asyncio.wait_for(cond.wait_ready(), 10)
        await cond.start_run(6, {})
        tasks["builder"].cancel()
        await asyncio.gather(tasks["builder"], return_exceptions=True)
        await gone(cond, "builder")
        stop_task = asyncio.create_task(cond.stop_run())
        await asyncio.sleep(0.3)
        assert not stop_task.done()  # waiting for the builder, not failed
        new = Fake("builder")
        new.agent = Agent(cond.endpoint, "builder", new, ctx=context(), heartbeat_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(new.agent.run(stop))
        try:
            for _ in range(500):
                if ("stop", 6) in new.seen:
                    break
                await asyncio.sleep(0.02)
            assert [t for t, _ in new.seen[:2]] == ["start", "stop"], new.seen
            closes(fakes, 6)
            await asyncio.wait_for(stop_task, 10)
        finally:
            stop.set()
            await task


@pytest.mark.asyncio
async def test_a_stop_to_a_service_that_never_comes_back_fails_naming_it() -> None:
    async with channel("stop-gone", rejoin_timeout_s=0.5) as (cond, _fakes, tasks):
        await asyncio.wait_for(cond.wait_ready(), 10)
        await cond.start_run(7, {})
        tasks["builder"].cancel()
        await asyncio.gather(tasks["builder"], return_exceptions=True)
        await gone(cond, "builder")
        with pytest.raises(DataPathError, match=r"not back within 0\.5 s") as e:
            await asyncio.wait_for(cond.stop_run(), 10)
        assert e.value.service == "builder"


@pytest.mark.asyncio
async def test_every_service_is_welcomed_after_what_run_control_had_to_say() -> None:
    """`welcome` comes last after a hello: a builder that waits for it (instead of a
    timeout) has its trigger configuration, and its run, before it reads any input."""
    async with channel("welcome") as (cond, fakes, tasks):
        await asyncio.wait_for(cond.wait_ready(), 10)
        for f in fakes.values():
            assert f.agent is not None
            await asyncio.wait_for(f.agent.welcomed.wait(), 10)
        await cond.set_trigger_config({"v": 3}, "expert")
        await cond.start_run(8, {})
        tasks["builder"].cancel()
        await asyncio.gather(tasks["builder"], return_exceptions=True)
        await gone(cond, "builder")
        new = Fake("builder")
        agent = new.agent = Agent(cond.endpoint, "builder", new, ctx=context(),
                                  heartbeat_s=0.05)
        seen_at_welcome: list[tuple[list[dict[str, Any]], list[tuple[str, int | None]]]] = []

        async def record() -> None:
            await agent.welcomed.wait()
            seen_at_welcome.append((list(new.settings), list(new.seen)))

        stop = asyncio.Event()
        watcher = asyncio.create_task(record())
        task = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait_for(watcher, 10)
            settings, seen = seen_at_welcome[0]
            assert settings and settings[0]["trigger"] == {"v": 3}
            assert seen == [("start", 8)]  # brought into the run before the welcome
        finally:
            stop.set()
            await task
