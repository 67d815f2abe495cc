"""compose.yaml: every container has a healthcheck that really tells a running service from a
missing one, and the containers wait for each other in data-flow order."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import pytest
from prom_stack import Prometheus, require, stack_config

from daq.errors import ConfigError
from daq.stack import StackConfig, load_stack_config
from monitors.dashboards import compose
from monitors.dashboards.files import build
from tests.conftest import free_tcp_ports, start_mosquitto, stop_pid

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _doc(path: Path = DEPLOY / "compose.yaml") -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    return dict(yaml.safe_load(path.read_text()))


def _run_check(check: dict[str, Any]) -> int:
    """Run a healthcheck's exec-form command as the container would (`python` is this
    environment's interpreter) and return its exit status."""
    test = check["test"]
    assert test[0] == "CMD", test
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(test[1:], env=env, capture_output=True, timeout=30,
                          check=False).returncode


def _depends(svc: dict[str, Any]) -> dict[str, str]:
    return {n: c["condition"] for n, c in (svc.get("depends_on") or {}).items()}


# --- the document -----------------------------------------------------------------------


def test_every_service_has_a_healthcheck() -> None:
    for name, svc in _doc()["services"].items():
        check = svc.get("healthcheck")
        assert check and check["test"][0] == "CMD" and len(check["test"]) > 1, name
        assert check["retries"] >= 1 and check["interval"] and check["timeout"], name


def test_dependencies_wait_for_healthy_services_in_data_flow_order() -> None:
    services = _doc()["services"]
    workers = sorted(n for n in services if n.startswith("trigger-"))
    assert len(workers) == load_stack_config(DEPLOY / "topology.toml").workers
    deps = {name: _depends(svc) for name, svc in services.items()}
    assert {c for d in deps.values() for c in d.values()} == {"service_healthy"}
    expected = {
        "mosquitto": set(), "prometheus": set(), "builder": set(), "recorder": set(),
        "grafana": {"prometheus"}, "monitor": {"mosquitto"}, "control": {"mosquitto"},
        **{w: {"builder", "recorder", "monitor"} for w in workers},
        "frontend": {*workers, "control"},
    }
    assert {n: set(d) for n, d in deps.items()} == expected
    order = list(TopologicalSorter({n: set(d) for n, d in deps.items()}).static_order())
    rank = {n: i for i, n in enumerate(order)}
    for w in workers:  # the binders, then the workers, then what sends data
        assert max(rank["builder"], rank["recorder"], rank["monitor"]) < rank[w]
        assert rank[w] < rank["frontend"]


def test_the_broker_check_watches_the_listener_of_the_shipped_config() -> None:
    conf = (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    assert re.search(rf"^listener {compose.MOSQUITTO_PORT} 127\.0\.0\.1$", conf, re.M)
    assert _doc()["services"]["mosquitto"]["healthcheck"] == compose.mosquitto_healthcheck()


def test_a_metrics_port_of_zero_cannot_get_a_healthcheck() -> None:
    cfg = StackConfig.parse({"metrics": {"builder": 0}})
    with pytest.raises(ConfigError, match=r"metrics\.builder"):
        compose.compose(cfg)


# --- each check against the real thing ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_generated_recorder_check_passes_while_it_runs_and_fails_after(
        tmp_path: Path) -> None:
    """compose.yaml generated for a topology on free ports; its recorder's healthcheck,
    exactly as written there, against `na64daq serve recorder` of that topology."""
    p = free_tcp_ports(8)
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'run_dir = "{tmp_path / "runs"}"\nworkers = 1\n[endpoints]\n'
        f'builder_in = "tcp://127.0.0.1:{p[0]}"\nbuilder_out = "tcp://127.0.0.1:{p[1]}"\n'
        f'recorder = "tcp://127.0.0.1:{p[2]}"\nmonitor = "tcp://127.0.0.1:{p[3]}"\n'
        f'control = "tcp://127.0.0.1:{p[4]}"\n[metrics]\nrecorder = {p[5]}\n'
        f"frontend = {p[6]}\nbuilder = {p[7]}\nmonitor = {p[7] + 1}\ncontrol = {p[7] + 2}\n"
        f"trigger = {p[7] + 3}\n")
    build(tmp_path / "deploy", load_stack_config(topo))
    check = _doc(tmp_path / "deploy/compose.yaml")["services"]["recorder"]["healthcheck"]
    assert f":{p[5]}/metrics" in " ".join(check["test"])
    assert _run_check(check) != 0  # nothing there yet
    proc = subprocess.Popen([sys.executable, "-m", "daq.cli", "serve", "recorder", "--config",
                             str(topo)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _run_check(check) != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "recorder not up"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        stop_pid(proc)
    assert _run_check(check) != 0


@pytest.mark.mosquitto
def test_the_broker_check_passes_while_mosquitto_listens_and_fails_after(
        tmp_path: Path) -> None:
    proc, port = start_mosquitto(tmp_path, "allow_anonymous false\n")
    try:
        assert _run_check(compose.mosquitto_healthcheck(port)) == 0
    finally:
        stop_pid(proc)
    assert _run_check(compose.mosquitto_healthcheck(port)) != 0


@pytest.mark.prometheus
def test_the_prometheus_check_passes_while_it_is_ready_and_fails_after(
        tmp_path: Path) -> None:
    require("wget")
    deployed = _doc()["services"]["prometheus"]["healthcheck"]
    assert deployed == compose.wget_healthcheck(
        f"http://127.0.0.1:{compose.PROMETHEUS_PORT}/-/ready")
    prom = Prometheus(tmp_path, stack_config(tmp_path / "runs", spills=1, factor=1.0,
                                             intensity=1e5, generated_s=0.01), for_s=1)
    check = compose.wget_healthcheck(f"{prom.url}/-/ready")
    try:
        with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=5) as r:
            assert r.status == 200
        assert _run_check(check) == 0
    finally:
        prom.stop()
    assert _run_check(check) != 0
