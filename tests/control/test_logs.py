"""Service logs (issue 20): time, service, run and spill on every line; JSON on request."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daq import logs
from daq.lifecycle import Lifecycle, RunContext, Transition
from tests.conftest import free_tcp_ports


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


class FakeService:
    def __init__(self) -> None:
        self.lifecycle = Lifecycle()
        self.spill = 0


def test_run_and_spill_appear_once_a_run_is_open(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup_logging("builder", fmt="json", stream=out)
    svc = FakeService()
    logs.bind(svc)
    log = logging.getLogger("na64.test")
    log.info("before")
    svc.lifecycle.apply(Transition.CONFIGURE)
    svc.lifecycle.apply(Transition.START, RunContext(run=7))
    svc.spill = 3
    log.warning("during %d", 1)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["service"], x["run"], x["spill"], x["message"]) for x in lines] == [
        ("builder", None, None, "before"), ("builder", 7, 3, "during 1")]
    assert lines[1]["level"] == "WARNING" and lines[1]["time"].endswith("Z")


def test_text_lines_carry_time_service_run(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup_logging("recorder", stream=out)
    svc = FakeService()
    logs.bind(svc)
    svc.lifecycle.apply(Transition.CONFIGURE)
    svc.lifecycle.apply(Transition.START, RunContext(run=2))
    logging.getLogger("na64.x").info("hello")
    line = out.getvalue().strip()
    assert line.split()[1:5] == ["INFO", "recorder", "run=2", "spill=0"] and "hello" in line


def test_a_failing_source_does_not_lose_the_line(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup_logging("monitor", fmt="json", stream=out)
    logs._filter.source = lambda: 1 / 0  # type: ignore[union-attr,assignment,return-value]
    logging.getLogger("x").error("still here")
    assert json.loads(out.getvalue())["message"] == "still here"


@pytest.mark.slow
def test_serve_process_logs_json(tmp_path: Path) -> None:
    p = free_tcp_ports(5)
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'run_dir = "{tmp_path}"\nworkers = 1\n[endpoints]\n'
        f'builder_in = "tcp://127.0.0.1:{p[0]}"\nbuilder_out = "tcp://127.0.0.1:{p[1]}"\n'
        f'recorder = "tcp://127.0.0.1:{p[2]}"\nmonitor = "tcp://127.0.0.1:{p[3]}"\n'
        f"[metrics]\nrecorder = {p[4]}\nfrontend = 0\nbuilder = 0\nmonitor = 0\n"
        "control = 0\ntrigger = 0\n")
    proc = subprocess.Popen([sys.executable, "-m", "daq.cli", "serve", "recorder", "--config",
                             str(topo), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    docs = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert docs and all(d["service"] == "recorder" for d in docs)
    assert {"time", "level", "service", "run", "spill", "message"} <= set(docs[0])
    assert any(d["message"].startswith("started") for d in docs)
