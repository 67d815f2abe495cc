"""A service process that ends its stream delivers every message intact before it exits.

Regression: messages are sent zero-copy, so libzmq reads Python buffers after send()
returned; a process that exited without terminating its zmq context freed buffers that
were still being sent (CRC failures downstream, EFAULT aborts in libzmq).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from daq.bench import _child, _result
from daq.errors import WireError
from daq.wire import Kind, decode
from tests.conftest import free_tcp_ports


@pytest.mark.slow
def test_builder_process_flushes_its_output_before_exit(tmp_path: Path) -> None:
    p = free_tcp_ports(5)
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'run_dir = "{tmp_path}"\nworkers = 1\n[endpoints]\n'
        f'builder_in = "tcp://127.0.0.1:{p[0]}"\nbuilder_out = "tcp://127.0.0.1:{p[1]}"\n'
        f'recorder = "tcp://127.0.0.1:{p[2]}"\nmonitor = "tcp://127.0.0.1:{p[3]}"\n'
        f"[metrics]\nbuilder = {p[4]}\nfrontend = 0\nrecorder = 0\nmonitor = 0\n"
        "control = 0\ntrigger = 0\n[builder]\nshed_after_s = 600\ntimeout_s = 30\n")
    builder = subprocess.Popen([sys.executable, "-m", "daq.cli", "serve", "builder",
                                "--config", str(topo)], stdout=subprocess.DEVNULL)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 4)  # a slow consumer: the builder's queue is full at its end
    pull.setsockopt(zmq.RCVTIMEO, 60_000)
    pull.connect(f"tcp://127.0.0.1:{p[1]}")
    try:
        time.sleep(1.0)
        sender = _child("sender", f"tcp://127.0.0.1:{p[0]}", "waveform", 20_000, 3, 0)
        good, bad, events = 0, 0, 0
        while True:
            frames = pull.recv_multipart(copy=False)
            time.sleep(0.02)
            try:
                msg = decode([f.buffer for f in frames])
            except WireError:
                bad += 1
                continue
            good += 1
            events += msg.count if msg.kind is Kind.SLICE else 0
            if msg.kind is Kind.END_OF_STREAM:
                break
        sent = _result(sender)["events"]
        assert builder.wait(timeout=60) == 0  # no abort, no segfault at exit
        assert bad == 0
        assert events == sent  # every built event arrived, after the builder had ended
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()
        pull.close(0)
        ctx.term()
