"""The monitor's memory over consecutive runs, in one process: what it keeps, what it holds.

    python scripts/monitor_memory.py --runs 40 --spills 10 [--zmq] [--trim]

Feeds the monitor's core (monitors.service.MonitorService.handle_frames, no broker) runs of
`--spills` spills of `--slices` features messages of `--events` events each (the standing
system's feature mode: 16 x 65 536), encoded as on the wire. Without `--zmq` each message
is decoded from a copy of its frames in this process; with `--zmq` a sender process PUSHes
every run's messages as fast as it can to a PULL socket here (ipc), which the monitor
reads as its service does (zero-copy frames): the messages it has not read yet wait in
this process. `--trim` calls glibc's malloc_trim after each run. Prints per run: peak and
end VmRSS, after trim, Python's allocated blocks, /metrics samples, kept spill summaries.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import multiprocessing as mp
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from daq.launch import status_bytes
from daq.wire import Kind, Message, encode
from monitors.config import MonitorConfig
from monitors.identify import FEATURE_ARRAYS
from monitors.service import MonitorService

BOARDS = ("BEAM", "SRD", "ECAL", "VETO", "HCAL")


def _arrays(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Features arrays of `n` events: energies spread over the spectra, random bits."""
    out: dict[str, np.ndarray] = {}
    for name, (dtype, ndim) in FEATURE_ARRAYS.items():
        shape = (n, 4) if ndim == 2 else (n,)
        if dtype == "<f4":
            out[name] = rng.uniform(0.0, 120.0, shape).astype(np.float32)
        else:
            out[name] = rng.integers(0, 4, shape).astype(np.uint8)
    return out


def _messages(a: argparse.Namespace) -> Iterator[Message]:
    """Every run's messages, as the workers send them (seq per sending stream)."""
    rng = np.random.default_rng(1)
    base = [_arrays(rng, a.events) for _ in range(4)]
    seq: dict[str, int] = {}

    def nxt(src: str) -> int:
        seq[src] = seq.get(src, -1) + 1
        return seq[src]

    for run in range(1, a.runs + 1):
        yield Message(Kind.RUN_START, run=run, seq=nxt("trigger-0"), src="trigger-0")
        for spill in range(1, a.spills + 1):
            for k in range(a.slices):
                src = f"trigger-{k % 2}"
                yield Message(Kind.FEATURES, run=run, spill=spill, seq=nxt(src), src=src,
                              board="ALL", first=k * a.events, count=a.events,
                              arrays=base[k % len(base)],
                              meta={"slice_index": k, "cfg": "x", "shadow_cfg": None,
                                    "mode": "feature", "calib": "c"})
            yield Message(Kind.SPILL_END, run=run, spill=spill, seq=nxt("trigger-0"),
                          src="trigger-0", meta={
                              "slices": a.slices, "events": a.slices * a.events, "shed": 0,
                              "gaps": {}, "incomplete": dict.fromkeys(BOARDS, 0),
                              "scalers": {"beam": a.slices * a.events}})
        yield Message(Kind.RUN_STOP, run=run, seq=nxt("trigger-0"), src="trigger-0",
                      meta={"reason": "stopped"})


def _sender(a: argparse.Namespace, endpoint: str, go: mp.Queue) -> None:
    """PUSH every run's messages once the monitor asks for the run."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(endpoint)
    for msg in _messages(a):
        if msg.kind is Kind.RUN_START:
            go.get()
        sock.send_multipart(encode(msg), copy=False)
    sock.close(linger=-1)
    ctx.term()


def _rss() -> float:
    return status_bytes(os.getpid(), "VmRSS") / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--spills", type=int, default=10)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--events", type=int, default=65536, help="events per features message")
    ap.add_argument("--zmq", action="store_true", help="receive through a PULL socket")
    ap.add_argument("--trim", action="store_true", help="malloc_trim after each run")
    a = ap.parse_args(argv)
    logging.getLogger("na64.monitors").setLevel(logging.ERROR)  # the random spills' alarms
    reg = CollectorRegistry()
    svc = MonitorService("inproc://unused", config=MonitorConfig(), registry=reg)
    per_run = a.spills * (a.slices + 1) + 2
    trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    with tempfile.TemporaryDirectory() as tmp:
        if a.zmq:
            endpoint = f"ipc://{tmp}/monitor.sock"
            ctx = zmq.Context()
            pull = ctx.socket(zmq.PULL)
            pull.bind(endpoint)
            go: mp.Queue = mp.Queue()
            proc = mp.Process(target=_sender, args=(a, endpoint, go))
            proc.start()
        else:
            stream = _messages(a)
        for run in range(1, a.runs + 1):
            peak = 0.0
            if a.zmq:
                go.put(run)
            for _ in range(per_run):
                if a.zmq:
                    frames = [f.buffer for f in pull.recv_multipart(copy=False)]
                else:
                    frames = [memoryview(bytes(memoryview(f))) for f in encode(next(stream))]
                svc.handle_frames(frames)
                del frames
                peak = max(peak, _rss())
            gc.collect()
            end = _rss()
            if a.trim:
                trim(0)
            print(f"run {run:3d}: peak {peak:6.1f} MiB, end {end:6.1f}, after trim "
                  f"{_rss() if a.trim else float('nan'):6.1f}, Python blocks "
                  f"{sys.getallocatedblocks()}, /metrics samples "
                  f"{sum(len(f.samples) for f in reg.collect())}, spill summaries "
                  f"{len(svc.summaries)}, lost {svc.run_counts('live').get('lost', 0)}",
                  flush=True)
        if a.zmq:
            proc.join()
            pull.close(linger=0)
            ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
