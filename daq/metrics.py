"""Serve a service's own Prometheus registry over HTTP (no multiprocess mode)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from daq.errors import ConfigError

PREFIX = "na64_"


class MetricsServer:
    """An HTTP /metrics endpoint for one registry; port 0 picks a free port."""

    def __init__(self, registry: CollectorRegistry, *, port: int = 0,
                 addr: str = "127.0.0.1", field: str = "metrics port") -> None:
        """`field` names the setting the port came from, for the error when it is taken."""
        self.registry = registry
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
