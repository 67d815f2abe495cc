"""The recorder: spill closing with reordered workers, files per run, metrics, SIGKILL safety."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
from daq_fragments import Worker
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daq.metrics import MetricsServer
from daq.recorder import RecorderService, Recording, run_file_name
from daq.runfile import RunFileReader, partial_path, read_all
from daq.transport import asend, context
from daq.wire import Kind, Message, encode


def _same(a: Message, b: Message) -> bool:
    fa, fb = encode(a), encode(b)
    return len(fa) == len(fb) and all(bytes(x) == bytes(y) for x, y in zip(fa, fb, strict=True))


def test_spill_end_waits_for_every_slice_output(tmp_path: Path) -> None:
    w = Worker()
    rec = Recording(tmp_path)
    start = w.run_start()
    spill = w.spill(0, 4)
    # the spill_end overtakes the last two accepted messages (another worker was slower)
    order = [spill[0], spill[1], spill[2], spill[5], spill[3], spill[4]]
    rec.handle(start, 0.0)
    written = [rec.handle(m, 0.0) for m in order]
    assert written[3] == 0  # the spill_end is held back
    stop = w.msg(Kind.RUN_STOP, 0, meta={"reason": "done", "events": 20, "spills": 1})
    rec.handle(stop, 0.0)
    (path,) = rec.files
    assert path.name == run_file_name(1)
    msgs, rep = read_all(path)
    assert [m.kind for m in msgs] == [Kind.RUN_START, Kind.SPILL_START, *[Kind.ACCEPTED] * 4,
                                      Kind.SPILL_END, Kind.RUN_STOP]
    assert rep.closed_cleanly and rep.spills[0].complete
    assert RunFileReader(path).header["config"] == {"beam_gev": 100}


def test_lost_output_closes_the_spill_after_a_timeout(tmp_path: Path) -> None:
    w = Worker()
    rec = Recording(tmp_path, spill_timeout_s=5.0)
    rec.handle(w.run_start(), 0.0)
    spill = w.spill(0, 3)
    for m in spill[:2] + spill[3:]:  # accepted #1 lost
        rec.handle(m, 0.0)
    assert rec.poll(4.9) == 0
    assert rec.poll(5.0) > 0 and rec.incomplete_spills == 1
    (path,) = rec.close()
    assert RunFileReader(path).spill_index[0].complete  # type: ignore[index]


def test_rotation_and_a_new_file_per_run(tmp_path: Path) -> None:
    rec = Recording(tmp_path, max_bytes=2048)
    for run in (1, 2):
        w = Worker(run=run)
        rec.handle(w.run_start(), 0.0)
        for s in range(4):
            for m in w.spill(s, 3):
                rec.handle(m, 0.0)
        rec.handle(w.msg(Kind.RUN_STOP, 3, meta={"reason": "end"}), 0.0)
    runs = [RunFileReader(p).header["run"] for p in rec.files]
    assert runs.count(1) >= 2 and runs.count(2) >= 2 and len(rec.files) == len(set(rec.files))
    assert sum(len(list(RunFileReader(p))) for p in rec.files) == 2 * (2 + 4 * 5)


def _scrape(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    srv = MetricsServer(reg)
    try:
        text = urllib.request.urlopen(srv.url, timeout=5).read().decode()
    finally:
        srv.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.asyncio
async def test_service_records_two_workers_over_tcp(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    svc = RecorderService(tmp_path, reg, listen="tcp://127.0.0.1:*")
    w0, w1 = Worker("trigger-0", seed=1), Worker("trigger-1", seed=2)
    async with svc:
        socks = []
        for _ in range(2):
            s = context().socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 2000)
            s.connect(svc.endpoint)
            socks.append(s)
        await asend(socks[0], w0.run_start())
        for sp in range(3):
            msgs = w0.spill(sp, 4)
            # slices 1 and 3 go through the other worker, after the spill_end
            for m in msgs[:2] + msgs[3:4] + msgs[5:]:
                await asend(socks[0], m)
            for m in (msgs[2], msgs[4]):
                await asend(socks[1], m)
        await asend(socks[0], w0.msg(Kind.RUN_STOP, 2, meta={"reason": "end"}))
        for s in socks:
            s.close()
        async with asyncio.timeout(10):
            while not svc.rec.files:
                await asyncio.sleep(0.02)
        m = _scrape(reg)
        svc.stop()
        await svc.wait()
    del w1
    msgs, rep = read_all(svc.rec.files[0])
    assert rep.closed_cleanly and all(i.complete for i in rep.spills.values())
    assert sum(m.count for m in msgs if m.kind is Kind.ACCEPTED) == 3 * 4 * 5
    for sp in range(3):  # every spill_end is written after all its accepted messages
        kinds = [x.kind for x in msgs if x.spill == sp and x.kind is not Kind.RUN_STOP]
        assert kinds[-1] is Kind.SPILL_END and kinds.count(Kind.ACCEPTED) == 4
    assert m[("na64_recorder_events_total", (("source", "live"),))] == 60
    assert m[("na64_recorder_records_total", (("source", "live"),))] == len(msgs)
    assert m[("na64_recorder_files_total", (("source", "live"),))] == 1
    assert m[("na64_recorder_fsync_seconds_count", ())] == 3


@pytest.mark.multiprocess
def test_sigkill_mid_spill_keeps_every_ended_spill(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daq.recorder", "--listen", "tcp://127.0.0.1:*",
         "--dir", str(tmp_path)], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().decode().split()[-1]
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(endpoint)
        w = Worker()
        sent = [w.run_start()]
        for sp in range(3):
            sent += w.spill(sp, 4)
        torn = w.spill(3, 4)[:3]  # spill 3 is being written when the recorder dies
        for m in sent + torn:
            sock.send_multipart(encode(m), copy=False)
        partial = partial_path(tmp_path / run_file_name(1))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until spill 3 has reached the file
            if partial.exists():
                seen = list(RunFileReader(partial))
                if any(m.spill == 3 for m in seen):
                    break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        sock.close()
        ctx.term()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    back, rep = read_all(partial)
    assert not rep.closed_cleanly and rep.torn_spill == 3
    ended = [m for m in back if m.spill < 3 or m.kind is Kind.RUN_START]
    assert len(ended) == len(sent)
    assert all(_same(a, b) for a, b in zip(sent, ended, strict=True))
    assert all(rep.spills[s].complete for s in range(3)) and not rep.spills[3].complete
