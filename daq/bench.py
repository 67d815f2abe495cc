"""`na64daq bench`: the pipeline across processes beside bare ZeroMQ in the same run.

Pipeline: a sender process (pre-generated simulator slices of every board, sent as fast as
the builder takes them) -> builder -> 2 trigger workers -> recorder + monitor, each its own
process on tcp loopback, exactly as `na64daq up` runs them. Rate = events / (last spill
closed by the monitor - first message sent). Loss-free is checked, not assumed: the
monitor must have processed every event sent and the builder shed none.

Bare ZeroMQ: the same frames through the same process graph with no work: sender -> relay
(joins the five board messages of a slice into one, like the builder) -> 2 relays
(forward each built message to a monitor sink, and one small message per slice to a
recorder sink) -> 2 sinks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

SENDER_HWM = 16
#: the benchmark's transport between processes (both the pipeline and bare ZeroMQ)
TRANSPORT = os.environ.get("NA64_BENCH_TRANSPORT", "ipc")
#: events per slice in each mode (NA64_BENCH_FEATURE_SLICE / NA64_BENCH_WAVE_SLICE to study
#: the slice size; docs/performance.md)
SLICE_EVENTS = {"feature": int(os.environ.get("NA64_BENCH_FEATURE_SLICE", 65536)),
                "waveform": int(os.environ.get("NA64_BENCH_WAVE_SLICE", 4096))}


# --- the data: one simulated spill of every board, re-sent as spills 0..n-1 ---------------


def spill_messages(mode: str, events: int, seed: int = 7) -> list[tuple[str, Any]]:
    """(board, Message) of one spill of `events` events, in sending order, without truth."""
    from daq.geometry import load_calibration, load_geometry
    from daq.wire import Kind
    from simulators.config import SimConfig
    from simulators.frontend import FrontEnds
    from simulators.generator import Simulator

    g = load_geometry()
    cal = load_calibration(g)
    rate = 6e6 / 4.8
    # beam-running readout: zero-suppressed in both modes; slices of ~13 ms (feature) and
    # ~3 ms (waveform) of beam at 1.25 MHz
    sim = Simulator(SimConfig.parse({"mode": mode, "generated_s": events / rate, "seed": seed,
                                     "zero_suppress": mode == "waveform",
                                     # max-of-32 minus a 4-sample pedestal: 10 ADC is ~3 sigma
                                     # of its noise (6 is for one feature amplitude)
                                     "zs_adc": 10.0 if mode == "waveform" else 6.0,
                                     "slice_events": SLICE_EVENTS[mode]}), g, cal)
    out = []
    for em in FrontEnds(sim, spills=1).run():
        if em.src == "truth" or em.msg.kind in (Kind.END_OF_STREAM, Kind.RUN_STOP):
            continue
        out.append((em.src, em.msg))
    return out


def _respill(msgs: list[tuple[str, Any]], spills: int) -> Iterator[tuple[str, Any]]:
    from daq.wire import Kind

    seq: dict[str, int] = {}
    for k in range(spills):
        for board, m in msgs:
            if m.kind is Kind.RUN_START and k > 0:
                continue
            m.spill = k
            m.seq = seq.get(board, 0)
            seq[board] = m.seq + 1
            yield board, m


def sender(endpoint: str, mode: str, events: int, spills: int, bare: bool) -> dict[str, Any]:
    """Connect one PUSH per board and send; returns when every message is handed to zmq."""
    import msgpack

    from daq.wire import Kind, Message, checksums, encode

    msgs = spill_messages(mode, events)
    boards = sorted({b for b, _ in msgs})
    ctx = zmq.Context()
    socks = {}
    for b in boards:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, SENDER_HWM)
        s.setsockopt(zmq.LINGER, -1)
        s.connect(endpoint)
        socks[b] = s
    time.sleep(0.5)  # let every connection come up before timing starts
    # a front end checksums a slice once: the CRCs (of the arrays, which re-sending as
    # another spill does not change) are computed once per slice, the header per message
    crcs = {id(m): checksums(m) if not bare else 0 for _, m in msgs}
    sent = 0
    t0 = time.time()
    for b, m in _respill(msgs, spills):
        head = msgpack.packb(m.header(crcs[id(m)]), use_bin_type=True)
        socks[b].send_multipart([head, *m.arrays.values()], copy=False)
        if m.kind is Kind.SLICE and b == "BEAM":
            sent += m.count
    for b in boards:  # end every stream (the builder finishes the run on all eos)
        socks[b].send_multipart(encode(Message(Kind.END_OF_STREAM, board=b, src=b)), copy=False)
    t_sent = time.time()
    for s in socks.values():
        s.close()
    ctx.term()
    return {"t0": t0, "t_sent": t_sent, "events": sent}


# --- bare ZeroMQ twins of builder, worker, sinks ---------------------------------------


def bare_builder(inp: str, out: str, nboards: int) -> dict[str, Any]:
    """Join the nboards messages of each slice into one multipart message and forward it."""
    import msgpack

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


def _endpoints(transport: str, n: int) -> list[str]:
    """n free endpoints: tcp on loopback, or ipc in a fresh private directory."""
    if transport == "ipc":
        d = tempfile.mkdtemp(prefix="na64-ipc-")
        return [f"ipc://{d}/{i}" for i in range(n)]
    return [f"tcp://127.0.0.1:{x}" for x in _ports(n)]


def bare_zmq(mode: str, events: int, spills: int, workers: int = 2,
             transport: str = TRANSPORT) -> dict[str, Any]:
    ep = _endpoints(transport, 4)
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
    total = s["events"]
    return {"events": total, "events_per_s": total / (mon["t_last"] - s["t0"])}


def pipeline(mode: str, events: int, spills: int, workers: int = 2,
             transport: str = TRANSPORT, on_sample: Any = None) -> dict[str, Any]:
    """The real services as processes (daq.launch.Proc), fed by the bench sender.

    `on_sample(procs)` is called every 0.1 s while the run goes (scripts/memory_growth.py).
    """
    from daq.launch import Proc, scrape

    tmp = Path(tempfile.mkdtemp(prefix="na64-bench-"))
    p = _ports(4 + workers)  # metrics
    ep = _endpoints(transport, 4)
    topo = tmp / "topology.toml"
    topo.write_text(
        f'run_dir = "{tmp / "runs"}"\nworkers = {workers}\n'
        "[endpoints]\n" + "".join(
            f'{k} = "{v}"\n'
            for k, v in zip(("builder_in", "builder_out", "recorder", "monitor"), ep,
                            strict=True))
        + f"[metrics]\nfrontend = {p[0]}\nbuilder = {p[1]}\nrecorder = {p[2]}\n"
        f"monitor = {p[3]}\ncontrol = 0\ntrigger = {p[4]}\n"
        # backpressure only: a benchmark that sheds is not loss-free
        "[builder]\nshed_after_s = 600\nmax_pending_events = 2000000\ntimeout_s = 30\n"
        # the backlog is held where max_pending_events bounds it, not in ZeroMQ pipes
        # (10 MB slices: ZeroMQ's default 1000 messages would let memory grow by GBs)
        "output_hwm = 4\ninput_hwm = 16\n"
    )
    from daq.stack import load_stack_config

    cfg = load_stack_config(topo)
    procs = [Proc(n, 0, topo, cfg) for n in ("builder", "recorder", "monitor")]
    procs += [Proc("trigger", i, topo, cfg) for i in range(workers)]
    try:
        for pr in procs:
            _wait(lambda pr=pr: _up(pr))
        for pr in procs:
            if pr.service == "trigger":
                _wait(lambda pr=pr: pr.metric("na64_trigger_ready") == 1.0)
        snd = _child("sender", cfg.endpoints.builder_in, mode, events, spills, 0)
        while snd.poll() is None:
            for pr in procs:
                pr.sample()
            if on_sample is not None:
                on_sample(procs)
            time.sleep(0.1)
        s = _result(snd)
        mon = next(x for x in procs if x.service == "monitor")
        rec = next(x for x in procs if x.service == "recorder")
        deadline = time.time() + 300
        while time.time() < deadline:
            for pr in procs:
                pr.sample()
            m = scrape(mon.metrics)
            closed = sum(v for k, v in m.items()
                         if k.startswith("na64_spills_total") and 'source="live"' in k)
            if os.environ.get("NA64_BENCH_DEBUG"):
                print(closed, rec.metric("na64_recorder_run"), file=sys.stderr)
            if closed >= spills and (rec.metric("na64_recorder_run") or 0) == 0:
                break
            time.sleep(0.1)
        m = scrape(mon.metrics)
        t_last = m.get('na64_last_spill_timestamp_seconds{source="live"}', 0.0)
        if os.environ.get("NA64_BENCH_DEBUG"):
            print(f"sent {s['t_sent'] - s['t0']:.3f} s, last spill closed "
                  f"{t_last - s['t0']:.3f} s after the first message", file=sys.stderr)
        processed = m.get('na64_events_total{source="live"}', 0.0)
        shed = m.get('na64_shed_events_total{source="live"}', 0.0)  # builder's, via spill_end
        rss = {pr.name: pr.peak_rss for pr in procs}
        return {"events": s["events"], "events_per_s": s["events"] / (t_last - s["t0"]),
                "processed": int(processed), "shed": int(shed),
                "lost_events": int(s["events"] - processed + shed), "peak_rss_bytes": rss}
    finally:
        for pr in procs:
            pr.terminate()


def _up(pr: Any) -> bool:
    from daq.launch import scrape

    try:
        scrape(pr.metrics)
        return True
    except OSError:
        return False


def _wait(cond: Any, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError("a benchmark process did not come up")
        time.sleep(0.1)


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


def run_all(*, feature_events: int = 1_000_000, waveform_events: int = 200_000,
            spills: int = 10, workers: int = 2, repeat: int = 2,
            progress: Any = None) -> dict[str, Any]:
    """Every figure of `na64daq bench`, side by side in one run.

    Each mode runs the pipeline and bare ZeroMQ `repeat` times, alternating, and reports
    the best rate of each (every run is in `runs`): on a shared machine noise only slows a
    run down, and alternating exposes both to the same conditions.
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
        "repeat": repeat,
    }
    lost = 0
    rss: dict[str, int] = {}
    for mode, events in (("feature", feature_events), ("waveform", waveform_events)):
        ps, zs = [], []
        for i in range(repeat):
            step(f"pipeline, {mode} mode ({i + 1}/{repeat})")
            ps.append(pipeline(mode, events, spills, workers))
            step(f"bare ZeroMQ, {mode} mode ({i + 1}/{repeat})")
            zs.append(bare_zmq(mode, events, spills, workers))
        p = max(ps, key=lambda r: r["events_per_s"])
        z = max(zs, key=lambda r: r["events_per_s"])
        out[f"pipeline_{mode}_events_per_s"] = round(p["events_per_s"])
        out[f"zmq_{mode}_events_per_s"] = round(z["events_per_s"])
        out[f"pipeline_{mode}_vs_zmq_ratio"] = round(p["events_per_s"] / z["events_per_s"], 3)
        out[f"pipeline_{mode}"] = p
        out[f"runs_{mode}"] = [{"pipeline_events_per_s": round(a["events_per_s"]),
                                "zmq_events_per_s": round(b["events_per_s"]),
                                "lost_events": a["lost_events"]}
                               for a, b in zip(ps, zs, strict=True)]
        lost += sum(r["lost_events"] for r in ps)  # every run must be loss-free
        for r in ps:
            for name, b in r["peak_rss_bytes"].items():
                rss[f"{mode}:{name}"] = max(rss.get(f"{mode}:{name}", 0), b)
    out["lost_events"] = lost
    out["peak_rss_bytes"] = rss
    return out


def main(argv: list[str]) -> int:
    role, *args = argv
    if role == "sender":
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
