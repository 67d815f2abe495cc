"""CURVE on real tcp loopback sockets: allowed keys get through, others get nothing, counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.asyncio

from daq.curve import CurveAuthenticator, CurveConfig, generate_keys, make_client, make_server
from daq.errors import ConfigError
from daq.transport import arecv, asend
from daq.wire import Kind, Message
from tests.conftest import free_tcp_port


@dataclass
class Keys:
    server: CurveConfig
    producer: CurveConfig
    intruder: CurveConfig
    authorized: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    pub_s, sec_s = generate_keys(tmp_path / "server", "builder")
    pub_p, sec_p = generate_keys(tmp_path / "clients", "producer")
    _, sec_i = generate_keys(tmp_path / "elsewhere", "intruder")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / pub_p.name).write_bytes(pub_p.read_bytes())
    assert (sec_p.stat().st_mode & 0o077) == 0
    return Keys(
        server=CurveConfig(enabled=True, secret_key=sec_s, authorized_dir=authorized),
        producer=CurveConfig(enabled=True, secret_key=sec_p, server_public_key=pub_s),
        intruder=CurveConfig(enabled=True, secret_key=sec_i, server_public_key=pub_s),
        authorized=authorized,
    )


@contextlib.asynccontextmanager
async def ctx_with_auth(k: Keys) -> AsyncIterator[tuple[zmq.asyncio.Context,
                                                        CurveAuthenticator]]:
    ctx = zmq.asyncio.Context()
    auth = CurveAuthenticator(ctx, k.server.authorized_dir)
    auth.start()
    try:
        yield ctx, auth
    finally:
        await auth.aclose()
        ctx.destroy(linger=0)


def msg(i: int) -> Message:
    a = np.arange(4, dtype=np.int64) + i
    return Message(Kind.SLICE, run=1, spill=0, seq=i, src="BEAM", board="BEAM", first=4 * i,
                   count=4, arrays={"ts": a})


async def recv_all(sock: zmq.asyncio.Socket, wait: float) -> list[Message]:
    out = []
    with contextlib.suppress(TimeoutError):
        while True:
            out.append(await asyncio.wait_for(arecv(sock), wait))
    return out


@pytest.mark.asyncio
async def test_only_allowed_producer_gets_into_the_builder(keys: Keys) -> None:
    async with ctx_with_auth(keys) as (ctx, auth):
        port = free_tcp_port()
        pull = ctx.socket(zmq.PULL)
        make_server(pull, keys.server)
        pull.bind(f"tcp://127.0.0.1:{port}")
        socks = {}
        for name, cfg in [("producer", keys.producer), ("intruder", keys.intruder),
                          ("plain", CurveConfig())]:
            s = ctx.socket(zmq.PUSH)
            s.linger = 0
            make_client(s, cfg)
            s.connect(f"tcp://127.0.0.1:{port}")
            socks[name] = s
        for i, name in enumerate(["intruder", "plain", "intruder", "producer"]):
            with contextlib.suppress(zmq.Again):
                await asend(socks[name], msg(i if name == "producer" else 100 + i),
                            flags=zmq.NOBLOCK)
        got = await recv_all(pull, 1.0)
        assert [m.seq for m in got] == [3]
        np.testing.assert_array_equal(got[0].arrays["ts"], np.arange(4) + 3)
        assert auth.refused >= 1 and auth.accepted >= 1
        for s in (pull, *socks.values()):
            s.close(linger=0)


@pytest.mark.asyncio
async def test_unknown_key_cannot_read_from_the_builder(keys: Keys) -> None:
    async with ctx_with_auth(keys) as (ctx, auth):
        port = free_tcp_port()
        push = ctx.socket(zmq.PUSH)
        make_server(push, keys.server)
        push.bind(f"tcp://127.0.0.1:{port}")
        spy = ctx.socket(zmq.PULL)
        make_client(spy, keys.intruder)
        spy.connect(f"tcp://127.0.0.1:{port}")
        await asyncio.sleep(0.3)  # the spy tries its handshake first
        worker = ctx.socket(zmq.PULL)
        make_client(worker, keys.producer)
        worker.connect(f"tcp://127.0.0.1:{port}")
        for i in range(10):
            await asend(push, msg(i))
        got = await recv_all(worker, 1.0)
        assert [m.seq for m in got] == list(range(10))
        assert await recv_all(spy, 0.2) == []
        assert auth.refused >= 1
        for s in (push, spy, worker):
            s.close(linger=0)


@pytest.mark.asyncio
async def test_reload_admits_a_new_key(keys: Keys, tmp_path: Path) -> None:
    async with ctx_with_auth(keys) as (_, auth):
        assert auth.reload() == 1
        pub, _ = generate_keys(tmp_path / "new", "worker-7")
        (keys.authorized / pub.name).write_bytes(pub.read_bytes())
        assert auth.reload() == 2


def test_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        CurveConfig.parse({"enabled": True})
    assert "secret_key" in str(e.value)
    with pytest.raises(ConfigError):
        CurveConfig.parse({"enabled": False, "keyfile": "x"})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    try:
        with pytest.raises(ConfigError) as e2:
            make_server(sock, CurveConfig(enabled=True,
                                          secret_key=tmp_path / "missing.key_secret"))
        assert e2.value.field == "secret_key"
    finally:
        sock.close(linger=0)
        ctx.term()
