"""Run services as processes: `serve` one service, `up` every service of a topology."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daq import notify
from daq.app import Factory
from daq.errors import ConfigError, ServiceError
from daq.metrics import MetricsServer
from daq.service import Service, ignore_stop_signals, on_stop_signals
from daq.stack import StackConfig, load_stack_config
from daq.system import Stack
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
    raise ConfigError("service", name, "frontend, builder, trigger, recorder, monitor or "
                      "control")


class _ConductorCollector:
    """Run control's view of every service at scrape time: online, and in which phase."""

    def __init__(self, conductor: Any) -> None:
        self.conductor = conductor

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from daq.lifecycle import Phase

        up = GaugeMetricFamily("na64_control_service_up", "1 while a service of the "
                               "topology talks to run control", labels=["service"])
        phase = GaugeMetricFamily("na64_control_service_phase", "1 for the lifecycle phase "
                                  "each service reports", labels=["service", "phase"])
        for name, m in self.conductor.members.items():
            up.add_metric([name], float(m.online))
            for p in Phase:
                phase.add_metric([name, p.value], float(m.online and m.phase is p))
        yield up
        yield phase
        yield CounterMetricFamily("na64_control_impostors", "Command-channel messages "
                                  "refused: sent under a service's name by a CURVE key not "
                                  "its own", value=self.conductor.impostors)


async def _serve_control(cfg: StackConfig, registry: CollectorRegistry) -> None:
    """Run control in its own process: the conductor (every service's command channel)
    and run control over MQTT. SIGTERM stops a run still open (drained, recorded), then
    leaves the broker with status "offline"."""
    from daq.app import mqtt_settings
    from daq.control.service import RunControlService
    from daq.control.store import StateStore

    settings = mqtt_settings(cfg, "runcontrol")
    if settings is None:
        raise ConfigError("mqtt", None, "run control needs a broker: set mqtt in the "
                          "topology, or let `na64daq up` start its own")
    conductor = Factory(cfg).conductor(registry)  # with CURVE: each name from its own key
    registry.register(_ConductorCollector(conductor))
    svc = RunControlService(settings, StateStore(Path(cfg.run_dir) / "control"), conductor,
                            registry=registry, adopt=True)
    from daq.logs import bind

    bind(svc)  # its log lines carry the run it drives
    stop, channel_done = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    on_stop_signals(loop, notify.stopping_then(stop.set))
    channel = asyncio.create_task(conductor.serve(channel_done), name="conductor")
    try:
        async with svc:
            adopted = await svc.adopt()  # restarted during a run: the data never stopped
            if adopted is not None:
                print(f"control: the run left open was {'taken up' if adopted else 'closed'}",
                      flush=True)
            notify.sd_notify("READY=1")
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, asyncio.ensure_future(svc.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if svc.core.state.state.value in ("running", "paused"):
                with contextlib.suppress(Exception):
                    await svc.ctl.request("stop", user="runcontrol",
                                          reason="run control was shut down")
            svc.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(svc.wait(), 10.0)
    finally:
        channel_done.set()
        await asyncio.gather(channel, return_exceptions=True)


async def serve(name: str, cfg: StackConfig, *, index: int = 0,
                log_format: str = "text") -> int:
    """Run one service until its input ends or SIGTERM/SIGINT asks it to drain and stop.

    Logs go to stderr (under `up`: run_dir/logs/<service>.log) with time, service, run
    and spill (daq.logs); `log_format` "json": one JSON object per line."""
    import logging

    from daq import logs

    logs.setup_logging(f"{name}{index if name == 'trigger' else ''}",
                       fmt="json" if log_format == "json" else "text")
    registry = CollectorRegistry()
    # first: a port in use ends the process before it binds sockets or compiles kernels
    server = MetricsServer(registry, port=cfg.metrics.port(name, index), addr=cfg.metrics.addr,
                           field=f"metrics.{name}" + (f" + {index}" if name == "trigger" else ""))
    loop = asyncio.get_running_loop()
    if name == "control":
        print(f"control: metrics at {server.url}, command channel {cfg.endpoints.control}",
              flush=True)
        try:
            await _serve_control(cfg, registry)
        finally:
            ignore_stop_signals(loop)
            server.close()
            await asyncio.to_thread(close_transport)
        return 0
    try:
        svc = _build(name, cfg, index, registry)
    except BaseException:
        server.close()
        raise
    logs.bind(svc)
    on_stop_signals(loop, notify.stopping_then(svc.stop))
    print(f"{name}{index if name == 'trigger' else ''}: metrics at {server.url}", flush=True)
    log = logging.getLogger("na64.serve")
    log.info("started, metrics at %s", server.url)
    try:
        async with svc:
            await notify.ready(svc)  # systemd's Type=notify (deploy/systemd)
            await svc.wait()
    finally:
        log.info("stopped")
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
    """One service process of `up`; `restart()` starts it again with the same command.

    Its standard error goes to `run_dir/logs/<name>.log`, so that a service that cannot
    start is reported with its last error line."""

    def __init__(self, name: str, index: int, config: Path, cfg: StackConfig, *,
                 env: dict[str, str] | None = None, cmd: list[str] | None = None) -> None:
        """`cmd`: another program in this service's place (it must speak the same command
        channel under the same name, e.g. the benchmark's front end)."""
        self.name = name if name != "trigger" else f"trigger-{index}"
        self.service, self.index = name, index
        self.metrics = f"http://{cfg.metrics.addr}:{cfg.metrics.port(name, index)}/metrics"
        self.cmd = cmd or [sys.executable, "-m", "daq.cli", "serve", name, "--config",
                           str(config)]
        if name == "trigger" and cmd is None:
            self.cmd += ["--index", str(index)]
        self.env = env
        logs = Path(cfg.run_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / f"{self.name}.log"
        self.peak_rss = 0
        self.restarts = 0
        self.exits: list[int] = []  # return codes of earlier incarnations (-9: SIGKILL)
        self.popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as err:
            return subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, env=self.env)

    def last_error(self) -> str:
        """The last non-empty line of the service's log ('' when there is none)."""
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines()
                     if ln.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

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
                "earlier_exits": list(self.exits), "log": str(self.log)}


#: start order: run control and the binders first, then the workers, then the front ends
START_ORDER = ("control", "builder", "recorder", "monitor", "trigger", "frontend")


def spawn_all(config: Path, cfg: StackConfig, env: dict[str, str],
              commands: dict[str, list[str]] | None = None) -> list[Proc]:
    """Every process of the topology; `commands` replaces a service's program by name."""
    procs: list[Proc] = []
    for name in START_ORDER:
        n = cfg.workers if name == "trigger" else 1
        procs += [Proc(name, i, config, cfg, env=env, cmd=(commands or {}).get(name))
                  for i in range(n)]
    return procs


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
    """For the shift crew's display only (never to decide what to do next)."""
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


#: shutdown order: run control first (it stops a run still open, drained and recorded),
#: then upstream first, so that each service drains what its producers sent
STOP_ORDER = ("control", "frontend", "builder", "trigger", "recorder", "monitor")


def stop_all(procs: list[Proc]) -> None:
    """SIGTERM every service in STOP_ORDER, each stage after the one before exited."""
    for stage in STOP_ORDER:
        for p in procs:
            if p.service == stage:
                with contextlib.suppress(Exception):
                    p.terminate()


def parse_autopilot(text: str) -> tuple[int, int]:
    """`RUNS:SPILLS` -> (runs, spills); ConfigError naming the value otherwise."""
    runs, sep, spills = text.partition(":")
    try:
        r, sp = int(runs), int(spills)
    except ValueError:
        r = sp = 0
    if not sep or r < 1 or sp < 1:
        raise ConfigError("autopilot", text, "RUNS:SPILLS, two integers >= 1 (e.g. 3:10)")
    return r, sp


def up(config: Path, *, autopilot: tuple[int, int] | None = None, on_sample: Any = None,
       max_restarts: int = 3, timeout_s: float | None = None,
       progress: Callable[[dict[str, Any]], None] | None = None,
       stop: Callable[[], bool] | None = None,
       commands: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Start every service of a topology as its own process under run control and keep
    them up (a ProcessStack): until `stop()` is true, SIGTERM/SIGINT/SIGHUP, or, with
    `autopilot=(RUNS, SPILLS)`, until that many runs of that many spills were taken (each
    started and stopped through run control over MQTT, as the shift crew would). Every
    process is stopped on the way out (run control first: it closes a run still open).

    The keywords are ProcessStack's; `progress(d)` is called twice a second with the run
    state, the monitor's figures and `restarts`. The report: `ok`, `runs` (each run's
    record), `figures`, `gave_up`, and each service's exit code under `services`.
    """
    stack = ProcessStack(config, on_sample=on_sample, max_restarts=max_restarts,
                         timeout_s=timeout_s, progress=progress, commands=commands)
    report: dict[str, Any] = {"ok": True, "runs": []}
    try:
        asyncio.run(_up(stack, autopilot, stop, report))
    finally:
        # after the stop: each process's exit code (0: a clean, drained exit)
        report["services"] = {p.name: p.report() for p in stack.procs}
    gave_up = [p.name for p in stack.procs if p.service != "frontend" and p.crashed()]
    report.update(run_dir=stack.cfg.run_dir, gave_up=gave_up, figures=stack.figures,
                  broker=stack.broker_url)
    report["ok"] = (report["ok"] and not gave_up
                    and all(p.popen.returncode == 0 for p in stack.procs))
    return report


async def _up(stack: ProcessStack, autopilot: tuple[int, int] | None,
              stop: Callable[[], bool] | None, report: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    leave = asyncio.Event()
    if threading.current_thread() is threading.main_thread():  # only there, by Python
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, leave.set)

    def leaving() -> bool:
        return leave.is_set() or (stop is not None and stop())

    runs: list[dict[str, Any]] = report["runs"]
    try:
        async with stack:
            n_runs, spills = autopilot or (0, 0)
            for _ in range(n_runs):
                if leaving():
                    break
                runs.append(await stack.take_run(spills=spills, until=leaving,
                                                 comment="autopilot"))
                if stack.run_state == "error":
                    report["ok"] = False
                    break
            while autopilot is None and not leaving():
                await stack.tick()
            await stack.settle()
    except (TimeoutError, ServiceError) as e:
        report["ok"] = False
        runs.append({"error": str(e)})


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM must not cut the shutdown short and leave orphans. Only
    the main thread may change signal handlers; elsewhere (up in a thread) nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


def _shift_settings(cfg: StackConfig, broker: Any) -> Any:
    """The account `up` itself uses on the broker: the shift crew's (start, stop, read)."""
    from daq.mqtt import MqttSettings

    if broker is not None:
        return MqttSettings.from_file(broker.credentials_file("shift"))
    return MqttSettings.from_env()


class ProcessStack(Stack):
    """Every service of a topology as its own process (`na64daq serve NAME`), run control
    (`serve control`) among them, and `up`'s own Mosquitto when the topology names no
    broker (daq.control.localbroker). What run control holds is read as the shift crew
    reads it: the retained run state and `na64/services/<name>` documents over MQTT.

    A crashed service is restarted (at most `max_restarts` times each) and rejoins the run;
    a service that dies while starting ends the launch with its name, exit code and last
    error line. `commands` puts another program in a service's place (the benchmark's front
    end); `on_sample(procs)` is called every 0.1 s (fault injection in the tests);
    `timeout_s` bounds the whole life of the stack (TimeoutError).
    """

    def __init__(self, config: Path, *, on_sample: Any = None, max_restarts: int = 3,
                 timeout_s: float | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None,
                 commands: dict[str, list[str]] | None = None) -> None:
        self.config = Path(config)
        self.cfg = load_stack_config(config)
        self.on_sample = on_sample
        self.max_restarts = max_restarts
        self.timeout_s = timeout_s
        self.progress = progress
        self.commands = commands
        self.procs: list[Proc] = []
        self.broker: Any = None
        #: the broker's URL: the topology's, or that of this stack's own Mosquitto
        self.broker_url: str | None = self.cfg.mqtt
        #: the monitor's figures for the display (a scrape; never used to decide anything)
        self.figures: dict[str, Any] | None = None
        self._ctl: Any = None
        self._exit = contextlib.AsyncExitStack()
        self._deadline: float | None = None
        self._next_look = 0.0

    @property
    def expected(self) -> list[str]:
        from daq.app import member_names

        return member_names(self.cfg)

    # --- what run control holds, over MQTT ---------------------------------------------

    def run_document(self) -> dict[str, Any]:
        from daq.control import protocol as P

        return dict(self._ctl.seen(P.RUN_STATE).get(P.RUN_STATE) or {}) if self._ctl else {}

    def service_documents(self) -> dict[str, dict[str, Any]]:
        from daq.control import protocol as P

        if self._ctl is None:
            return {}
        return {t.rsplit("/", 1)[-1]: d for t, d in self._ctl.seen(f"{P.SERVICES}/+").items()}

    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self.procs}

    async def request(self, verb: str, **args: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self._ctl.run(verb, **args)
        return reply

    # --- life ---------------------------------------------------------------------------

    async def __aenter__(self) -> ProcessStack:
        from daq.control import protocol as P
        from daq.control.client import ControlClient
        from daq.control.localbroker import LocalBroker  # late: the system layer's own tool

        if self.timeout_s is not None:
            self._deadline = time.monotonic() + self.timeout_s
        env = dict(os.environ)
        try:
            if self.cfg.mqtt is None:
                self.broker = await asyncio.to_thread(
                    LocalBroker(run_dir=Path(self.cfg.run_dir)).start)
                from daq.app import UP_BROKER_ENV

                env |= self.broker.env()
                env[UP_BROKER_ENV] = self.broker_url = self.broker.url
            self.procs = spawn_all(self.config, self.cfg, env, self.commands)
            self._ctl = await self._exit.enter_async_context(
                ControlClient(_shift_settings(self.cfg, self.broker), timeout=60.0))
            await self._ctl.follow(f"{P.SERVICES}/+", P.RUN_STATE, P.ACTIVE)
            await self.wait_ready()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def check_starting(self) -> None:
        """A service that dies while starting stops the launch with its name, exit code
        and last error line (never a hang)."""
        dead = [p for p in self.procs if p.popen.poll() is not None]
        if dead:
            raise ServiceError("; ".join(
                f"{p.name} exited with code {p.popen.returncode} while starting: "
                f"{p.last_error() or '(no error line)'} (log: {p.log})" for p in dead))

    async def tick(self) -> None:
        """0.1 s of supervision: sample every process, call `on_sample`, restart what
        crashed, show progress; TimeoutError past `timeout_s`, ServiceError when the
        broker of this stack died."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise TimeoutError(f"not done within {self.timeout_s} s")
        if self.broker is not None and not self.broker.running:
            raise ServiceError(f"the broker of this `up` ({self.broker.url}) died: see "
                               f"{self.broker.directory / 'mosquitto.log'}")
        for p in self.procs:
            p.sample()
        if self.on_sample is not None:
            self.on_sample(self.procs)
        supervise(self.procs, max_restarts=self.max_restarts)
        if self.progress is not None and time.monotonic() >= self._next_look:
            from daq.control import protocol as P

            self._next_look = time.monotonic() + 0.5
            self.figures = _monitor_figures(self.procs) or self.figures
            self.progress({**(self.figures or {}), "run_state": self.run_document(),
                           "trigger": self._ctl.seen(P.ACTIVE).get(P.ACTIVE),
                           "restarts": {p.name: p.restarts for p in self.procs if p.restarts},
                           "services": self.service_documents()})
        await asyncio.sleep(0.1)

    async def settle(self) -> None:
        """The settled state, before anything is stopped: the last sample for `on_sample`
        and the monitor's last figures."""
        if self.on_sample is not None:
            self.on_sample(self.procs)
        self.figures = _monitor_figures(self.procs) or self.figures

    async def __aexit__(self, *exc: Any) -> None:
        """Every process stopped (run control first: it closes a run still open), then the
        broker; a second signal cannot cut this short."""
        try:
            await self._exit.aclose()
        finally:
            self._ctl = None
            with _signals_held():
                await asyncio.to_thread(stop_all, self.procs)
                if self.broker is not None:
                    await asyncio.to_thread(self.broker.stop)


