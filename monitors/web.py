"""The shift crew's live page, served by the monitor: HTML, vendored JavaScript, JSON.

A small HTTP/1.1 server (GET and HEAD, one request per connection) that runs as one of the
monitor service's loops, on its event loop, so every document is read from the monitor's
state between two messages, never half-updated. The listening socket is bound when the
page is made, so its port (0: a free one) is known before the service starts. The page
(monitors/static/) polls /api/state and redraws when a spill closed; every plot's data
is its own endpoint. docs/monitors.md ("Shift page") lists them; decision 0017 says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import mimetypes
import socket
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from daq.errors import ConfigError
from monitors import webdata
from monitors.aggregate import Source
from monitors.dashboards.rules import by_alarm
from monitors.spectra import SPECTRA

if TYPE_CHECKING:
    from monitors.service import MonitorService

log = logging.getLogger("na64.monitors.web")
STATIC = Path(str(resources.files("monitors") / "static"))
_MAX_HEAD = 8192
_TIMEOUT_S = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _clean(x: Any) -> Any:
    """JSON without NaN (browsers' JSON.parse refuses it): NaN and infinities become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


class ShiftPage:
    """The page of one MonitorService on `addr:port` (port 0: a free port, see `.port`)."""

    def __init__(self, monitor: MonitorService, *, port: int = 0, addr: str = "127.0.0.1",
                 source: Source = "live") -> None:
        self.monitor = monitor
        self.source: Source = source
        self.runbooks = {name: a.runbook for name, a in by_alarm(monitor.cfg.alarms).items()}
        self.files = {p.relative_to(STATIC).as_posix(): p for p in STATIC.rglob("*")
                      if p.is_file()}
        sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            raise ConfigError("metrics.web", port, f"cannot serve the shift page on "
                              f"{addr}:{port}: {e.strerror or e}") from e
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self.addr = addr
        self.port: int = sock.getsockname()[1]
        self.requests = 0

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.addr in ("0.0.0.0", "") else self.addr
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- the monitor's loop ---------------------------------------------------------------

    async def serve(self) -> None:
        """Serve until the monitor stops (a loop of MonitorService)."""
        if self._sock is None:
            return
        server = await asyncio.start_server(self._client, sock=self._sock)
        self._sock = None  # the server owns it now
        try:
            await self.monitor.stopping.wait()
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _TIMEOUT_S)
            status, ctype, body = self.respond(head[:_MAX_HEAD].decode("latin-1"))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        method = head.split(b" ", 1)[0]
        self.requests += 1
        writer.write((f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                      "Connection: close\r\n\r\n").encode() + (b"" if method == b"HEAD"
                                                               else body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    # --- routes (pure given the monitor's state) -------------------------------------------

    def respond(self, head: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for the request `head`."""
        parts = head.split("\r\n", 1)[0].split(" ")
        if len(parts) != 3:
            return self._json(400, {"error": "malformed request line"})
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return self._json(405, {"error": f"{method} is not served"})
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path in ("/", "/index.html"):
            return self._file("index.html")
        if path.startswith("/static/"):
            return self._file(path.removeprefix("/static/"))
        if path == "/api/state":
            return self._json(200, self.state())
        if path == "/api/spills":
            return self._json(200, self.spills())
        if path.startswith("/api/spectra/"):
            name = path.removeprefix("/api/spectra/").removesuffix(".json")
            scope = query.get("scope", "run")
            fmt = query.get("format", "json")
            if name not in SPECTRA or scope not in ("spill", "run") or \
                    fmt not in ("json", "root"):
                return self._json(404, {"error": "spectra: /api/spectra/{ecal,hcal,plane}"
                                        "?scope=spill|run&format=json|root"})
            return self._json(200, self.spectrum(name, scope, fmt))
        return self._json(404, {"error": f"nothing at {path}", "see": "/"})

    def _file(self, rel: str) -> tuple[int, str, bytes]:
        p = self.files.get(rel)  # only files shipped in monitors/static: no path tricks
        if p is None:
            return self._json(404, {"error": f"no file {rel}"})
        ctype = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return 200, ctype, p.read_bytes()

    @staticmethod
    def _json(status: int, doc: Any) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps(_clean(doc), allow_nan=False).encode()

    def _analysis(self) -> Any:
        return self.monitor.analyses.get(self.source)

    def run_state(self) -> str:
        """Run control's state as the monitor's lifecycle knows it, or the monitor's own
        view (a run_start seen, no run_stop yet) when no run control drives it."""
        m = self.monitor
        if m.agent is not None:
            return str(m.lifecycle.phase.value)
        return "running" if m.run_open.get(self.source) else "idle"

    def state(self) -> dict[str, Any]:
        m, src = self.monitor, self.source
        ra = self._analysis()
        run = ra.run if ra is not None else None
        mm = m.metrics
        last = mm.beam.last_spill.get(src)
        run_eot = mm.run_eot.get(src)
        alarms = m.alarms[src]
        return webdata.state(
            cfg=m.cfg, run=run, run_state=self.run_state(), source=src,
            spills=list(ra.summaries) if ra is not None else [],
            intervals=mm.intervals(src, run) if run is not None else {},
            totals=ra.totals() if ra is not None and ra.closed_spills else None,
            eot_run=run_eot[1] if run_eot is not None and run_eot[0] == run else 0.0,
            eot_total=mm.eot_total.get(src, 0.0), beam_on=mm.beam.on(src),
            since_last_spill_s=(mm.clock() - last) if last is not None else None,
            raised=alarms.raised, times_raised=alarms.times_raised, runbooks=self.runbooks,
            lost_run=int(m.run_counts(src).get("lost", 0)), boards=m.boards, updated=last,
            spills_closed=ra.closed_spills if ra is not None else 0)

    def spills(self) -> list[dict[str, Any]]:
        ra = self._analysis()
        return [s.model_dump(mode="json") for s in (ra.summaries if ra is not None else [])]

    def spectrum(self, name: str, scope: str, fmt: str) -> dict[str, Any]:
        ra = self._analysis()
        m = self.monitor
        last = ra.summaries[-1] if ra is not None and ra.summaries else None
        if scope == "spill":
            sp = m.metrics.last_spectra.get(self.source) if last is not None else None
            spill = last.spill if last is not None else None
        else:
            sp = ra.run_spectra if ra is not None else None
            spill = None
        doc = webdata.spectra_docs(sp, m.cfg, scope=scope,
                                   run=ra.run if ra is not None else None, spill=spill)[name]
        if fmt == "root":
            h = getattr(webdata.shown(sp, m.cfg), name)
            return webdata.jsroot(h, f"{name}_{scope}", title=f"{doc['title']} ({scope})")
        return doc
