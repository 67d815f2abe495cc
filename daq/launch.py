"""Run services as processes: `serve` one service, `up` every service of a topology."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daq.app import Factory
from daq.errors import ConfigError
from daq.metrics import MetricsServer
from daq.service import Service
from daq.stack import StackConfig, load_stack_config


def _build(name: str, cfg: StackConfig, index: int, registry: CollectorRegistry) -> Service:
    f = Factory(cfg)
    if name == "frontend":
        return f.frontend(registry)
    if name == "builder":
        return f.builder(registry)
    if name == "trigger":
        if not 0 <= index < cfg.workers:
            raise ConfigError("index", index, f"0 <= index < workers ({cfg.workers})")
        return f.worker(index, registry)
    if name == "recorder":
        return f.recorder(registry)
    if name == "monitor":
        return f.monitor(registry)
    raise ConfigError("service", name, "frontend, builder, trigger, recorder or monitor")


async def serve(name: str, cfg: StackConfig, *, index: int = 0) -> int:
    """Run one service until its input ends or SIGTERM/SIGINT asks it to drain and stop."""
    registry = CollectorRegistry()
    svc = _build(name, cfg, index, registry)
    server = MetricsServer(registry, port=cfg.metrics.port(name, index), addr=cfg.metrics.addr)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, svc.stop)
    print(f"{name}{index if name == 'trigger' else ''}: metrics at {server.url}", flush=True)
    try:
        async with svc:
            await svc.wait()
    finally:
        server.close()
    return 0


# --- up: a supervisor of processes -------------------------------------------------------


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process (Linux), in bytes; 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Samples of a /metrics page as {name{labels}: value}."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                            + "}" if s.labels else "")
            out[key] = s.value
    return out


class Proc:
    """One service process of `up`."""

    def __init__(self, name: str, index: int, config: Path, cfg: StackConfig) -> None:
        self.name = name if name != "trigger" else f"trigger-{index}"
        self.service, self.index = name, index
        self.metrics = f"http://{cfg.metrics.addr}:{cfg.metrics.port(name, index)}/metrics"
        cmd = [sys.executable, "-m", "daq.cli", "serve", name, "--config", str(config)]
        if name == "trigger":
            cmd += ["--index", str(index)]
        self.popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
        self.peak_rss = 0

    def sample(self) -> None:
        if self.popen.poll() is None:
            self.peak_rss = max(self.peak_rss, peak_rss_bytes(self.popen.pid))

    def metric(self, name: str) -> float | None:
        try:
            return scrape(self.metrics).get(name)
        except OSError:
            return None

    def terminate(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.sample()
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)

    def report(self) -> dict[str, Any]:
        return {"exit": self.popen.returncode, "peak_rss_bytes": self.peak_rss,
                "metrics": self.metrics, "pid": self.popen.pid}


def _wait_metrics(procs: list[Proc], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        while not _serving(p) and p.popen.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{p.name} did not serve {p.metrics}")
            time.sleep(0.1)


def _serving(p: Proc) -> bool:
    try:
        scrape(p.metrics)
        return True
    except OSError:
        return False


def start(config: Path) -> tuple[StackConfig, list[Proc]]:
    """Start binders, then workers (compiled and ready), then the front ends."""
    cfg = load_stack_config(config)
    procs = [Proc(n, 0, config, cfg) for n in ("builder", "recorder", "monitor")]
    procs += [Proc("trigger", i, config, cfg) for i in range(cfg.workers)]
    _wait_metrics(procs)
    for p in procs:  # the workers report ready once their kernels are compiled
        if p.service == "trigger":
            while p.metric("na64_trigger_ready") not in (1.0,) and p.popen.poll() is None:
                time.sleep(0.1)
    procs.append(Proc("frontend", 0, config, cfg))
    return cfg, procs


def wait_run_recorded(procs: list[Proc], *, settle_s: float = 60.0) -> bool:
    """After the builder ended its stream: wait until the recorder has closed the run."""
    rec = next(p for p in procs if p.service == "recorder")
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        for p in procs:
            p.sample()
        files = rec.metric('na64_recorder_files_total{source="live"}') or 0.0
        files += rec.metric('na64_recorder_files_total{source="replay"}') or 0.0
        if files >= 1 and (rec.metric("na64_recorder_run") or 0.0) == 0.0:
            return True
        time.sleep(0.2)
    return False


def up(config: Path, *, on_sample: Any = None) -> dict[str, Any]:
    """Run a topology's simulated run to the end across processes; report every process."""
    cfg, procs = start(config)
    ok = True
    try:
        by = {p.name: p for p in procs}
        for name in ("frontend", "builder"):
            while by[name].popen.poll() is None:
                for p in procs:
                    p.sample()
                if on_sample is not None:
                    on_sample(procs)
                time.sleep(0.2)
            ok &= by[name].popen.returncode == 0
        ok &= wait_run_recorded(procs)
    except KeyboardInterrupt:
        ok = False
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate()
    return {"ok": ok, "run_dir": cfg.run_dir,
            "services": {p.name: p.report() for p in procs}}


def env_without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
