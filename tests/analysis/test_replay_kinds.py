"""Replay of every kind of run file, into the standing system (a replay run) and into a
bare builder (`--to`), delivers every event it reports; `--to` says so only when it is
true: no receiver, a receiver that stops taking, or one that goes away is an error."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from analysis_files import RunFiles, _stack
from prometheus_client import CollectorRegistry

from daq.analysis import open_run
from daq.builder import BuilderConfig, EventBuilder
from daq.builder_service import BuilderService
from daq.cli import main
from daq.geometry import load_calibration, load_geometry
from daq.replay import replay
from daq.transport import arecv, context
from daq.wire import Kind, Message
from trigger.config import PHYSICS

pytestmark = pytest.mark.slow  # a standing system and real sockets
KINDS = ["raw", "raw_wave", "recorded", "recorded_wave", "replay"]


def _sent_events(run_files: RunFiles, which: str) -> int:
    """Events a replay of the file sends: every event of a raw file, the accepted events
    of a recorded one."""
    return len(open_run(getattr(run_files, which)).arrays())


def test_every_kind_replays_as_a_run_of_the_standing_system(run_files: RunFiles,
                                                           tmp_path: Path) -> None:
    from daq.app import LocalStack

    async def runs() -> dict[str, tuple[int, int, Path]]:
        out = {}
        async with LocalStack(_stack(tmp_path, "again", generated_s=0.001, seed=3),
                              metrics=False) as stack:
            # a live run first: a stack whose front ends never ran waits 30 s for their end
            # of stream when it shuts down (daq/app.py)
            await stack.take_run(spills=1)
            for which in KINDS:
                reply = await stack.start_run(replay=True, run_type="test")
                res = await replay(getattr(run_files, which), stack.cfg.endpoints.builder_in,
                                   run=int(reply["run"]))
                assert res.delivered, res.reason
                stop = await stack.stop_run("replay sent")
                assert stop.get("ok"), stop
                out[which] = (res.events, int(stop["events"]), stack.recorder.rec.files[-1])
        return out

    done = asyncio.run(runs())
    for which, (sent, counted, path) in done.items():
        # the monitors counted every event the replay says it sent, and that is the file's
        assert sent == counted == _sent_events(run_files, which), which
        again = open_run(path)
        assert again.replay and path.name.startswith("replay-run"), which
        if which.startswith("recorded") or which == "replay":
            # the physics trigger depends on the event alone: every recorded physics event
            # is kept again (prescaled bits hash the new event numbers and run)
            before = open_run(getattr(run_files, which)).arrays().columns
            after = again.arrays().columns
            phys0, phys1 = before["bits"] & PHYSICS != 0, after["bits"] & PHYSICS != 0
            assert phys1.sum() == phys0.sum() > 0, which
            np.testing.assert_array_equal(np.sort(after["e_ecal"][phys1]),
                                          np.sort(before["e_ecal"][phys0]))


async def _bare_builder(tmp_path: Path, src: Path) -> tuple[int, list[Message], BuilderService]:
    geom = load_geometry()
    cfg = BuilderConfig.parse({"input": f"ipc://{tmp_path}/bin", "output": f"ipc://{tmp_path}/bo",
                               "timeout_s": 0.3})
    svc = BuilderService(EventBuilder(geom, cfg, calibration=load_calibration(geom).hash),
                         CollectorRegistry(), poll_interval_s=0.02, drain_timeout_s=1.0)
    got: list[Message] = []
    async with svc:
        sock = context().socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(svc.output_endpoint)

        async def collect() -> None:
            while not got or got[-1].kind is not Kind.END_OF_STREAM:
                got.append(await arecv(sock))

        task = asyncio.create_task(collect())
        res = await replay(src, svc.input_endpoint, send_eos=True)
        assert res.delivered, res.reason
        await asyncio.wait_for(task, 30)
        sock.close()
        await svc.wait()
    return res.events, got, svc


@pytest.mark.parametrize("which", KINDS)
def test_every_kind_replays_into_a_bare_builder(run_files: RunFiles, which: str,
                                                tmp_path: Path) -> None:
    sent, got, svc = asyncio.run(_bare_builder(tmp_path, getattr(run_files, which)))
    built = [m for m in got if m.kind is Kind.SLICE]
    assert sent == sum(m.count for m in built) == _sent_events(run_files, which)
    st = svc.builder.stats["replay"]
    assert st.events == sent and not sum(st.decode_errors.values())
    assert not sum(st.incomplete.values()) and all(m.replay for m in got)


def _receiver(endpoint_box: list[str], take: int, then: str, ready: threading.Event,
              done: threading.Event) -> None:
    """A PULL socket that takes `take` messages, then stalls (stays connected, reads
    nothing) or exits."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 65536)
    s.bind("tcp://127.0.0.1:*")
    endpoint_box.append(s.getsockopt_string(zmq.LAST_ENDPOINT))
    ready.set()
    n = 0
    while n < take and s.poll(10_000):
        s.recv_multipart()
        n += 1
    if then == "stall":
        done.wait(30)
    s.close(linger=0)
    ctx.term()


@pytest.mark.parametrize("then", ["stall", "exit"])
def test_replay_to_a_receiver_that_stops_taking_is_an_error(
        run_files: RunFiles, then: str, capsys: pytest.CaptureFixture[str]) -> None:
    box: list[str] = []
    ready, done = threading.Event(), threading.Event()
    t = threading.Thread(target=_receiver, args=(box, 3, then, ready, done), daemon=True)
    t.start()
    ready.wait(5)
    try:  # 11 MB of waveforms: more than the receiver's socket buffers hold
        rc = main(["replay", str(run_files.raw_wave), "--to", box[0], "--timeout", "1",
                   "--no-progress"])
    finally:
        done.set()
        t.join(10)
    out, err = capsys.readouterr()
    assert rc == 1
    # a receiver that exits is found either waiting for it or, when it leaves between
    # pyzmq's poll and its send, by the send itself
    assert (f"the receiver at {box[0]} took nothing for 1 s after" in err
            or (then == "exit" and f"the receiver at {box[0]} went away after" in err)), err
    sent = int(out.split()[1])
    assert 3 <= sent < 75 and "not all delivered" in out


def test_replay_to_nothing_and_to_no_scheme(run_files: RunFiles,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_tcp_ports

    [port] = free_tcp_ports(1)
    assert main(["replay", str(run_files.raw), "--to", f"tcp://127.0.0.1:{port}",
                 "--timeout", "0.5", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert f"nothing accepted a connection at tcp://127.0.0.1:{port} within 0.5 s" in err
    assert "sent 0 messages (0 events)" in out and "none delivered" in out
    assert main(["replay", str(run_files.raw), "--to", f"127.0.0.1:{port}"]) == 2
    assert "a ZeroMQ endpoint with its scheme" in capsys.readouterr().err
    assert main(["replay", str(run_files.truth), "--to", f"tcp://127.0.0.1:{port}"]) == 2
    assert "is a truth file: it holds no board data" in capsys.readouterr().err
