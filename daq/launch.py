"""Run services as processes: `serve` one service, `up` every service of a topology."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daq.app import Factory
from daq.errors import ConfigError, ServiceError
from daq.metrics import MetricsServer
from daq.service import Service, ignore_stop_signals, on_stop_signals
from daq.stack import StackConfig, load_stack_config
from daq.transport import close_transport


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
        mon = f.monitor(registry)
        # a restarted monitor must not account again the spills it closed before the crash
        state = Path(cfg.run_dir) / ".monitor-state.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        mon.state_file = state
        return mon
    raise ConfigError("service", name, "frontend, builder, trigger, recorder or monitor")


def _builder_control(cfg: StackConfig, builder: Service, registry: CollectorRegistry
                     ) -> Service | None:
    """With a broker in the topology, trigger configuration over MQTT in the builder's
    process: run control over BuilderDataPath (the front ends drive the runs here). Its
    state and audit trail persist in `run_dir/control`; its series join the builder's."""
    if cfg.mqtt is None:
        return None
    from daq.app import mqtt_settings
    from daq.builder_service import BuilderService
    from daq.control.datapath import BuilderDataPath
    from daq.control.service import RunControlService
    from daq.control.store import StateStore

    assert isinstance(builder, BuilderService)
    store = StateStore(Path(cfg.run_dir) / "control")
    active = store.load().trigger_active  # before the first slice, not at broker connect
    return RunControlService(mqtt_settings(cfg, "builder"), store,
                             BuilderDataPath(builder.builder, active=active),
                             registry=registry)


async def serve(name: str, cfg: StackConfig, *, index: int = 0) -> int:
    """Run one service until its input ends or SIGTERM/SIGINT asks it to drain and stop."""
    registry = CollectorRegistry()
    # first: a port in use ends the process before it binds sockets or compiles kernels
    server = MetricsServer(registry, port=cfg.metrics.port(name, index), addr=cfg.metrics.addr,
                           field=f"metrics.{name}" + (f" + {index}" if name == "trigger" else ""))
    try:
        svc = _build(name, cfg, index, registry)
        control = _builder_control(cfg, svc, registry) if name == "builder" else None
    except BaseException:
        server.close()
        raise
    loop = asyncio.get_running_loop()
    on_stop_signals(loop, svc.stop)
    print(f"{name}{index if name == 'trigger' else ''}: metrics at {server.url}", flush=True)
    if control is not None:
        print(f"{name}: trigger configuration over MQTT at {cfg.mqtt} (runs are driven by "
              "the front ends)", flush=True)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if control is not None:
                await stack.enter_async_context(control)
            async with svc:
                await svc.wait()
            if control is not None:  # leave the broker cleanly: status "offline", no will
                control.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(control.wait(), 5.0)
    finally:
        ignore_stop_signals(loop)
        server.close()
        await asyncio.to_thread(close_transport)  # before the interpreter exits
    return 0


# --- up: a supervisor of processes -------------------------------------------------------


def status_bytes(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status (`VmHWM`, `VmRSS`) in bytes; 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process (Linux), in bytes; 0 when it cannot be read."""
    return status_bytes(pid, "VmHWM")


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
    """One service process of `up`; `restart()` starts it again with the same command."""

    def __init__(self, name: str, index: int, config: Path, cfg: StackConfig) -> None:
        self.name = name if name != "trigger" else f"trigger-{index}"
        self.service, self.index = name, index
        self.metrics = f"http://{cfg.metrics.addr}:{cfg.metrics.port(name, index)}/metrics"
        self.cmd = [sys.executable, "-m", "daq.cli", "serve", name, "--config", str(config)]
        if name == "trigger":
            self.cmd += ["--index", str(index)]
        self.peak_rss = 0
        self.restarts = 0
        self.exits: list[int] = []  # return codes of earlier incarnations (-9: SIGKILL)
        self.popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, start_new_session=True)

    def crashed(self) -> bool:
        """Ended by a signal or with an error (a clean end of input exits 0)."""
        rc = self.popen.poll()
        return rc is not None and rc != 0

    def kill(self) -> None:
        """SIGKILL, as a crash would end it (fault injection)."""
        if self.popen.poll() is None:
            self.sample()
            self.popen.kill()
            self.popen.wait()

    def restart(self) -> None:
        """Start the service again (after a crash); the old process is reaped first."""
        self.kill()
        self.exits.append(int(self.popen.returncode))
        self.restarts += 1
        self.popen = self._spawn()

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
                "metrics": self.metrics, "pid": self.popen.pid, "restarts": self.restarts,
                "earlier_exits": list(self.exits)}


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
    dead = [p for p in procs if p.popen.poll() is not None]
    if dead:  # a run without one of them would look healthy and lose or skew data
        stop_all(procs)
        raise ServiceError(", ".join(f"{p.name} exited with code {p.popen.returncode}"
                                     for p in dead) + " while starting (its error is above); "
                           "nothing was run")
    procs.append(Proc("frontend", 0, config, cfg))
    return cfg, procs


def wait_run_recorded(procs: list[Proc], *, settle_s: float = 60.0,
                      step: Any = None) -> bool:
    """After the builder ended its stream: wait until the recorder has closed the run."""
    rec = next(p for p in procs if p.service == "recorder")
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        for p in procs:
            p.sample()
        if step is not None:
            step()
        files = rec.metric('na64_recorder_files_total{source="live"}') or 0.0
        files += rec.metric('na64_recorder_files_total{source="replay"}') or 0.0
        # and the monitors have closed every spill (forced ones after their grace time)
        mon = [p.metric("na64_monitor_open_spills") for p in procs if p.service == "monitor"]
        if files >= 1 and (rec.metric("na64_recorder_run") or 0.0) == 0.0 \
                and all(not n for n in mon):
            return True
        time.sleep(0.2)
    return False


def run_figures(samples: dict[str, float], source: str = "live") -> dict[str, Any]:
    """What the shift crew reads first, from a scrape of the monitor's /metrics (`scrape`):
    spills closed (and forced), events, EOT, shed and lost events, efficiencies, pileup,
    the alarms raised now and every alarm raised so far. Figures not published yet are None."""
    src = f'source="{source}"'

    def total(name: str, **labels: str) -> float:
        want = [src, *(f'{k}="{v}"' for k, v in labels.items())]
        return sum(v for k, v in samples.items()
                   if k.split("{")[0] == name and all(w in k for w in want))

    def gauge(name: str, **labels: str) -> float | None:
        keys = [k for k in samples if k.split("{")[0] == name and src in k
                and all(f'{a}="{b}"' in k for a, b in labels.items())]
        return samples[keys[0]] if keys else None

    return {
        "spills": int(total("na64_spills_total")),
        "forced_spills": int(total("na64_spills_total", closed="forced")),
        "last_spill": gauge("na64_spill_number"),
        "events": int(total("na64_events_total")),
        "eot": total("na64_eot_total"),
        "shed": int(total("na64_shed_events_total")),
        "lost": int(total("na64_monitor_lost_events_total")),
        "veto_efficiency": gauge("na64_efficiency_ratio", detector="veto", bound="value"),
        "hcal_efficiency": gauge("na64_efficiency_ratio", detector="hcal", bound="value"),
        "pileup": gauge("na64_pileup_ratio"),
        "alarms": _alarm_names(samples, "na64_alarm_active", src),
        "alarms_raised": _alarm_names(samples, "na64_alarms_raised_total", src),
    }


def _alarm_names(samples: dict[str, float], name: str, src: str) -> list[str]:
    """Alarms whose series `name` is non-zero."""
    return sorted(k.split('alarm="')[1].split('"')[0] for k, v in samples.items()
                  if k.startswith(name + "{") and src in k and v > 0)


def _monitor_figures(procs: list[Proc]) -> dict[str, Any] | None:
    mon = next(p for p in procs if p.service == "monitor")
    try:
        return run_figures(scrape(mon.metrics))
    except OSError:
        return None  # restarting: the next look will do


def supervise(procs: list[Proc], *, max_restarts: int) -> list[str]:
    """Restart policy: a service that crashed (signal or error exit) is started again, at
    most `max_restarts` times each; the front ends (a run's beam) are never restarted.
    Returns the names restarted now."""
    out = []
    for p in procs:
        if p.service != "frontend" and p.crashed() and p.restarts < max_restarts:
            p.restart()
            out.append(p.name)
    return out


def up(config: Path, *, on_sample: Any = None, max_restarts: int = 3,
       timeout_s: float | None = None,
       progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run a topology's simulated run to the end across processes; report every process
    and, under `figures`, the run's figures as the monitor published them (`run_figures`).

    A crashed service is restarted (at most `max_restarts` times); `on_sample(procs)` is
    called every 0.1 s (fault injection in the tests uses it), `progress(figures)` twice a
    second with the monitor's figures so far and `restarts` (service: times restarted).
    """
    cfg, procs = start(config)
    ok = True
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    figures: dict[str, Any] | None = None
    next_look = 0.0

    def step() -> None:
        nonlocal figures, next_look
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"the run did not end within {timeout_s} s")
        for p in procs:
            p.sample()
        if on_sample is not None:
            on_sample(procs)
        supervise(procs, max_restarts=max_restarts)
        if progress is not None and time.monotonic() >= next_look:
            next_look = time.monotonic() + 0.5
            figures = _monitor_figures(procs) or figures
            if figures is not None:
                progress({**figures, "restarts": {p.name: p.restarts for p in procs
                                                  if p.restarts}})
        time.sleep(0.1)

    try:
        by = {p.name: p for p in procs}
        for name in ("frontend", "builder"):
            while by[name].popen.poll() is None or (by[name].crashed() and \
                    by[name].restarts < max_restarts and name != "frontend"):
                step()
            ok &= by[name].popen.returncode == 0
        ok &= wait_run_recorded(procs, step=step)
        if on_sample is not None:
            on_sample(procs)  # the settled state, before anything is stopped
        figures = _monitor_figures(procs) or figures
    except (KeyboardInterrupt, TimeoutError):
        ok = False
    finally:
        # crashed more often than it may be restarted: the run went on without it
        gave_up = [p.name for p in procs if p.service != "frontend" and p.crashed()]
        stop_all(procs)
    return {"ok": ok and not gave_up, "run_dir": cfg.run_dir, "gave_up": gave_up,
            "figures": figures, "services": {p.name: p.report() for p in procs}}


#: shutdown order: upstream first, so that each service drains what its producers sent
STOP_ORDER = ("frontend", "builder", "trigger", "recorder", "monitor")


def stop_all(procs: list[Proc]) -> None:
    """SIGTERM every service in data-flow order, each stage after the one before exited."""
    for stage in STOP_ORDER:
        for p in procs:
            if p.service == stage:
                with contextlib.suppress(Exception):
                    p.terminate()
