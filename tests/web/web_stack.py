"""Helpers of the browser tests: a running demo (LocalStack with its shift page) in a
thread, Debian's Chromium, and /metrics read as numbers."""

from __future__ import annotations

import asyncio
import os
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daq.stack import StackConfig

CHROMIUM = os.environ.get("NA64_CHROMIUM", "/usr/bin/chromium")


def chromium() -> str:
    """Debian's chromium (Playwright cannot download a browser here)."""
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{CHROMIUM} is not installed; the test command must install it")
        pytest.skip(f"{CHROMIUM} is not installed (run the README's test command)")
    pytest.importorskip("playwright", reason="the test extra installs playwright")
    return CHROMIUM


def demo_config(run_dir: Path, *, spills: int, factor: float, tag: str) -> StackConfig:
    """The demo's topology on inproc transports, every port free, the shift page on."""
    ports = dict.fromkeys(("frontend", "builder", "recorder", "monitor", "control",
                           "trigger", "web"), 0)
    return StackConfig.parse({
        "run_dir": str(run_dir), "workers": 2, "metrics": ports,
        "simulator": {"spills": spills, "pace": "factor", "factor": factor,
                      "sim": {"intensity": 6e6, "generated_s": 0.02, "seed": 7}},
    }).inproc(tag)


class DemoThread:
    """daq.app.LocalStack in its own thread and loop, taking one run of the topology's
    spills from the start; `close()` stops it (a run still open is stopped, drained)."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.stack: Any = None
        self.up = threading.Event()
        self.run_closed = threading.Event()
        self._close = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="demo", daemon=True)
        self.thread.start()
        if not self.up.wait(120) or self.error is not None:
            self.close()
            raise RuntimeError(f"demo not up: {self.error!r}")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # reported through `up`/`close`
            self.error = e
        finally:
            self.up.set()
            self.run_closed.set()

    async def _run(self) -> None:
        from daq.app import LocalStack

        async with LocalStack(self.cfg) as stack:
            self.stack = stack
            await stack.start_run(spills=self.cfg.simulator.spills)
            self.up.set()
            await stack.wait_run_closed()
            self.run_closed.set()
            await asyncio.to_thread(self._close.wait)

    @property
    def page_url(self) -> str:
        return str(self.stack.monitor.web.url)

    @property
    def metrics_url(self) -> str:
        return str(self.stack.servers["monitor"].url)

    def close(self) -> None:
        self._close.set()
        self.thread.join(60)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a /metrics page."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
