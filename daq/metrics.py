"""Serve a service's own Prometheus registry over HTTP (no multiprocess mode)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

PREFIX = "na64_"


class MetricsServer:
    """An HTTP /metrics endpoint for one registry; port 0 picks a free port."""

    def __init__(self, registry: CollectorRegistry, *, port: int = 0,
                 addr: str = "127.0.0.1") -> None:
        self.registry = registry
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        self.addr = addr
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
