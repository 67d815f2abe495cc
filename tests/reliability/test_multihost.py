"""Two hosts in two network namespaces, CURVE on every link, a run taken across them.

The "daq host" namespace runs run control, the builder, the recorder, the monitor and a
Mosquitto; the "counting-room host" runs the front end and the trigger worker. A veth pair
joins them on 10.77.0.0/24 (nothing routes out of the machine). Every process is a real
`na64daq serve` started with `ip netns exec`, each host holding only its own services'
secret keys (NA64_CURVE_SECRET_KEYS) and every service's public key. The shift crew
drives the run with `na64daq ctl` from the daq host. What it proves: data and commands
cross hosts encrypted and authenticated; the run file is complete and every event the
front end sent was either recorded or rejected; a key from outside the installation gets
nothing in (counted on the builder's /metrics); a key of the installation claiming another
service's name is not heard (counted on run control's /metrics).

Needs root and iproute2: skipped otherwise, a failure under CI=true (CI runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from daq.runfile import RunFileReader
from daq.wire import Kind
from tests.conftest import IN_CI, require_binary

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.mosquitto,
              pytest.mark.timeout(300)]

DAQ_IP, CR_IP = "10.77.0.1", "10.77.0.2"  # inside the two namespaces only
DAQ_HOST = ("control", "builder", "recorder", "monitor")
CR_HOST = ("trigger-0", "frontend")
SERVICES = ("frontend", "builder", "trigger-0", "recorder", "monitor")
SIM = {"intensity": 4000.0, "spill_length_s": 0.4, "spill_period_s": 0.4,
       "generated_s": 0.4, "slice_events": 256, "seed": 7}
SPILLS = 3
CREW = {"NA64_MQTT_USERNAME": "crew", "NA64_MQTT_PASSWORD": "anonymous-broker"}

#: a client in a namespace: a PUSH into the builder with a key of no service, or a DEALER
#: saying hello to run control under a name not its own (argv: mode, endpoint, secret key,
#: server's public key[, name])
CLIENT = """
import json, sys, time
import zmq
from daq.curve import CurveConfig, make_client
mode, endpoint, secret, server = sys.argv[1:5]
s = zmq.Context.instance().socket(zmq.PUSH if mode == "push" else zmq.DEALER)
s.linger = 0
if mode == "hello":
    s.setsockopt(zmq.IDENTITY, sys.argv[5].encode())
make_client(s, CurveConfig(enabled=True, secret_key=secret, server_public_key=server))
s.connect(endpoint)
doc = {"t": "hello", "service": sys.argv[-1], "phase": "configured"}
for _ in range(20):
    try:
        s.send(json.dumps(doc).encode() if mode == "hello" else b"garbage", zmq.NOBLOCK)
    except zmq.Again:
        pass
    time.sleep(0.1)
"""


def _ip() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None)


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"the multi-host test must run under CI: {why}")
    pytest.skip(why)


@dataclass
class Hosts:
    """Two namespaces joined by a veth pair, and every process started in them."""

    ip: str
    daq: str
    cr: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def run(self, ns: str, *cmd: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.ip, "netns", "exec", ns, *cmd], capture_output=True,
                              text=True, timeout=timeout, env=env)

    def start(self, name: str, ns: str, cmd: list[str], env: dict[str, str], log: Path
              ) -> None:
        with log.open("ab") as err:
            self.procs[name] = subprocess.Popen([self.ip, "netns", "exec", ns, *cmd],
                                                stdout=subprocess.DEVNULL, stderr=err,
                                                env=env, start_new_session=True)

    def stop(self, name: str, timeout: float = 20.0) -> int | None:
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode


def _sh(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    ip = _ip()
    if ip is None:
        _unavailable("iproute2's `ip` is not installed (scripts/test installs it)")
    if os.geteuid() != 0:
        _unavailable("network namespaces need root")
    assert ip is not None
    pid = os.getpid()
    h = Hosts(ip, f"na64-daq-{pid}", f"na64-cr-{pid}")
    veth_d, veth_c = f"n64d{pid}"[:15], f"n64c{pid}"[:15]
    made: list[str] = []
    try:
        for ns in (h.daq, h.cr):
            _sh(ip, "netns", "add", ns)
            made.append(ns)
        _sh(ip, "link", "add", veth_d, "netns", h.daq, "type", "veth",
            "peer", "name", veth_c, "netns", h.cr)
        for ns, dev, addr in ((h.daq, veth_d, DAQ_IP), (h.cr, veth_c, CR_IP)):
            _sh(ip, "-n", ns, "link", "set", "lo", "up")
            _sh(ip, "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _sh(ip, "-n", ns, "link", "set", dev, "up")
    except RuntimeError as e:
        for ns in made:
            subprocess.run([ip, "netns", "del", ns], capture_output=True, timeout=30)
        _unavailable(f"cannot set up network namespaces here: {e}")
    try:
        yield h
    finally:  # every process first, then the namespaces (the veth pair goes with them)
        for name in ("control", "frontend", "builder", "trigger-0", "recorder", "monitor",
                     *h.procs):
            h.stop(name)
        for ns in made:
            subprocess.run([ip, "netns", "del", ns], capture_output=True, timeout=30)


def _scrape(h: Hosts, ns: str, port: int) -> dict[str, float]:
    """A service's /metrics, read from inside its host."""
    r = h.run(ns, sys.executable, "-c", "import sys, urllib.request; print(urllib.request."
              "urlopen(sys.argv[1], timeout=5).read().decode())",
              f"http://127.0.0.1:{port}/metrics")
    if r.returncode != 0:
        return {}
    return {s.name + json.dumps(s.labels, sort_keys=True) if s.labels else s.name: s.value
            for fam in text_string_to_metric_families(r.stdout) for s in fam.samples}


def _until(what: str, get: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = get()
        if v:
            return v
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.5)


def _topology(tmp: Path) -> Path:
    topo = {
        "run_dir": str(tmp / "runs"), "workers": 1,
        "endpoints": {k: f"tcp://{DAQ_IP}:{p}" for k, p in (
            ("builder_in", 5550), ("builder_out", 5551), ("recorder", 5552),
            ("monitor", 5553), ("control", 5554))},
        "mqtt": f"mqtt://{DAQ_IP}:1883",
        "simulator": {"spills": 1000, "pace": "factor", "factor": 1.0, "sim": SIM},
        "builder": {"timeout_s": 0.5},
        "curve": {"enabled": True, "public_keys": "keys/public"},
    }
    path = tmp / "topology.toml"
    path.write_text(tomli_w.dumps(topo))
    return path


def _host_secrets(keys: Path, host: Path, names: tuple[str, ...]) -> Path:
    """What the control room copies to one host: only its own services' secret keys."""
    host.mkdir(mode=0o700)
    for n in names:
        shutil.copy2(keys / "secret" / f"{n}.key_secret", host / f"{n}.key_secret")
    return host


def test_a_run_across_two_hosts_with_curve(hosts: Hosts, tmp_path: Path) -> None:
    mosquitto = require_binary("mosquitto")
    h = hosts
    topo = _topology(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    py = sys.executable
    r = subprocess.run([py, "-m", "daq.cli", "curve", "keys", str(tmp_path / "keys"),
                        "--config", str(topo)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    base = {**os.environ, **CREW}
    env = {host: {**base, "NA64_CURVE_SECRET_KEYS": str(_host_secrets(
        tmp_path / "keys", tmp_path / f"{host}-secrets", names))}
        for host, names in (("daq", DAQ_HOST), ("cr", CR_HOST))}
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener 1883 {DAQ_IP}\nallow_anonymous true\npersistence false\n")
    h.start("mosquitto", h.daq, [mosquitto, "-c", str(conf)], base, logs / "mosquitto.log")
    for name in (*DAQ_HOST, *CR_HOST):
        ns, host = (h.daq, "daq") if name in DAQ_HOST else (h.cr, "cr")
        service, index = name.split("-")[0], name.split("-")[1:]
        h.start(name, ns, [py, "-m", "daq.cli", "serve", service, "--config", str(topo),
                           *(["--index", index[0]] if index else [])], env[host],
                logs / f"{name}.log")

    def ctl(*args: str) -> Any:
        r = h.run(h.daq, py, "-m", "daq.cli", "ctl", "--config", str(topo), "--timeout",
                  "10", "--json", *args, env=env["daq"])
        assert r.returncode == 0, (args, r.stderr)
        return json.loads(r.stdout)

    def alive() -> None:
        dead = {n: p.returncode for n, p in h.procs.items() if p.poll() is not None}
        assert not dead, (dead, {n: (logs / f"{n}.log").read_text()[-2000:] for n in dead})

    def standing() -> Any:
        alive()
        st = ctl("status")
        d = st.get("daq") or {}
        ok = all(d.get(n, {}).get("status") == "online" for n in SERVICES) and d.get(
            "trigger-0", {}).get("ready")
        return st if ok else None

    _until("every service online under run control, across the hosts", standing, 180)

    # a key from outside the installation, from the counting room: refused, counted
    public = tmp_path / "keys" / "public"
    out_keys = tmp_path / "outsider"
    r = subprocess.run([py, "-m", "daq.cli", "curve", "keys", str(out_keys), "--names",
                        "frontend"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = h.run(h.cr, py, "-c", CLIENT, "push", f"tcp://{DAQ_IP}:5550",
              str(out_keys / "secret" / "frontend.key_secret"), str(public / "builder.key"),
              env=base)
    assert r.returncode == 0, r.stderr
    _until("the builder counted the outsider's handshake", lambda: _scrape(
        h, h.daq, 9101).get("na64_curve_refused_total", 0) >= 1, 30)

    # a run of SPILLS spills, started by the crew, ended by the front end, closed by run control
    reply = ctl("start", "--spills", str(SPILLS))
    run = reply["run"]
    closed = _until(f"run {run} stopped", lambda: (st := ctl("status")["run"]).get(
        "state") == "stopped" and (st.get("run") or {}).get("run") == run and st["run"])
    assert closed["spills"] == SPILLS, closed
    alive()

    # a service of the installation claiming another's name: not heard, counted
    r = h.run(h.cr, py, "-c", CLIENT, "hello", f"tcp://{DAQ_IP}:5554",
              str(env["cr"]["NA64_CURVE_SECRET_KEYS"] + "/frontend.key_secret"),
              str(public / "control.key"), "recorder", env=base)
    assert r.returncode == 0, r.stderr
    control = _until("run control counted the impostor", lambda: (
        m := _scrape(h, h.daq, 9104)).get("na64_control_impostors_total", 0) >= 1 and m, 30)

    sent = _scrape(h, h.cr, 9100)['na64_frontend_events_total{"board": "BEAM"}']
    trig = _scrape(h, h.cr, 9110)
    mon = _scrape(h, h.daq, 9103)
    rec = _scrape(h, h.daq, 9102)
    builder = _scrape(h, h.daq, 9101)
    for name in ("control", "frontend", "builder", "trigger-0", "recorder", "monitor"):
        assert h.stop(name) == 0, (name, (logs / f"{name}.log").read_text()[-2000:])

    # the run file: closed cleanly, every spill complete; every event sent was processed
    # once, and recorded exactly when accepted
    [path] = sorted((tmp_path / "runs").glob("*.na64"))
    reader = RunFileReader(path)
    msgs = list(reader)
    assert reader.report.closed_cleanly and not reader.report.torn, path
    assert sorted(reader.report.spills) == list(range(SPILLS))
    assert all(sp.complete for sp in reader.report.spills.values())
    recorded = sum(m.count for m in msgs if m.kind is Kind.ACCEPTED)
    processed = trig["na64_trigger_processed_events_total"]
    rejected = processed - trig["na64_trigger_kept_events_total"]
    assert sent > 0 and processed == sent, (sent, trig)
    assert recorded + rejected == sent, (recorded, rejected, sent)
    assert recorded == rec['na64_recorder_events_total{"source": "live"}'], rec
    assert closed["events"] == sent, closed  # the monitor's count, in run control's record
    assert mon.get("na64_monitor_lost_events_total", 0) == 0
    # the data path admitted only the installation's keys, the command channel only names
    # from their own keys
    assert builder["na64_curve_refused_total"] >= 1  # the outsider
    assert builder["na64_curve_accepted_total"] >= 2  # the worker, the front end's boards
    assert control["na64_curve_refused_total"] == 0
    assert control["na64_curve_accepted_total"] >= len(SERVICES) + 1  # and the impostor
