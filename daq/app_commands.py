"""`na64daq demo`, `serve` and `up`: parsing and printing; the work is in daq.app/daq.launch."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daq.stack import SERVICES, StackConfig, load_stack_config


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("demo", help="simulator, builder, trigger, recorder and monitors in one "
                       "process, with a live view", description=(
                           "Run the whole system in one process on in-process transports: a "
                           "simulated beam, the event builder, trigger workers, the recorder "
                           "and the monitors. Stops after --spills spills or on Ctrl-C, and "
                           "prints a run summary."))
    p.add_argument("--spills", type=int, default=10, help="spills to run (default 10)")
    p.add_argument("--intensity", type=float, default=6e6,
                   help="beam particles per 4.8 s spill (default 6e6)")
    p.add_argument("--mode", choices=("feature", "waveform"), default="feature")
    p.add_argument("--generated-s", type=float, default=0.1, help=(
        "seconds of each spill to simulate, at the full rate so that pileup is right "
        "(default 0.1; 4.8 is a whole spill)"))
    p.add_argument("--workers", type=int, default=2, help="trigger workers (default 2)")
    p.add_argument("--metrics-port", type=int, default=0, help=(
        "/metrics port of the monitor; the other services use the next ports "
        "(default 0: free ports, printed; with --mqtt chosen once, the same for every run)"))
    p.add_argument("--web-port", type=int, default=0, help=(
        "port of the shift page, the monitor's live web page (default 0: a free port, "
        "printed)"))
    p.add_argument("--mqtt", metavar="URL", default=None, help=(
        "run under run control on this broker: runs start and stop with `na64daq ctl`, "
        "trigger changes apply at the next spill; spill summaries, alarms and status are "
        "published there (credentials from NA64_MQTT_USERNAME / NA64_MQTT_PASSWORD)"))
    p.add_argument("--run-dir", default="runs", help="where run files go (default ./runs)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other simulation setting (e.g. ecal_gain_scale=0.92: an 8 %% "
                   "ECAL gain drop the calibration does not know of)")
    p.add_argument("--pace", choices=("max", "realtime", "factor"), default="max")
    p.add_argument("--factor", type=float, default=1.0)
    p.add_argument("--no-live", action="store_true", help="no live view (logs and summary only)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=_demo)

    s = sub.add_parser("serve", help="run one service of a topology (one process per service)")
    s.add_argument("service", choices=list(SERVICES))
    s.add_argument("--config", required=True, help="topology TOML (see deploy/topology.toml)")
    s.add_argument("--index", type=int, default=0, help="trigger worker number")
    s.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines on stderr: text, or one JSON object per line (time, "
                   "level, service, run, spill, message)")
    s.set_defaults(func=_serve)

    b = sub.add_parser("bench", help="measure kernel, the standing system over consecutive "
                       "runs and bare ZeroMQ side by side")
    b.add_argument("--json", action="store_true", help="print one JSON document")
    b.add_argument("--runs", type=int, default=3, help=(
        "consecutive runs of the standing system per mode, a bare ZeroMQ run before each "
        "(default 3)"))
    b.add_argument("--spills", type=int, default=10, help="spills per run (default 10)")
    b.add_argument("--feature-events", type=int, default=1_000_000,
                   help="events per spill in feature mode (default 1000000)")
    b.add_argument("--waveform-events", type=int, default=200_000,
                   help="events per spill in waveform mode, zero-suppressed (default 200000)")
    b.set_defaults(func=_bench)

    u = sub.add_parser("up", help="every service of a topology as its own process, under run "
                       "control, until Ctrl-C", description=(
                           "Start run control and every service of a topology as separate "
                           "processes and keep them up: runs are started and stopped with "
                           "`na64daq ctl --config FILE start|stop` (or --autopilot). Without "
                           "`mqtt` in the topology, up starts its own Mosquitto on loopback "
                           "(accounts under RUN_DIR/mqtt). Ctrl-C or SIGTERM stops everything."))
    u.add_argument("--config", required=True, help="topology TOML (see deploy/topology.toml)")
    u.add_argument("--autopilot", metavar="RUNS:SPILLS", help=(
        "take RUNS runs of SPILLS spills each, unattended, then shut down (benchmarks, soak)"))
    u.add_argument("--json", action="store_true", help="print the final report as JSON")
    u.set_defaults(func=_up)


def _demo_config(a: argparse.Namespace) -> StackConfig:
    from daq.metrics import free_port_block
    from simulators.commands import settings

    port = a.metrics_port
    if port == 0 and a.mqtt:
        # under run control each run is a new pipeline: fixed ports, so that a Prometheus
        # (and the shift crew's bookmark) follows the demo from one run to the next
        port = free_port_block(10 + a.workers)
    ports = ({"frontend": 0, "builder": 0, "recorder": 0, "monitor": 0, "control": 0,
              "trigger": 0} if port == 0 else
             {"monitor": port, "builder": port + 1, "recorder": port + 2, "frontend": port + 3,
              "control": port + 4, "trigger": port + 10})
    ports["web"] = a.web_port
    return StackConfig.parse({
        "run_dir": a.run_dir, "workers": a.workers, "metrics": ports, "mqtt": a.mqtt,
        "simulator": {"spills": a.spills, "pace": a.pace, "factor": a.factor,
                      "sim": {"intensity": a.intensity, "mode": a.mode, "seed": a.seed,
                              "generated_s": a.generated_s, **settings(a.set)}},
    }).inproc()


class DemoWatch:
    """What the demo's live view shows of its stack: spills, raised alarms, the run file,
    the monitor's /metrics and the events the beam board sent in the current run."""

    def __init__(self) -> None:
        self.stack: Any = None
        self.t0 = time.monotonic()

    def on_stack(self, stack: Any) -> None:
        self.stack = stack

    @property
    def sent(self) -> int:
        return int(self.stack.frontend.run_events) if self.stack is not None else 0

    def view(self) -> Any:
        from daq.live import view

        st = self.stack
        run = st.run
        sums = [s.model_dump(mode="json") for s in st.monitor.summaries if s.run == run]
        now = sorted(n for src in st.monitor.alarms.values()
                     for n, up in src.raised.items() if up)
        w = st.recorder.rec.writer
        mon, b = st.monitor, st.builder
        return view(run=run, sent_events=self.sent, summaries=sums, alarms=now,
                    earlier_alarms=[n for n in self.alarms_raised() if n not in now],
                    metrics_url=self.metrics_url, elapsed_s=time.monotonic() - self.t0,
                    run_file=str(w.path) if w is not None else None,
                    run_state=st.run_state, web_url=self.web_url,
                    intervals=mon.metrics.intervals("live", run) if run is not None else None,
                    builder={**b.status(), "backpressure": b.backpressured,
                             "shedding": b.builder.shedding},
                    alarm_lines=self.alarm_lines(now))

    def alarm_lines(self, raised: list[str]) -> list[str]:
        """Each raised live alarm with its value (the last spill's figure) and band."""
        from monitors.alarms import spill_values
        from monitors.alarmtext import line

        mon = self.stack.monitor
        alarms = mon.alarms["live"]
        last = mon.summaries[-1] if mon.summaries else None
        values = spill_values(last, alarms.cfg.min_sample) if last is not None else {}
        since = time.time() - mon.last_spill_time.get("live", time.time())
        return [line(n, "raised", since if n == "no_spill" else values.get(n),
                     alarms.band(n), run=last.run if last else None,
                     spill=last.spill if last else None) for n in raised]

    def alarms_raised(self) -> list[str]:
        """Every alarm raised while this demo ran, cleared since or not."""
        return sorted({n for src in self.stack.monitor.alarms.values()
                       for n, k in src.times_raised.items() if k})

    @property
    def metrics_url(self) -> str | None:
        servers = self.stack.servers if self.stack is not None else {}
        return servers["monitor"].url if "monitor" in servers else None

    @property
    def web_url(self) -> str | None:
        web = self.stack.monitor.web if self.stack is not None else None
        return web.url if web is not None else None


_WARM_SERVICES = ("from daq.geometry import load_calibration, load_geometry\n"
                  "from trigger.core import warm_up\n"
                  "g = load_geometry()\nwarm_up(g, load_calibration(g))\n"
                  "from monitors.kernels import warm_up as warm_monitor\nwarm_monitor()\n")


def warm_kernels(mode: str) -> None:
    """Compile the simulator's kernels here while a second process fills the trigger's and
    the monitor's numba caches: on a fresh install the compilations (~9 s here, ~4 s + ~3 s
    there, on one core each) run on two cores at once, and the workers and the monitor then
    load their kernels from the cache."""
    from daq.geometry import load_calibration, load_geometry
    from simulators.config import SimConfig
    from simulators.frontend import FrontEnds
    from simulators.generator import Simulator

    services = subprocess.Popen([sys.executable, "-c", _WARM_SERVICES],
                                stdout=subprocess.DEVNULL)
    try:
        g = load_geometry()
        sim = Simulator(SimConfig.parse({"mode": mode, "generated_s": 2e-4, "seed": 1}), g,
                        load_calibration(g))
        for _ in FrontEnds(sim, spills=1).run():
            pass
    finally:
        services.wait()


def _demo(a: argparse.Namespace) -> int:
    """The whole system in one process: the same services and run control as `up`. Without
    --mqtt the demo takes one run of --spills spills (a new run number each time) and ends;
    with --mqtt it stays up and takes the runs `na64daq ctl` starts, until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    from daq.app import LocalStack
    from daq.live import run_summary
    from daq.transport import close_transport

    cfg = _demo_config(a)
    console = Console(stderr=a.json)  # keep stdout pure JSON with --json
    with console.status("compiling kernels (first run only; cached afterwards)"):
        warm_kernels(a.mode)
    stack = LocalStack(cfg)
    watch = DemoWatch()
    result: dict[str, Any] = {}

    async def main() -> None:
        stack.build()
        watch.on_stack(stack)
        loop = asyncio.get_running_loop()
        presses = [0]
        leave = asyncio.Event()

        def interrupt() -> None:  # first Ctrl-C: end the run cleanly; second: abort
            presses[0] += 1
            leave.set()
            if presses[0] > 1:
                raise KeyboardInterrupt

        loop.add_signal_handler(signal.SIGINT, interrupt)
        loop.add_signal_handler(signal.SIGTERM, interrupt)
        live = None if a.no_live else Live(console=console, refresh_per_second=4)

        async def tick() -> None:
            if live is not None:
                live.update(watch.view())
            if leave.is_set() and stack.run_state == "running" and not result.get("asked"):
                result["asked"] = True  # the spill under way ends, the run is drained
                await stack.stop_run("Ctrl-C")

        async with contextlib.AsyncExitStack() as es:
            await es.enter_async_context(stack)
            console.print(f"na64-daq demo: {a.mode} mode, shift page at "
                          f"{watch.web_url or 'off'}, metrics at "
                          f"{watch.metrics_url or 'off'}, run control "
                          + (f"on {a.mqtt} (`na64daq ctl start`; Ctrl-C leaves)" if a.mqtt
                             else f"in this process ({a.spills} spills)"))
            if live is not None:
                es.enter_context(live)
            if a.mqtt:
                while not leave.is_set():
                    await asyncio.sleep(0.25)
                    await tick()
            else:
                await stack.start_run(spills=a.spills)
                result["run"] = stack.run
                await stack.wait_run_closed(on_tick=tick)
            result["run"] = stack.run
            await tick()

    try:
        asyncio.run(main())
    finally:
        stack.close()
        close_transport()
    run = result.get("run")
    sums = [s.model_dump(mode="json") for s in stack.monitor.summaries if s.run == run]
    files = [str(f) for f in stack.recorder.rec.files]
    totals = _totals(stack)
    if not sums and not a.mqtt:
        print(f"error: run {run} closed no spill (nothing reached the monitors)",
              file=sys.stderr)
    if a.json:
        print(json.dumps({"run": run, "spills": sums, "totals": totals, "files": files,
                          "alarms_raised": watch.alarms_raised()}))
    else:
        console.print(run_summary(sums, totals, watch.alarms_raised()))
        console.print(f"run {run}, run file: {', '.join(files) or '-'}")
    return 0 if sums or a.mqtt else 1


def _totals(stack: Any) -> dict[str, Any] | None:
    for ra in stack.monitor.analyses.values():
        with contextlib.suppress(Exception):
            return dict(ra.totals().model_dump(mode="json"))
    return None


def _bench(a: argparse.Namespace) -> int:
    from rich.console import Console

    from daq.bench import run_all

    console = Console(stderr=True)
    if a.runs < 1 or a.spills < 1:
        console.print(f"error: --runs ({a.runs}) and --spills ({a.spills}) must be at least 1")
        return 2
    with console.status("benchmark") as status:
        res = run_all(feature_events=a.feature_events, waveform_events=a.waveform_events,
                      spills=a.spills, runs=a.runs,
                      progress=lambda n: status.update(f"benchmark: {n}"))
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    from daq.live import bench_table

    Console().print(bench_table(res))
    print(f"({res['runs']} consecutive runs of {res['spills']} spills per mode, the same "
          "processes, bare ZeroMQ before each; the worst run is summarised; every figure: "
          "na64daq bench --json)")
    return 0


def _serve(a: argparse.Namespace) -> int:
    from daq.launch import serve

    cfg = load_stack_config(a.config)
    return asyncio.run(serve(a.service, cfg, index=a.index, log_format=a.log_format))


def _up(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from daq.errors import DaqError
    from daq.launch import parse_autopilot, up
    from daq.live import run_figures_table, up_status

    console = Console(stderr=True)  # the progress; stdout keeps the report
    try:
        autopilot = parse_autopilot(a.autopilot) if a.autopilot else None
        cfg = load_stack_config(a.config)
    except DaqError as e:
        console.print(f"error: {e}")
        return 2
    console.print(f"na64daq up: {cfg.workers + 5} processes from {a.config}; "
                  + (f"autopilot {autopilot[0]} run(s) of {autopilot[1]} spills"
                     if autopilot else f"drive runs with `na64daq ctl --config {a.config} "
                     "start|stop|status`; Ctrl-C stops everything"))
    if cfg.metrics.web is not None:  # served by the monitor process (monitors.web)
        host = cfg.metrics.addr if cfg.metrics.addr not in ("0.0.0.0", "::") else "127.0.0.1"
        console.print(f"shift page: http://{host}:{cfg.metrics.web}/" if cfg.metrics.web
                      else "shift page: on a free port of the monitor's host (metrics.web = 0)")
    try:
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            report = up(Path(a.config), autopilot=autopilot,
                        progress=lambda fig: live.update(up_status(fig)))
    except DaqError as e:
        console.print(f"error: {e}")
        return 1
    if a.json:
        print(json.dumps(report))
    else:
        if report["figures"] is not None:
            Console().print(run_figures_table(report["figures"]))
        for r in report["runs"]:
            if "error" in r:
                console.print(f"error: {r['error']}")
                continue
            print(f"run {r.get('run')}: {r.get('spills')} spills, {r.get('events')} events, "
                  f"{r.get('stop_reason')}")
        for name, r in report["services"].items():
            rss = r["peak_rss_bytes"] / 2**20
            print(f"{name:12s} pid {r['pid']:>7} exit {r['exit']!s:>4}  restarts "
                  f"{r['restarts']}  peak RSS {rss:7.1f} MiB  metrics {r['metrics']}")
        if report["gave_up"]:
            print(f"not running at the end (crashed more often than restarted): "
                  f"{', '.join(report['gave_up'])}")
        files = sorted(Path(report["run_dir"]).glob("*.na64*"), key=lambda f: f.stat().st_mtime)
        if files:
            print(f"newest run file: {files[-1]}  (na64daq inspect {files[-1]})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
