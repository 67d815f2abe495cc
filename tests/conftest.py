"""Shared fixtures: free loopback ports, a real Mosquitto broker, and a leaked-task guard."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_asyncio import is_async_test

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


_RNG = random.Random()  # its own: hypothesis seeds the global one in its tests


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (and to bind(0))."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_tcp_ports(n: int, *, block: bool = False) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that were free a moment ago; `block`: consecutive
    (a service that serves on base + index, like the trigger workers' /metrics).

    They are drawn below the kernel's ephemeral range: a port from bind(0) is one that any
    outgoing connection (a scrape, a ZeroMQ connect) may take as its source port before the
    service binds it, which is how a restarted process once found its port in use."""
    hi = _ephemeral_low() - n
    if hi - 10_000 < 1_000:  # no room below this machine's ephemeral range: draw anywhere
        hi = 65_535 - n
    for _ in range(10_000):
        base = _RNG.randrange(10_000, hi)
        ports = list(range(base, base + n)) if block else _RNG.sample(range(10_000, hi), n)
        if len(set(ports)) == n and all(_bindable(p) for p in ports):
            return ports
    raise RuntimeError(f"no {n} free TCP ports below {hi + n} on 127.0.0.1")


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (see `free_tcp_ports`)."""
    return free_tcp_ports(1)[0]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def require_binary(name: str) -> str:
    """Path of a server binary; skipped locally when missing, a failure under CI=true."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; the test command must install it")
        pytest.skip(f"{name} is not installed (run the README's test command)")
    return path


@dataclass
class Broker:
    host: str
    port: int
    pid: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def start_mosquitto(workdir: Path, conf_body: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start a real mosquitto on a free loopback port with `conf_body` appended to its config."""
    binary = require_binary("mosquitto")
    port = free_tcp_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "persistence false\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        + conf_body
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        proc.wait()
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        raise RuntimeError(f"mosquitto did not start: {err}") from None
    return proc, port


def pid_gone(pid: int) -> bool:
    """No process has `pid` any more (a stack's child after its shutdown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_pid(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on 127.0.0.1:<free port>, anonymous access allowed (unit-level tests).

    Tests of authentication use the project's deploy/mosquitto configuration instead.
    """
    proc, port = start_mosquitto(tmp_path, "allow_anonymous true\n")
    try:
        yield Broker("127.0.0.1", port, proc.pid, tmp_path)
    finally:
        stop_pid(proc)


def _leaked(loop: asyncio.AbstractEventLoop) -> list[str]:
    """The tasks still pending on `loop`, each as its name and the coroutine it runs."""
    return sorted(f"{t.get_name()} ({getattr(t.get_coro(), '__qualname__', '?')})"
                  for t in asyncio.all_tasks(loop) if not t.done())


@pytest.fixture(autouse=True)
def _no_leaked_tasks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an async test that leaves asyncio tasks running behind it.

    pytest-asyncio (1.x) runs an async test in the loop of an asyncio.Runner held by its
    `_function_scoped_runner` fixture, and that fixture's teardown cancels whatever is left
    before closing the loop: a check after it (or on get_event_loop(), another loop) sees
    nothing. Requesting the runner here makes this teardown run before the runner's; the
    test's own fixtures were set up after this autouse one, so they have stopped by then.
    The failure is an error at the test's teardown, naming each task and its coroutine.
    """
    if not is_async_test(request.node):
        yield
        return
    marker = request.node.get_closest_marker("asyncio")
    scope = (marker.kwargs.get("loop_scope") if marker else None) or request.config.getini(
        "asyncio_default_test_loop_scope")
    if scope != "function":  # a wider loop outlives the test, and may keep tasks on purpose
        yield
        return
    runner = request.getfixturevalue("_function_scoped_runner")
    yield
    pending = _leaked(runner.get_loop())
    if pending:
        pytest.fail(f"test left {len(pending)} asyncio task(s) running: {', '.join(pending)}",
                    pytrace=False)
