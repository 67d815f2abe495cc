"""deploy/systemd: the units pass `systemd-analyze verify`, every ExecStart is a valid
`na64daq serve` command, and a real service tells a notify socket READY=1 and STOPPING=1."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prom_stack import require

from daq.cli import build_parser
from daq.notify import sd_notify
from daq.stack import SERVICES
from tests.conftest import Broker, free_tcp_ports

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy/systemd"
INSTALLED = "/opt/na64-daq/bin/na64daq"
TOPOLOGY = "/etc/na64/topology.toml"


def _unit(name: str) -> configparser.ConfigParser:
    c = configparser.ConfigParser(interpolation=None, strict=True)
    c.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    c.read_string((UNITS / name).read_text())
    return c


def _instances() -> dict[str, str]:
    """Every service instance of a two-worker topology -> the template it instantiates."""
    out = {f"na64daq@{s}.service": "na64daq@.service" for s in SERVICES if s != "trigger"}
    out |= {f"na64daq-trigger@{i}.service": "na64daq-trigger@.service" for i in (0, 1)}
    return out


def _exec_start(instance: str) -> list[str]:
    """The instance's ExecStart with %i expanded, as argv."""
    template = _instances()[instance]
    line = _unit(template)["Service"]["ExecStart"]
    return shlex.split(line.replace("%i", instance.split("@")[1].removesuffix(".service")))


def _installed_copy(tmp_path: Path) -> Path:
    """The units with the installed na64daq replaced by this environment's, which verify
    requires to exist."""
    here = Path(sys.executable).with_name("na64daq")
    if not here.exists():
        pytest.skip(f"no {here}: the package is not installed in this environment")
    shutil.copytree(UNITS, tmp_path / "units")
    for f in (tmp_path / "units").rglob("*.service"):
        f.write_text(f.read_text().replace(INSTALLED, str(here)))
    return tmp_path / "units"


def _verify(units: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("systemd-analyze"), "verify", *names], cwd=units,
                          capture_output=True, text=True, timeout=120, check=False)


# --- the unit files -------------------------------------------------------------------


def test_every_unit_and_drop_in_verifies_without_a_message(tmp_path: Path) -> None:
    units = _installed_copy(tmp_path)
    # the Debian package's broker unit, when installed, with our drop-in next to it
    debian_broker = Path("/lib/systemd/system/mosquitto.service")
    names = [*_instances(), "na64daq.target"]
    if debian_broker.exists():
        shutil.copy(debian_broker, units / "mosquitto.service")
        names.append("mosquitto.service")
    r = _verify(units, *names)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_verify_reports_a_mistake_in_a_unit_and_in_a_drop_in(tmp_path: Path) -> None:
    """Not vacuous: verify reads our files, drop-ins included, and names what is wrong."""
    units = _installed_copy(tmp_path)
    t = units / "na64daq@.service"
    t.write_text(t.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    d = units / "na64daq@control.service.d/broker.conf"
    d.write_text(d.read_text() + "Wnats=x.service\n")
    out = _verify(units, "na64daq@control.service").stderr
    assert "mixd" in out and "Wnats" in out


def test_every_exec_start_is_a_serve_command_of_the_cli() -> None:
    parser = build_parser()
    for instance in _instances():
        argv = _exec_start(instance)
        assert argv[0] == INSTALLED, instance
        a = parser.parse_args(argv[1:])
        assert a.command == "serve" and a.config == TOPOLOGY and a.log_format == "json"
        name = instance.split("@")[1].removesuffix(".service")
        if instance.startswith("na64daq-trigger@"):
            assert (a.service, a.index) == ("trigger", int(name))
        else:
            assert a.service == name


def test_restart_readiness_hardening_and_the_run_dir() -> None:
    for template in ("na64daq@.service", "na64daq-trigger@.service"):
        u = _unit(template)
        s = u["Service"]
        assert (s["Type"], s["Restart"], s["NotifyAccess"]) == ("notify", "on-failure", "main")
        assert int(u["Unit"]["StartLimitBurst"]) > 1 and int(u["Unit"]["StartLimitIntervalSec"])
        assert (s["NoNewPrivileges"], s["ProtectSystem"], s["ProtectHome"]) == \
            ("yes", "strict", "yes")
        assert s["ReadWritePaths"] == "/data/na64/runs" and s["User"] == "na64"
        assert "MemoryDenyWriteExecute" not in s  # numba writes machine code
        assert s["EnvironmentFile"] == "-/etc/na64/na64.env"
        assert u["Install"]["WantedBy"] == "na64daq.target"
        assert u["Unit"]["PartOf"] == "na64daq.target"
    for svc in ("control", "monitor"):
        broker = _unit(f"na64daq@{svc}.service.d/broker.conf")["Unit"]
        assert broker["Wants"] == broker["After"] == "mosquitto.service"


# --- sd_notify ------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(60.0)
    yield s
    s.close()


def test_sd_notify_sends_one_datagram_only_when_asked(notify_socket: socket.socket,
                                                      tmp_path: Path) -> None:
    path = notify_socket.getsockname()
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": path})
    assert notify_socket.recv(4096) == b"READY=1"
    assert not sd_notify("READY=1", {})
    # a socket that is gone: False and a warning, never an exception in the service
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_sd_notify_reaches_the_abstract_namespace() -> None:
    name = f"na64-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(10.0)
        assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"STOPPING=1"


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _topology(tmp_path: Path, ports: list[int], mqtt: str | None = None) -> Path:
    """Every endpoint on a free loopback port; /metrics of the recorder on ports[4], of run
    control on ports[6]."""
    p = ports
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'run_dir = "{tmp_path / "runs"}"\nworkers = 1\n'
        + (f'mqtt = "{mqtt}"\n' if mqtt else "") + "[endpoints]\n"
        f'builder_in = "tcp://127.0.0.1:{p[0]}"\nbuilder_out = "tcp://127.0.0.1:{p[1]}"\n'
        f'recorder = "tcp://127.0.0.1:{p[2]}"\nmonitor = "tcp://127.0.0.1:{p[3]}"\n'
        f'control = "tcp://127.0.0.1:{p[5]}"\n'
        f"[metrics]\nrecorder = {p[4]}\nfrontend = 0\nbuilder = 0\nmonitor = 0\n"
        f"control = {p[6]}\ntrigger = 0\n")
    return topo


def _ready_then_stopping(instance: str, topo: Path, notify_socket: socket.socket,
                         bound: list[int], env: dict[str, str] | None = None) -> None:
    """Run the unit's exact ExecStart (this interpreter in na64daq's place, `topo` in
    /etc's) with NOTIFY_SOCKET: READY=1 with `bound` ports accepting by then, STOPPING=1 at
    SIGTERM, exit 0, and nothing else on the socket."""
    argv = _exec_start(instance)
    argv = [sys.executable, "-m", "daq.cli", *argv[1:]]
    argv[argv.index(TOPOLOGY)] = str(topo)
    env = {**os.environ, **(env or {}), "NOTIFY_SOCKET": notify_socket.getsockname()}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert notify_socket.recv(4096) == b"READY=1"
        assert all(_accepts(port) for port in bound)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert notify_socket.recv(4096) == b"STOPPING=1"
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    notify_socket.settimeout(0.5)
    with pytest.raises(TimeoutError):  # one of each, nothing else
        notify_socket.recv(4096)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_recorder_units_command_says_ready_then_stopping(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    p = free_tcp_ports(7)
    # its input and /metrics are up by READY=1
    _ready_then_stopping("na64daq@recorder.service", _topology(tmp_path, p), notify_socket,
                         bound=[p[2], p[4]])


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.mosquitto
def test_run_controls_unit_command_says_ready_then_stopping(
        tmp_path: Path, notify_socket: socket.socket, mosquitto: Broker) -> None:
    p = free_tcp_ports(7)
    # its command channel and /metrics are up by READY=1; the broker takes any account
    _ready_then_stopping("na64daq@control.service",
                         _topology(tmp_path, p, mqtt=mosquitto.url), notify_socket,
                         bound=[p[5], p[6]], env={"NA64_MQTT_RUNCONTROL_USERNAME": "runcontrol",
                                                  "NA64_MQTT_RUNCONTROL_PASSWORD": "x"})
