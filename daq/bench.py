"""`na64daq bench`: the standing system over consecutive runs, beside bare ZeroMQ.

Pipeline: the standing system of `na64daq up` (daq.launch.up: run control over its own
Mosquitto, builder, 2 trigger workers, recorder, monitor, each its own process, on ipc://),
with the bench's front end in the front ends' place (`python -m daq.bench frontend ...`):
one simulated spill of every board, generated and checksummed once, sent again for every
spill of every run as fast as the builder takes it. Run control takes `runs` runs of
`spills` spills (its autopilot); the same processes take every run.

Between two runs the front end holds the start of the next until the bench lets it go (its
gate, a file). The bench reads the monitor's counters there, the state after the run
before and before anything of the next was sent, and runs bare ZeroMQ there, so that the
two alternate run by run. Per run: rate = events sent / (the monitor's last spill closed
- the front end's first message), so it includes filling and draining the pipeline.
Loss-free is checked, not assumed: the monitor must have processed every event sent
(counter deltas across the run), the builder shed none, the monitor counted none lost.

Bare ZeroMQ: the same frames through the same process graph with no work: sender -> relay
(joins the five board messages of a slice into one, like the builder) -> 2 relays
(forward each built message to a monitor sink, and one small message per slice to a
recorder sink) -> 2 sinks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from daq.bench_beam import (
    TRANSPORT,
    BenchFrontEnd,
    prepare,
    sender,
    serve_frontend,
    spill_messages,
)


def bare_builder(inp: str, out: str, nboards: int) -> dict[str, Any]:
    """Join the nboards messages of each slice into one multipart message and forward it."""

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind(inp)
    push.bind(out)
    pending: dict[tuple[int, int], list[Any]] = {}
    count: dict[tuple[int, int], int] = {}
    eos = 0
    while eos < nboards:
        frames = pull.recv_multipart(copy=False)
        h = msgpack.unpackb(frames[0].buffer)
        if h["kind"] == "eos":
            eos += 1
            continue
        if h["kind"] != "slice":
            continue
        key = (h["spill"], h["first"])
        pending.setdefault(key, []).extend(frames[1:])
        count[key] = count.get(key, 0) + 1
        if count[key] == nboards:
            del count[key]
            push.send_multipart([frames[0], *pending.pop(key)], copy=False)
    for _ in range(64):  # one per worker at least; extra ones are never read
        push.send_multipart([b"eos"])
    push.close(linger=2000)
    pull.close()
    ctx.term()
    return {}


def bare_worker(inp: str, rec: str, mon: str) -> dict[str, Any]:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(inp)
    prec, pmon = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    prec.connect(rec)
    pmon.connect(mon)
    while True:
        frames = pull.recv_multipart(copy=False)
        if len(frames) == 1 and frames[0].bytes == b"eos":
            break
        pmon.send_multipart(frames, copy=False)
        prec.send_multipart([frames[0]], copy=False)
    for s in (prec, pmon):
        s.send_multipart([b"eos"])
        s.close(linger=-1)
    pull.close()
    ctx.term()
    return {}


def bare_sink(inp: str, workers: int) -> dict[str, Any]:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(inp)
    eos, n, t_last = 0, 0, 0.0
    while eos < workers:
        frames = pull.recv_multipart(copy=False)
        if len(frames) == 1 and frames[0].bytes == b"eos":
            eos += 1
            continue
        n += 1
        t_last = time.time()
    pull.close()
    ctx.term()
    return {"messages": n, "t_last": t_last}


# --- orchestration ---------------------------------------------------------------------


def _child(role: str, *args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "daq.bench", role, *map(str, args)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def _result(p: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    out, _ = p.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _endpoints(transport: str, n: int, directory: Path | None = None) -> list[str]:
    """n free endpoints: tcp on loopback, or ipc in `directory` (default: a fresh private
    one)."""
    if transport == "ipc":
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        d = directory or tempfile.mkdtemp(prefix="na64-ipc-")
        return [f"ipc://{d}/{i}" for i in range(n)]
    return [f"tcp://127.0.0.1:{x}" for x in _ports(n)]


def bare_zmq(mode: str, events: int, spills: int, workers: int = 2,
             transport: str = TRANSPORT) -> dict[str, Any]:
    ipc = Path(tempfile.mkdtemp(prefix="na64-ipc-"))
    try:
        ep = _endpoints(transport, 4, ipc)
        sinks = [_child("bare-sink", ep[2], workers), _child("bare-sink", ep[3], workers)]
        builder = _child("bare-builder", ep[0], ep[1], 5)
        ws = [_child("bare-worker", ep[1], ep[2], ep[3]) for _ in range(workers)]
        time.sleep(0.5)
        snd = _child("sender", ep[0], mode, events, spills, 1)
        s = _result(snd)
        mon = _result(sinks[1])
        _result(sinks[0])
        for c in [builder, *ws]:
            _result(c, 60)  # reads and closes its stdout pipe
    finally:
        shutil.rmtree(ipc, ignore_errors=True)
    total = s["events"]
    return {"events": total, "events_per_s": total / (mon["t_last"] - s["t0"])}


# --- the standing system over consecutive runs -------------------------------------------


def monitor_snapshot(samples: dict[str, float], now: float) -> dict[str, Any]:
    """The monitor's live counters and last-spill gauges from a scrape (daq.launch.scrape)."""
    live = 'source="live"'

    def one(name: str) -> float | None:
        return samples.get(f"{name}{{{live}}}")

    return {"t": now,
            "spills": int(sum(v for k, v in samples.items()
                              if k.startswith("na64_spills_total{") and live in k)),
            "events": int(one("na64_events_total") or 0),
            "shed": int(one("na64_shed_events_total") or 0),
            "lost": int(one("na64_monitor_lost_events_total") or 0),
            "run": None if one("na64_run_number") is None else int(one("na64_run_number") or 0),
            "last_spill_s": one("na64_last_spill_timestamp_seconds")}


def run_figures(sent: list[dict[str, Any]], before: dict[int, dict[str, Any]],
                final: dict[str, Any] | None, control: list[dict[str, Any]],
                bare: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's figures from what the front end sent (`sent`: its records), the monitor
    at each run's gate (`before`: run -> snapshot, the state after the run before) and
    after the last run (`final`), run control's run records and the bare ZeroMQ run taken
    at each gate. Rates are None where the monitor never closed the run's last spill."""
    out = []
    runs = sorted(sent, key=lambda r: r["run"])
    for i, r in enumerate(runs):
        n = r["run"]
        b = before.get(n) or {}
        a = (before.get(runs[i + 1]["run"]) if i + 1 < len(runs) else final) or {}
        d = {k: int(a.get(k, 0)) - int(b.get(k, 0)) for k in ("events", "shed", "lost", "spills")}
        t_last = a.get("last_spill_s") if a.get("run") == n else None
        rc = next((c for c in control if c.get("run") == n), {})
        fig: dict[str, Any] = {
            "run": n, "how": r["how"], "events": r["events"], "spills": r["spills"],
            "processed": d["events"], "shed": d["shed"], "spills_closed": d["spills"],
            "lost_monitor": d["lost"],
            "lost_events": max(r["events"] - d["events"] - d["shed"], d["lost"]),
            "t0": r["t0"], "t_sent": r["t_sent"], "t_last_spill": t_last,
            "seconds": None if t_last is None else t_last - r["t0"],
            "events_per_s": None if t_last is None else r["events"] / (t_last - r["t0"]),
            "run_control": {k: rc.get(k) for k in ("events", "spills", "started_at",
                                                   "stopped_at", "stop_reason")},
        }
        z = bare.get(n)
        if z is not None:
            fig["zmq_events_per_s"] = z["events_per_s"]
            fig["ratio"] = (None if fig["events_per_s"] is None
                            else fig["events_per_s"] / z["events_per_s"])
        out.append(fig)
    return out


class _Gate:
    """The bench's side of the front end's gate, called every 0.1 s by `up` (on_sample).

    When the front end holds run N: read the monitor (the state after run N-1, nothing of
    run N sent yet) and the PIDs, run `between` (bare ZeroMQ) in a thread, then let run N
    go. After the last run is sent, read the monitor again at every call: the last read,
    `up`'s call once the run is closed, is the final state."""

    def __init__(self, directory: Path, monitor_url: str, runs: int,
                 between: Callable[[], dict[str, Any]] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.dir, self.url, self.runs = directory, monitor_url, runs
        self.between, self.progress = between, progress
        self.records: list[dict[str, Any]] = []
        self.before: dict[int, dict[str, Any]] = {}
        self.final: dict[str, Any] | None = None
        self.bare: dict[int, dict[str, Any]] = {}
        self.pids: dict[int, dict[str, int]] = {}
        self.errors: list[str] = []
        self._pos = 0
        self._job: tuple[threading.Thread, list[Any]] | None = None
        self._released: set[int] = set()

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == "sent"]

    def __call__(self, procs: list[Any]) -> None:
        self._read()
        holding = [r["run"] for r in self.records
                   if r["event"] == "holding" and r["run"] not in self._released]
        if holding:
            self._at_gate(holding[0], procs)
        elif len(self.sent) >= self.runs:
            self.final = self._snapshot() or self.final

    def _read(self) -> None:
        path = self.dir / "frontend.jsonl"
        try:
            if path.stat().st_size <= self._pos:
                return
            with path.open() as f:
                f.seek(self._pos)
                text = f.read()
        except OSError:
            return
        whole = text[:text.rfind("\n") + 1]  # a line still being written waits
        self._pos += len(whole.encode())
        self.records += [json.loads(ln) for ln in whole.splitlines() if ln.strip()]

    def _snapshot(self) -> dict[str, Any] | None:
        from daq.launch import scrape

        try:
            return monitor_snapshot(scrape(self.url), time.time())
        except OSError:
            return None  # not serving this instant: the next call tries again

    def _at_gate(self, run: int, procs: list[Any]) -> None:
        if run not in self.before:
            snap = self._snapshot()
            if snap is None:
                return
            self.before[run] = snap
            self.pids[run] = {p.name: p.popen.pid for p in procs}
            if self.between is not None:
                self._say(f"bare ZeroMQ before run {run}")
                out: list[Any] = []
                job = threading.Thread(target=self._work, args=(out,), daemon=True)
                job.start()
                self._job = (job, out)
        if self._job is not None:
            job, out = self._job
            if job.is_alive():
                return
            self._job = None
            if out and isinstance(out[0], dict):
                self.bare[run] = out[0]
            else:
                self.errors.append(f"bare ZeroMQ before run {run}: {out[0] if out else '?'}")
        self._say(f"run {run} ({len(self._released) + 1}/{self.runs})")
        (self.dir / f"go-{run}").touch()
        self._released.add(run)

    def _work(self, out: list[Any]) -> None:
        assert self.between is not None
        try:
            out.append(self.between())
        except Exception as e:  # reported with the run, after the system is stopped
            out.append(e)

    def _say(self, what: str) -> None:
        if self.progress is not None:
            self.progress(what)


def _topology(d: Path, workers: int, transport: str) -> Path:
    """The benchmark's topology: no broker (`up` starts its own), backpressure only."""
    from daq.metrics import free_port_block

    ep = _endpoints(transport, 5, d / "ipc")
    base = free_port_block(4 + workers)  # builder, recorder, monitor, trigger workers
    topo = d / "topology.toml"
    topo.write_text(
        f'run_dir = "{d / "runs"}"\nworkers = {workers}\n'
        "[endpoints]\n" + "".join(
            f'{k} = "{v}"\n'
            for k, v in zip(("builder_in", "builder_out", "recorder", "monitor", "control"), ep,
                            strict=True))
        + f"[metrics]\nfrontend = 0\nbuilder = {base}\nrecorder = {base + 1}\n"
        f"monitor = {base + 2}\ncontrol = 0\ntrigger = {base + 4}\n"
        # backpressure only: a benchmark that sheds is not loss-free
        "[builder]\nshed_after_s = 600\nmax_pending_events = 2000000\ntimeout_s = 30\n"
        # the backlog is held where max_pending_events bounds it, not in ZeroMQ pipes
        # (10 MB slices: ZeroMQ's default 1000 messages would let memory grow by GBs)
        "output_hwm = 4\ninput_hwm = 16\n"
    )
    return topo


def pipeline(mode: str, events: int, spills: int, workers: int = 2,
             transport: str = TRANSPORT, on_sample: Any = None, *, runs: int = 1,
             bare: bool = False, progress: Callable[[str], None] | None = None
             ) -> dict[str, Any]:
    """`runs` consecutive runs of `spills` spills of the standing system (one `up`, the
    same processes for every run), fed by the bench's front end; with `bare`, a bare ZeroMQ
    run of the same frames before each run, while the system waits for its beam.

    Returns every run's figures (`runs`, see `run_figures`), each process's PID, peak RSS
    and exit code, and, as one-run callers expect them, `events`, `processed`, `shed` and
    `events_per_s` of the slowest run and `lost_events` summed over all runs.
    `on_sample(procs)` is called every 0.1 s (scripts/memory_growth.py).
    """
    from daq.errors import ServiceError
    from daq.launch import up
    from daq.stack import load_stack_config

    tmp = Path(tempfile.mkdtemp(prefix="na64-bench-"))
    keep = bool(os.environ.get("NA64_BENCH_KEEP"))
    try:
        topo = _topology(tmp, workers, transport)
        cfg = load_stack_config(topo)
        (gate_dir := tmp / "gate").mkdir()
        between = (lambda: bare_zmq(mode, events, spills, workers, transport)) if bare else None
        gate = _Gate(gate_dir, f"http://{cfg.metrics.addr}:{cfg.metrics.port('monitor')}"
                     "/metrics", runs, between, progress)

        def sample(procs: list[Any]) -> None:
            gate(procs)
            if on_sample is not None:
                on_sample(procs)

        fe = [sys.executable, "-m", "daq.bench", "frontend", cfg.endpoints.builder_in,
              cfg.endpoints.control, mode, str(events), "--gate", str(gate_dir)]
        rep = up(topo, autopilot=(runs, spills), commands={"frontend": fe}, on_sample=sample,
                 timeout_s=300 + runs * (60 + spills * events / 1e5))
        figs = run_figures(gate.sent, gate.before, gate.final, rep["runs"], gate.bare)
        svc = rep["services"]
        problems = gate.errors + [f"run {f['run']}: the monitor never closed its last spill"
                                  for f in figs if f["events_per_s"] is None]
        if not rep["ok"] or len(figs) < runs or problems:
            keep = True  # the services' logs say why
            raise ServiceError(f"the standing system did not take {runs} runs: "
                               f"{'; '.join(problems) or rep['runs']} (logs: "
                               f"{tmp / 'runs' / 'logs'})")
        slowest = min(figs, key=lambda f: f["events_per_s"])
        first = gate.pids[figs[0]["run"]]
        return {
            "mode": mode, "runs": figs, "run_numbers": [f["run"] for f in figs],
            "events": slowest["events"], "processed": slowest["processed"],
            "shed": slowest["shed"], "events_per_s": slowest["events_per_s"],
            "lost_events": sum(f["lost_events"] for f in figs),
            "same_processes": all(gate.pids[f["run"]] == first for f in figs)
            and not any(s["restarts"] for s in svc.values()),
            "pids": {n: s["pid"] for n, s in svc.items()},
            "exits": {n: s["exit"] for n, s in svc.items()},
            "peak_rss_bytes": {n: s["peak_rss_bytes"] for n, s in svc.items()},
        }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
            "python": platform.python_version(), "zmq": zmq.zmq_version(),
            "pyzmq": zmq.__version__}


def _summary(p: dict[str, Any]) -> dict[str, Any]:
    """One run of `pipeline(..., bare=True)` as `na64daq bench` lists it."""
    return {"run": p["run"], "pipeline_events_per_s": round(p["events_per_s"]),
            "zmq_events_per_s": round(p["zmq_events_per_s"]), "ratio": round(p["ratio"], 3),
            "events": p["events"], "processed": p["processed"], "shed": p["shed"],
            "lost_events": p["lost_events"], "seconds": round(p["seconds"], 3)}


def run_all(*, feature_events: int = 1_000_000, waveform_events: int = 200_000,
            spills: int = 10, workers: int = 2, runs: int = 3,
            progress: Any = None) -> dict[str, Any]:
    """Every figure of `na64daq bench`, side by side in one run.

    Each mode takes `runs` consecutive runs of the standing system, a bare ZeroMQ run of
    the same frames before each one (alternating exposes both to the same conditions of a
    shared machine). Every run is listed (`runs_<mode>`); the summary figures are those of
    the worst run, since the targets are to hold on every run.
    """
    from trigger.bench import kernel_bench

    def step(name: str) -> None:
        if progress is not None:
            progress(name)

    step("trigger kernel")
    k = kernel_bench()
    out: dict[str, Any] = {
        "machine": machine(),
        "kernel_waveform_events_per_s": k["waveform_kernel_events_per_s_1core"],
        "kernel_waveform_all_cores_events_per_s": k["waveform_kernel_events_per_s_all_cores"],
        "kernel_numpy_events_per_s": k["numpy_reference_events_per_s"],
        "memory_bound_events_per_s": k["bandwidth_bound_events_per_s"],
        "kernel": k,
        "runs": runs,
        "spills": spills,
    }
    lost = 0
    rss: dict[str, int] = {}
    for mode, events in (("feature", feature_events), ("waveform", waveform_events)):
        step(f"{mode} mode: starting the standing system")

        def say(what: str, mode: str = mode) -> None:
            step(f"{mode} mode: {what}")

        p = pipeline(mode, events, spills, workers, runs=runs, bare=True, progress=say)
        rs = [_summary(r) for r in p["runs"]]
        worst = min(rs, key=lambda r: r["ratio"])
        out[f"pipeline_{mode}_events_per_s"] = min(r["pipeline_events_per_s"] for r in rs)
        out[f"zmq_{mode}_events_per_s"] = worst["zmq_events_per_s"]
        out[f"pipeline_{mode}_vs_zmq_ratio"] = worst["ratio"]
        out[f"pipeline_{mode}"] = p
        out[f"runs_{mode}"] = rs
        lost += p["lost_events"]  # every run must be loss-free
        for name, b in p["peak_rss_bytes"].items():
            rss[f"{mode}:{name}"] = b
    out["lost_events"] = lost
    out["peak_rss_bytes"] = rss
    return out


def main(argv: list[str]) -> int:
    role, *args = argv
    if role == "frontend":
        ap = argparse.ArgumentParser(prog="python -m daq.bench frontend", description=(
            "The bench's front end: a standing front end under run control that re-sends "
            "one pre-generated spill of every board (BenchFrontEnd)."))
        ap.add_argument("endpoint", help="the builder's input")
        ap.add_argument("control", help="run control's command channel")
        ap.add_argument("mode", choices=("feature", "waveform"))
        ap.add_argument("events", type=int, help="events per spill")
        ap.add_argument("--gate", type=Path, default=None, help=(
            "hold each run N until GATE/go-N exists; write what was sent per run to "
            "GATE/frontend.jsonl"))
        a = ap.parse_args(args)
        starts, spill = prepare(spill_messages(a.mode, a.events))
        fe = BenchFrontEnd(a.endpoint, starts, spill, gate=a.gate)
        asyncio.run(serve_frontend(fe, a.control))
        out: Any = fe.records
    elif role == "sender":
        out = sender(args[0], args[1], int(args[2]), int(args[3]), bool(int(args[4])))
    elif role == "bare-builder":
        out = bare_builder(args[0], args[1], int(args[2]))
    elif role == "bare-worker":
        out = bare_worker(args[0], args[1], args[2])
    elif role == "bare-sink":
        out = bare_sink(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown role {role}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
