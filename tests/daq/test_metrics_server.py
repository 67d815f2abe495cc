"""Every service's /metrics: process metrics and na64_build_info, once per registry."""

from __future__ import annotations

import platform
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from daq import __version__
from daq.metrics import MetricsServer, instrument


def test_every_served_registry_has_process_metrics_and_build_info() -> None:
    reg = CollectorRegistry()
    Counter("na64_x", "x", registry=reg).inc()
    server = MetricsServer(reg)
    try:
        instrument(reg)  # a second time changes nothing (no duplicate collector)
        with urllib.request.urlopen(server.url, timeout=5) as r:
            text = r.read().decode()
    finally:
        server.close()
    assert (f'na64_build_info{{python="{platform.python_version()}",'
            f'version="{__version__}"}} 1.0') in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_start_time_seconds", "process_open_fds", "na64_x_total"):
        assert f"\n{name} " in text, name
