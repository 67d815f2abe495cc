"""`na64daq trigger-worker` as its own process over TCP on loopback, scraped over HTTP."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
import zmq
from trigger_data import built_stream

from daq.transport import recv, send
from daq.wire import Kind, Message
from tests.conftest import free_tcp_port, wait_for_port


@pytest.mark.multiprocess
def test_worker_process_runs_the_trigger_and_ends_with_the_stream() -> None:
    stream = built_stream(spills=1)
    body, eos = stream[:-1], stream[-1]
    assert eos.kind is Kind.END_OF_STREAM
    ports = {k: free_tcp_port() for k in ("in", "rec", "mon", "metrics")}
    ctx = zmq.Context()
    push, rec, mon = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
    for s, k in ((push, "in"), (rec, "rec"), (mon, "mon")):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 60_000)
        s.setsockopt(zmq.RCVTIMEO, 60_000)
        s.bind(f"tcp://127.0.0.1:{ports[k]}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daq.cli", "trigger-worker", "--input",
         f"tcp://127.0.0.1:{ports['in']}", "--recorder", f"tcp://127.0.0.1:{ports['rec']}",
         "--monitor", f"tcp://127.0.0.1:{ports['mon']}", "--index", "3",
         "--metrics-port", str(ports["metrics"])], stderr=subprocess.PIPE)
    try:
        wait_for_port(ports["metrics"], timeout=60)
        for m in body:
            send(push, m)
        slices = sum(m.kind is Kind.SLICE for m in body)
        feats: list[Message] = []
        while len(feats) < slices:
            m = recv(mon)
            if m.kind is Kind.FEATURES:
                feats.append(m)
        # the recorder gets every marker and one ACCEPTED per slice: as many as were sent
        accepted = [m for m in (recv(rec) for _ in range(len(body)))
                    if m.kind is Kind.ACCEPTED]
        assert len(accepted) == slices
        assert all(m.src == "trigger-3" for m in feats + accepted)
        url = f"http://127.0.0.1:{ports['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        events = sum(m.count for m in body if m.kind is Kind.SLICE)
        assert f"na64_trigger_processed_events_total {float(events)}" in text
        kept = sum(m.count for m in accepted)
        assert f"na64_trigger_kept_events_total {float(kept)}" in text
        send(push, eos)
        assert recv(rec).kind is Kind.END_OF_STREAM
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        for s in (push, rec, mon):
            s.close()
        ctx.term()
