"""Serve a service's own Prometheus registry over HTTP (no multiprocess mode)."""

from __future__ import annotations

import platform
import socket
import threading
import weakref
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Info, ProcessCollector, start_http_server

from daq import __version__
from daq.errors import ConfigError

PREFIX = "na64_"
#: registries that already carry the process collector and build_info (a registry may be
#: served twice in tests; registering a collector twice raises)
_INSTRUMENTED: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()


def instrument(registry: CollectorRegistry) -> None:
    """Add what every service exports: process_* (CPU, memory, file descriptors, start time
    of its process) and `na64_build_info{version, python}` = 1. Idempotent."""
    if registry in _INSTRUMENTED:
        return
    _INSTRUMENTED.add(registry)
    ProcessCollector(registry=registry)
    Info("na64_build", "Version of the na64-daq software this service runs.",
         registry=registry).info({"version": __version__,
                                  "python": platform.python_version()})


def free_port_block(n: int, addr: str = "127.0.0.1", tries: int = 100) -> int:
    """A base port such that base .. base + n - 1 on `addr` were free a moment ago."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind((addr, 0))
            base = int(s.getsockname()[1])
        if base + n <= 65536 and all(_bindable(addr, base + i) for i in range(1, n)):
            return base
    raise ConfigError("metrics port", 0, f"no {n} consecutive free ports on {addr}")


def _bindable(addr: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True


class MetricsServer:
    """An HTTP /metrics endpoint for one registry; port 0 picks a free port."""

    def __init__(self, registry: CollectorRegistry, *, port: int = 0,
                 addr: str = "127.0.0.1", field: str = "metrics port") -> None:
        """`field` names the setting the port came from, for the error when it is taken."""
        self.registry = registry
        instrument(registry)
        self._server: WSGIServer
        self._thread: threading.Thread
        try:
            self._server, self._thread = start_http_server(port, addr=addr,
                                                           registry=registry)
        except OSError as e:
            raise ConfigError(field, port, f"cannot serve /metrics on {addr}:{port}: "
                              f"{e.strerror or e}") from e
        self.addr = addr
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
