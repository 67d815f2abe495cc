"""Fuzz targets of the control plane's inputs, shared by the hypothesis tests and
scripts/fuzz_control.py: each takes bytes and may raise only its one refusal exception.

    runcontrol   MQTT request (topic chosen by the first byte, payload the rest) through
                 protocol.parse and the core's plan/commit: only ProtocolError
    loads        daq.agent.loads, the command channel's parser: only ValueError
    take         the conductor's `_take` (a document from a service): nothing at all
    command      the agent's `_command` (a command from run control): nothing; a reply
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from typing import Any

from daq.agent import Agent, loads
from daq.control import protocol as P
from daq.control.core import RunControl
from daq.control.state import PUBLIC_COMMANDS, ControlState
from daq.lifecycle import Lifecycle, RunContext, Transition

VERBS = sorted(c.value for c in PUBLIC_COMMANDS)
TOPICS = ([P.run_topic(v, "shift") for v in VERBS] + [f"{P.DESIRED}/expert", P.RUN_STATE,
          f"{P.RUN_CMD}/start", f"{P.RUN_CMD}/start/bad user", f"{P.DESIRED}/a/b", ""])
MEMBERS = ("builder", "recorder", "monitor", "frontend", "trigger-0")


class Refused(Exception):
    """Raised by nothing: a target's allowed exception when it has none."""


class RunControlTarget:
    allowed: tuple[type[BaseException], ...] = (P.ProtocolError,)

    def __init__(self) -> None:
        self.core = RunControl(ControlState(), clock=lambda: 1.0)

    def __call__(self, data: bytes) -> None:
        topic = TOPICS[data[0] % len(TOPICS)] if data else ""
        plan = self.core.plan(P.parse(topic, data[1:]))
        self.core.reserve(plan)
        self.core.commit(plan, {"events": 1, "spills": 1})
        if len(self.core.state.replies) > 64:  # keep the state small over a million runs
            self.core = RunControl(ControlState(), clock=lambda: 1.0)


class LoadsTarget:
    allowed: tuple[type[BaseException], ...] = (ValueError,)

    def __call__(self, data: bytes) -> None:
        loads(data)


class _Participant:
    def __init__(self) -> None:
        self.lifecycle = Lifecycle()

    def status(self) -> dict[str, Any]:
        return {}

    async def on_transition(self, t: Transition, ctx: RunContext | None,
                            args: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def on_set(self, args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("takes no settings")


class AsyncTargets:
    """The conductor's `_take` and the agent's `_command`, on one event loop."""

    allowed: tuple[type[BaseException], ...] = (Refused,)

    def __init__(self) -> None:
        from daq.control.conductor import Conductor

        self.loop = asyncio.new_event_loop()
        self.conductor = Conductor("inproc://fuzz-control", MEMBERS)
        self.agent = Agent("inproc://fuzz-control", "builder", _Participant())

    def take(self, data: bytes) -> None:
        ident = MEMBERS[data[0] % len(MEMBERS)] if data else "stranger"
        self.loop.run_until_complete(self._take(ident, data[1:]))

    async def _take(self, ident: str, raw: bytes) -> None:
        self.conductor._take(ident, raw)
        await asyncio.sleep(0)  # let a spawned welcome run

    def command(self, data: bytes) -> None:
        reply = self.loop.run_until_complete(self.agent._command(data))
        if not isinstance(reply, dict) or reply.get("t") != "reply":
            raise AssertionError(f"not a reply: {reply!r}")

    def close(self) -> None:
        self.conductor.sock.close(0)
        async def drain() -> None:
            pending = asyncio.all_tasks() - {asyncio.current_task()}
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self.loop.run_until_complete(drain())
        self.loop.close()


# --- inputs for the random loop (the hypothesis tests have their own strategies) -------

_KEYS = ("id", "params", "reason", "set", "config", "comment", "t", "cmd", "args", "run",
         "event", "replay", "snapshot", "max_spills", "beam_energy_gev", "run_type",
         "last_closed", "last_run", "who", "spill", "ecal_max_gev")


def _value(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randrange(12 if depth < 4 else 8)
    return [lambda: None, lambda: rng.random() < 0.5, lambda: rng.randrange(-5, 10),
            lambda: rng.choice((10**30, -(2**63), 1e308, float("inf"), float("nan"), 0.5)),
            lambda: rng.choice(("", "x" * rng.randrange(600), "run", "start", "a=b",
                                "ecal_max_gev=85", "\ud800", "physics", "status")),
            lambda: rng.choice(VERBS), lambda: "id" + str(rng.randrange(100)),
            lambda: rng.choice(("hello", "status", "reply", "bye", "event", "activated",
                                "run_closed", "run_ended", "set", "start", "stop")),
            lambda: [_value(rng, depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(_KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(4))},
            lambda: [rng.choice(("a=1", "ecal_max_gev=x", "=", "prescale_beam=500"))],
            lambda: {"run": rng.randrange(-1, 5), "replay": _value(rng, 9)}][k]()


def random_input(rng: random.Random) -> bytes:
    """A structured document, mutated; deep nesting; huge numbers; or random bytes."""
    r = rng.random()
    if r < 0.6:
        doc = {rng.choice(_KEYS): _value(rng) for _ in range(rng.randrange(1, 6))}
        if rng.random() < 0.7:
            doc["id"] = "id" + str(rng.randrange(1000))
        if rng.random() < 0.2:  # a service's event, as the conductor reads them
            doc |= {"t": "event", "event": rng.choice(("activated", "run_closed",
                                                       "run_ended"))}
        text = json.dumps(doc, default=str).encode("utf-8", "surrogatepass")
    elif r < 0.7:
        n = rng.choice((30, 33, 100, 5000, 100_000))
        text = (b"[" * n + b"]" * n) if rng.random() < 0.5 else (b'{"a":' * n + b"1" + b"}" * n)
    elif r < 0.8:
        text = b'{"id":"a","n":' + b"9" * rng.choice((20, 5000, 70_000)) + b"}"
    else:
        text = rng.randbytes(rng.randrange(64))
    if text and rng.random() < 0.2:  # invalid UTF-8 / a flipped byte somewhere
        i = rng.randrange(len(text))
        text = text[:i] + bytes([rng.choice((0xFF, 0xC3, 0x80, 0x00, 0x22, 0x5C))]) + text[i + 1:]
    return bytes([rng.randrange(256)]) + text


def check(target: Callable[[bytes], None], allowed: tuple[type[BaseException], ...],
          data: bytes) -> None:
    """Run `target`; its allowed exception is fine, anything else propagates."""
    with contextlib.suppress(allowed):
        target(data)
