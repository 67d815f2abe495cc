"""`na64daq` subcommands of the monitors package (parsing and printing only)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the na64daq parser."""
    p = sub.add_parser("monitor", help="run the monitor service (features in, /metrics, alarms)",
                       description="Bind a PULL socket for the trigger workers' features and "
                       "markers, serve /metrics, publish spill summaries and alarms over MQTT.")
    p.add_argument("--bind", default="tcp://127.0.0.1:5570", metavar="ENDPOINT",
                   help="PULL endpoint the workers connect to (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=9105, help="/metrics port on 127.0.0.1")
    p.add_argument("--mqtt", metavar="HOST:PORT", help="broker to publish to (default: none)")
    p.add_argument("--config", metavar="FILE", help="MonitorConfig as TOML or JSON")
    p.set_defaults(func=_monitor)


def _monitor(a: argparse.Namespace) -> int:
    import asyncio

    from prometheus_client import CollectorRegistry

    from daq.errors import ConfigError
    from daq.metrics import MetricsServer
    from daq.mqtt import MqttSettings
    from monitors.config import load_config
    from monitors.service import MonitorService

    cfg = load_config(a.config)
    mqtt = None
    if a.mqtt:
        host, _, port = a.mqtt.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("--mqtt", a.mqtt, "must be HOST:PORT")
        mqtt = MqttSettings.parse({"host": host, "port": int(port)})
    registry = CollectorRegistry()
    server = MetricsServer(registry, port=a.metrics_port)
    print(f"monitor: features on {a.bind}, metrics on {server.url}")

    async def run() -> None:
        async with MonitorService(a.bind, config=cfg, registry=registry, mqtt=mqtt) as svc:
            await svc.wait()

    try:
        try:
            asyncio.run(run())
        finally:
            from daq.transport import close_transport

            close_transport()
    finally:
        server.close()
    return 0
