"""The Mosquitto `na64daq up` starts for itself, and `na64daq ctl --config` finding it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from pydantic import SecretStr

from daq.cli import main as cli_main
from daq.control import protocol as P
from daq.control.broker import BrokerError
from daq.control.datapath import MemoryDataPath
from daq.control.localbroker import LocalBroker, LocalBrokerError, local_credentials, render_conf
from daq.control.service import RunControlService
from daq.control.store import StateStore
from daq.errors import ConfigError
from daq.mqtt import MqttSettings, client
from tests.conftest import require_binary
from tests.control.conftest import ctl

ACCOUNTS = ("builder", "expert", "frontend", "monitor", "recorder", "runcontrol", "shift",
            "trigger")
SERVICES = ("builder", "frontend", "monitor", "recorder", "runcontrol", "trigger")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    require_binary("mosquitto")
    require_binary("mosquitto_passwd")
    with LocalBroker(run_dir=tmp_path / "run") as b:
        yield b


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def topology(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(f'run_dir = "{tmp_path / "run"}"\n{extra}')
    return path


def bare_env() -> dict[str, str]:
    """This environment without broker settings: ctl --config must find them itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NA64_MQTT")}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.mosquitto
def test_files_are_private_and_name_the_broker(broker: LocalBroker) -> None:
    d = broker.run_dir / "mqtt"
    assert mode(d) == 0o700
    assert broker.users == ACCOUNTS
    for name in ("passwd", "acl", "mosquitto.conf", "broker.json",
                 *(f"{u}.env" for u in ACCOUNTS)):
        assert mode(d / name) == 0o600, name
    state = json.loads((d / "broker.json").read_text())
    assert state == {"url": broker.url, "pid": broker.pid, "port": broker.port}
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    conf = (d / "mosquitto.conf").read_text()
    assert [x for x in conf.splitlines() if x.startswith("listener")] == \
        [f"listener {broker.port} 127.0.0.1"]
    assert f"persistence_location {d}/" in conf and "allow_anonymous false" in conf
    assert "\nuser trigger\ntopic read na64/#\n" in (d / "acl").read_text()
    s = MqttSettings.from_file(broker.credentials_file("shift"))
    assert (s.host, s.port, s.username) == ("127.0.0.1", broker.port, "shift")
    assert local_credentials(broker.run_dir, "shift") == d / "shift.env"
    assert local_credentials(broker.run_dir, "nobody") is None
    env = broker.env()
    assert env["NA64_MQTT_URL"] == broker.url
    assert env["NA64_MQTT_RUNCONTROL_USERNAME"] == "runcontrol"
    assert env["NA64_MQTT_RUNCONTROL_PASSWORD"] == \
        MqttSettings.from_file(broker.credentials_file("runcontrol")).password.get_secret_value()
    assert {k for k in env if k.endswith("_USERNAME")} == \
        {f"NA64_MQTT_{u.upper()}_USERNAME" for u in SERVICES}  # no shift, no expert


@pytest.mark.mosquitto
@pytest.mark.asyncio
async def test_each_account_connects_and_the_acl_holds(broker: LocalBroker) -> None:
    for user in ACCOUNTS:
        async with client(MqttSettings.from_file(broker.credentials_file(user))) as c:
            await c.publish(f"na64/status/{user}" if user in SERVICES else "na64/run/cmd/x/"
                            + user, b"{}", qos=1)
            assert c.refused_publishes == 0, user
    shift = MqttSettings.from_file(broker.credentials_file("shift"))
    with pytest.raises(aiomqtt.MqttError):
        async with client(shift.model_copy(update={"password": SecretStr("wrong")})):
            pass
    async with client(shift) as c:
        await c.publish(f"{P.DESIRED}/shift", b"{}", qos=1)
        assert c.refused_publishes == 1 and "Not authorized" in c.last_refusal
    async with client(MqttSettings.from_file(broker.credentials_file("expert"))) as c:
        await c.publish(f"{P.DESIRED}/expert", b"{}", qos=1)
        assert c.refused_publishes == 0


@pytest.mark.mosquitto
@pytest.mark.asyncio
async def test_ctl_config_finds_the_broker(broker: LocalBroker, tmp_path: Path) -> None:
    topo, env = topology(tmp_path), bare_env()
    svc = RunControlService(MqttSettings.from_file(broker.credentials_file("runcontrol")),
                            StateStore(tmp_path / "state"), MemoryDataPath())
    async with svc:
        await asyncio.wait_for(svc.ready.wait(), 10)
        rc, out, err = await ctl(env, "--config", str(topo), "status")
        assert rc == 0 and "state idle" in out, err
        assert any(line.split() == ["runcontrol", "online", "(MQTT)"]
                   for line in out.splitlines()), out
        rc, out, err = await ctl(env, "--config", str(topo), "start")
        assert rc == 0 and "state=running" in out, err
        rc, out, err = await ctl(env, "--config", str(topo), "trigger", "set",
                                 "ecal_max_gev=70")  # as expert, the default for set
        assert rc == 0 and "pending=True" in out, err
        rc, _, err = await ctl(env, "--config", str(topo), "--as", "shift", "trigger", "set",
                               "ecal_max_gev=60")
        assert rc == 2 and "Not authorized" in err


@pytest.mark.mosquitto
def test_ctl_config_names_what_is_missing(broker: LocalBroker, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    topo = topology(tmp_path)
    assert cli_main(["ctl", "--config", str(topo), "--as", "mallory", "status"]) == 2
    err = capsys.readouterr().err
    assert "has no account 'mallory'" in err and "shift" in err and "runcontrol" in err
    broker.stop()
    assert cli_main(["ctl", "--config", str(topo), "status"]) == 2
    err = capsys.readouterr().err
    assert f"no broker of `na64daq up` found under {tmp_path / 'run' / 'mqtt'}" in err
    assert f"is `na64daq up --config {topo}` running?" in err


def test_ctl_config_without_any_broker(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    topo = topology(tmp_path)
    assert cli_main(["ctl", "--config", str(topo), "status"]) == 2
    assert "no broker of `na64daq up` found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: one way to name the broker
        cli_main(["ctl", "--config", str(topo), "--credentials", str(topo), "status"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert cli_main(["ctl", "--as", "expert", "status"]) == 2
    assert "--as" in capsys.readouterr().err
    named = topology(tmp_path, 'mqtt = "mqtt://127.0.0.1:1"\n')
    assert cli_main(["ctl", "--config", str(named), "--as", "expert", "status"]) == 2
    assert "NA64_MQTT_USERNAME" in capsys.readouterr().err


@pytest.mark.mosquitto
def test_stop_frees_the_port_and_a_restart_has_new_passwords(broker: LocalBroker) -> None:
    port, pid = broker.port, broker.pid
    old = broker.credentials_file("shift").read_text()
    with pytest.raises(LocalBrokerError) as e:  # one broker per run directory
        LocalBroker(run_dir=broker.run_dir).start()
    assert f"pid {pid}" in str(e.value)
    broker.stop()
    broker.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert port_free(port)
    assert not (broker.run_dir / "mqtt" / "broker.json").exists()
    assert local_credentials(broker.run_dir, "shift") is None
    with LocalBroker(run_dir=broker.run_dir, users=["shift", "runcontrol", "extra"]) as b2:
        assert b2.credentials_file("shift").read_text() != old
        assert b2.roles.users["extra"] == "service" and "NA64_MQTT_EXTRA_PASSWORD" in b2.env()
        assert not (b2.run_dir / "mqtt" / "expert.env").exists()  # not an account now
        assert local_credentials(b2.run_dir, "extra") is not None


@pytest.mark.mosquitto
def test_start_failures_name_binary_port_and_stderr(tmp_path: Path) -> None:
    require_binary("mosquitto_passwd")
    fake = tmp_path / "fake-mosquitto"
    fake.write_text("#!/bin/sh\necho 'Error: boom' >&2\nexit 3\n")
    fake.chmod(0o700)
    with pytest.raises(LocalBrokerError) as e:
        LocalBroker(run_dir=tmp_path / "run", binary=fake).start()
    assert (e.value.binary, e.value.stderr) == (str(fake), "Error: boom")
    assert f"{fake} on 127.0.0.1:{e.value.port} exited" in str(e.value)
    assert not (tmp_path / "run" / "mqtt" / "broker.json").exists()
    require_binary("mosquitto")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalBrokerError, match=f"port 127.0.0.1:{port} is in use"):
            LocalBroker(run_dir=tmp_path / "run", port=port).start()


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        LocalBroker(run_dir=tmp_path, binary=tmp_path / "absent").start()


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        LocalBroker(run_dir=tmp_path, host="0.0.0.0")
    with pytest.raises(ConfigError, match="port"):
        LocalBroker(run_dir=tmp_path, port=70000)
    with pytest.raises(ConfigError, match="distinct"):
        LocalBroker(run_dir=tmp_path, users=["shift", "shift"])
    with pytest.raises(ConfigError, match="user"):
        LocalBroker(run_dir=tmp_path).credentials_file("mallory")
    with pytest.raises(ConfigError, match="acl_file"):
        render_conf("listener 1883\n", host="127.0.0.1", port=1, directory=tmp_path,
                    user="me")
