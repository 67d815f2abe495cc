"""Helpers of the deploy tests: a real Prometheus on loopback and the pipeline in a thread.

The Prometheus configuration and rules are rendered by the same generators as the files in
deploy/prometheus/ (only the targets' ports, the intervals and `for:` differ).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daq.stack import StackConfig
from monitors.dashboards import prometheus, rules
from monitors.dashboards.files import alarm_config
from monitors.dashboards.yamltext import dump
from tests.conftest import free_tcp_ports

SERVICES = ("frontend", "builder", "trigger", "recorder", "monitor", "control")  # LocalStack's


def require(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                  else None)
    if path is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{name} is not installed; the test command must install it")
        pytest.skip(f"{name} is not installed (run the README's test command)")
    return path


def free_ports(n: int) -> int:
    """A base port such that base .. base+n-1 were free a moment ago."""
    return free_tcp_ports(n, block=True)[0]


def stack_config(run_dir: Path, *, spills: int, factor: float, intensity: float,
                 generated_s: float, workers: int = 2, tag: str = "deploy") -> StackConfig:
    """The data path on inproc transports, every /metrics on its own free loopback port."""
    ports = {s: free_ports(workers if s == "trigger" else 1)
             for s in ("frontend", "builder", "recorder", "monitor", "control", "trigger")}
    return StackConfig.parse({
        "run_dir": str(run_dir), "workers": workers, "metrics": ports,
        "simulator": {"spills": spills, "pace": "factor", "factor": factor,
                      "sim": {"intensity": intensity, "generated_s": generated_s, "seed": 3}},
    }).inproc(tag)


class Prometheus:
    """/usr/bin/prometheus on a free loopback port, scraping `cfg`'s services every second."""

    def __init__(self, workdir: Path, cfg: StackConfig, *, for_s: float) -> None:
        binary = require("prometheus")
        rule_dir = workdir / "rules"
        rule_dir.mkdir(parents=True)
        files = []
        for name, doc in rules.rule_groups(for_s=for_s, alarm=alarm_config(cfg)).items():
            (rule_dir / name).write_text(dump(doc))
            files.append(str(rule_dir / name))
        conf = prometheus.config(cfg, scrape_interval="1s", evaluation_interval="1s",
                                 rule_files=files, services=SERVICES)
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(dump(conf))
        self.port = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config_file}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start: {self.logtext()}")
            time.sleep(0.1)

    def logtext(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: Any) -> Any:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0
                    ) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)
                    ["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def wait_up(self, jobs: int, timeout: float = 30) -> None:
        """Until every target of the `jobs` jobs has been scraped and answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ups = self.query("up")
            if len({u["metric"]["job"] for u in ups}) == jobs and all(
                    u["value"][1] == "1" for u in ups):
                return
            time.sleep(0.2)
        raise TimeoutError(f"targets not up: {self.query('up')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class StackThread:
    """daq.app.LocalStack (every service and run control in one process) in its own thread
    and event loop: up once built, takes one run of the topology's spills on `go()`, and
    stays up (scraped) until `close()`."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.stack: Any = None
        self.built = threading.Event()
        self.done = threading.Event()
        self._go = threading.Event()
        self._close = threading.Event()
        self.error: BaseException | None = None
        self.reply: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._main, name="local-stack", daemon=True)
        self.thread.start()
        if not self.built.wait(120) or self.error is not None:
            self.close()
            raise RuntimeError(f"stack not built: {self.error!r}")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            self.built.set()
            self.done.set()

    async def _run(self) -> None:
        from daq.app import LocalStack

        async with LocalStack(self.cfg) as stack:
            self.stack = stack
            self.built.set()
            await asyncio.to_thread(self._go.wait)
            if not self._close.is_set():
                try:
                    self.reply = await stack.take_run(spills=self.cfg.simulator.spills)
                finally:
                    self.done.set()
            await asyncio.to_thread(self._close.wait)

    def go(self) -> None:
        self._go.set()

    def running(self) -> bool:
        return not self.done.is_set()

    def join(self, timeout: float = 120) -> None:
        """Until the run is closed (drained); the services stay up."""
        self._go.set()
        assert self.done.wait(timeout), "the run did not close"
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._close.set()
        self._go.set()
        self.thread.join(60)
