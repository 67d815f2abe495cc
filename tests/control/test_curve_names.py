"""CURVE on the command channel (real tcp loopback, real ZAP): run control hears a name only
from the key listed under it; a key from outside the installation does not get in at all.
Both refusals are counted on run control's registry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry

from daq.app import Factory
from daq.curve import CurveConfig, CurveLinks, generate_installation, generate_keys, make_client
from daq.errors import ConfigError
from daq.stack import StackConfig
from tests.conftest import free_tcp_ports

NAMES = ["frontend", "builder", "trigger-0", "recorder", "monitor", "control"]


def _topology(keys: Path) -> StackConfig:
    ports = free_tcp_ports(5)
    eps = ("builder_in", "builder_out", "recorder", "monitor", "control")
    return StackConfig.parse({
        "workers": 1,
        "endpoints": {k: f"tcp://127.0.0.1:{p}" for k, p in zip(eps, ports, strict=True)},
        "curve": {"enabled": True, "public_keys": str(keys / "public"),
                  "secret_keys": str(keys / "secret")},
    })


def _hello(ctx: zmq.asyncio.Context, endpoint: str, name: str, cfg: CurveConfig
           ) -> zmq.asyncio.Socket:
    """A DEALER that says hello as service `name` with the key pair of `cfg`."""
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.setsockopt(zmq.IDENTITY, name.encode())
    make_client(s, cfg)
    s.connect(endpoint)
    s.send(json.dumps({"t": "hello", "service": name, "phase": "configured"}).encode())
    return s


async def _until(what: str, ok: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_a_name_is_heard_only_from_its_own_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_installation(keys, NAMES)
    _, outsider = generate_keys(tmp_path / "elsewhere", "builder")
    cfg = _topology(keys)
    links = CurveLinks(cfg.curve, cfg.endpoints.binders())
    ctx = zmq.asyncio.Context()
    registry = CollectorRegistry()
    conductor = Factory(cfg, ctx=ctx).conductor(registry)
    stopping = asyncio.Event()
    serve = asyncio.create_task(conductor.serve(stopping))
    socks = []
    try:
        # the front end's own key, claiming to be the builder: heard by nobody, counted
        socks.append(_hello(ctx, conductor.endpoint, "builder",
                            links.config("frontend", "control")))
        await _until("the impostor was refused", lambda: conductor.impostors >= 1)
        assert not conductor.members["builder"].online
        # a key of no service of the installation: its handshake fails (ZAP), counted
        socks.append(_hello(ctx, conductor.endpoint, "recorder", CurveConfig(
            enabled=True, secret_key=outsider,
            server_public_key=keys / "public" / "control.key")))
        await _until("the outsider was refused",
                     lambda: (registry.get_sample_value("na64_curve_refused_total") or 0) >= 1)
        assert not conductor.members["recorder"].online
        for s in socks:  # gone: the name is free for its owner
            s.close(linger=0)
        socks.clear()
        # the builder's own key: heard
        socks.append(_hello(ctx, conductor.endpoint, "builder",
                            links.config("builder", "control")))
        await _until("the builder is online", lambda: conductor.members["builder"].online)
        assert registry.get_sample_value("na64_curve_accepted_total") >= 2
        assert conductor.impostors == 1 and conductor.unknown == 0
    finally:
        stopping.set()
        await serve
        for s in socks:
            s.close(linger=0)
        ctx.destroy(linger=0)


def test_a_missing_key_is_named_when_the_service_is_built(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_installation(keys, ["builder", "recorder", "monitor", "control"])
    cfg = _topology(keys)
    links = CurveLinks(cfg.curve, cfg.endpoints.binders())
    with pytest.raises(ConfigError, match=r"frontend\.key_secret"):
        links.hook("frontend")
    (keys / "public" / "monitor.key").unlink()
    with pytest.raises(ConfigError, match=r"monitor\.key"):
        links.hook("builder")


def test_curve_section_needs_the_public_keys() -> None:
    with pytest.raises(ConfigError, match="public_keys"):
        StackConfig.parse({"curve": {"enabled": True}})
