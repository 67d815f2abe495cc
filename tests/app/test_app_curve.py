"""CURVE on the real builder: a producer without an allowed key gets nothing in, counted."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry

from daq.app import Factory
from daq.curve import CurveConfig, generate_installation, generate_keys, make_client
from daq.stack import StackConfig
from daq.transport import arecv, asend
from daq.wire import Kind
from simulators.config import SimConfig
from simulators.frontend import FrontEnds
from simulators.generator import Simulator
from tests.conftest import free_tcp_ports


def _stream() -> list:
    from daq.geometry import load_calibration, load_geometry

    g = load_geometry()
    sim = Simulator(SimConfig.parse({"generated_s": 0.002, "seed": 4}), g, load_calibration(g))
    return [em.msg for em in FrontEnds(sim, spills=1).run() if em.src != "truth"]


async def _drain(sock: zmq.asyncio.Socket, wait: float) -> list:
    out = []
    with contextlib.suppress(TimeoutError):
        while True:
            out.append(await asyncio.wait_for(arecv(sock), wait))
    return out


@pytest.mark.asyncio
async def test_builder_admits_only_allowed_producers(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_installation(keys, ["builder", "frontend", "recorder", "monitor", "control"])
    pub_s, sec_p = keys / "public" / "builder.key", keys / "secret" / "frontend.key_secret"
    _, sec_i = generate_keys(tmp_path / "elsewhere", "intruder")
    ports = free_tcp_ports(4)
    cfg = StackConfig.parse({
        "endpoints": {"builder_in": f"tcp://127.0.0.1:{ports[0]}",
                      "builder_out": f"tcp://127.0.0.1:{ports[1]}",
                      "recorder": f"tcp://127.0.0.1:{ports[2]}",
                      "monitor": f"tcp://127.0.0.1:{ports[3]}"},
        "curve": {"enabled": True, "public_keys": str(keys / "public"),
                  "secret_keys": str(keys / "secret")},
    })
    ctx = zmq.asyncio.Context()
    registry = CollectorRegistry()
    builder = Factory(cfg, ctx=ctx).builder(registry)
    out = ctx.socket(zmq.PULL)  # the builder's output is a CURVE server too: a worker's key
    make_client(out, CurveConfig(enabled=True, secret_key=sec_p, server_public_key=pub_s))
    out.connect(cfg.endpoints.builder_out)
    socks = []

    def producer(secret: Path) -> zmq.asyncio.Socket:
        s = ctx.socket(zmq.PUSH)
        s.linger = 0
        make_client(s, CurveConfig(enabled=True, secret_key=secret, server_public_key=pub_s))
        s.connect(cfg.endpoints.builder_in)
        socks.append(s)
        return s

    stream = _stream()
    try:
        async with builder:
            intruder = producer(sec_i)
            for m in stream:
                with contextlib.suppress(zmq.Again):
                    await asend(intruder, m, flags=zmq.NOBLOCK)
            assert await _drain(out, 1.0) == []  # nothing got in
            refused = registry.get_sample_value("na64_curve_refused_total")
            assert refused is not None and refused >= 1
            frontend = producer(sec_p)
            for m in stream:
                await asend(frontend, m)
            got = await _drain(out, 2.0)
            built = [m for m in got if m.kind is Kind.SLICE]
            sent = sum(m.count for m in stream if m.kind is Kind.SLICE and m.board == "BEAM")
            assert sum(m.count for m in built) == sent > 0
            builder.stop()
    finally:
        for s in (out, *socks):
            s.close(linger=0)
        ctx.destroy(linger=0)
