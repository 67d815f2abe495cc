"""systemd's readiness protocol without libsystemd: one datagram to `$NOTIFY_SOCKET`.

A unit with `Type=notify` (deploy/systemd/) counts a service as started when it sends
`READY=1`, so units ordered after it start only once it has bound its sockets, and as
stopping when it sends `STOPPING=1`. Outside systemd `NOTIFY_SOCKET` is unset and nothing is
sent. A socket that cannot be reached is logged, never fatal: readiness is a courtesy to the
service manager, the data path does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daq.service import Service

log = logging.getLogger("na64.notify")


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; False when there is none or it
    cannot be reached. An address starting with '@' is in the abstract namespace."""
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("NOTIFY_SOCKET %s: cannot send %s: %s", path, state, e)
        return False
    return True


def stopping_then(stop: Callable[[], None]) -> Callable[[], None]:
    """A stop-signal handler: STOPPING=1 (the service begins its shutdown), then `stop`."""
    def handler() -> None:
        sd_notify("STOPPING=1")
        stop()
    return handler


async def ready(svc: Service) -> None:
    """READY=1 once `svc` (entered: its sockets are bound) has said hello to run control;
    nothing when the service ends first."""
    if svc.agent is not None:
        greeted = asyncio.ensure_future(svc.agent.greeted.wait())
        ended = asyncio.ensure_future(svc.wait())
        try:
            await asyncio.wait({greeted, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (greeted, ended):
                f.cancel()
            await asyncio.gather(greeted, ended, return_exceptions=True)
        if not svc.agent.greeted.is_set():
            return
    sd_notify("READY=1")
