"""`na64daq broker init` output run by a real Mosquitto: TLS verified, plain only on loopback."""

from __future__ import annotations

import getpass
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from daq.control.brokerinit import BrokerSetup, init_broker
from daq.errors import ConfigError
from daq.mqtt import MqttSettings, client
from tests.conftest import free_tcp_port, require_binary, stop_pid, wait_for_port

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[BrokerSetup]:
    binary = require_binary("mosquitto")
    require_binary("openssl")
    setup = init_broker(tmp_path / "broker", hosts=["localhost", "127.0.0.1"],
                        port=free_tcp_port(), local_port=free_tcp_port())
    conf = setup.directory / "mosquitto.conf"
    # run as root (containers) mosquitto would drop to `mosquitto`, who cannot read tmp_path
    conf.write_text(f"user {getpass.getuser()}\n" + conf.read_text())
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_port(int(setup.url.rsplit(":", 1)[1]))
        yield setup
    finally:
        stop_pid(proc)


def test_init_writes_private_files(tls_broker: BrokerSetup) -> None:
    d = tls_broker.directory
    for private in (d / "passwd", d / "server.key", d / "ca.key", *tls_broker.accounts.values()):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    s = MqttSettings.from_file(tls_broker.accounts["shift"])
    assert s.tls and s.ca == d / "ca.crt" and s.url == tls_broker.url
    conf = (d / "mosquitto.conf").read_text()
    assert "\nlistener " in conf and "127.0.0.1\n" in conf and f"certfile {d}/server.crt" in conf


# paho leaves the socket of a failed TLS handshake for the garbage collector (unclosed
# SSLSocket): a library leak on a refused connection, not one of ours
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.asyncio
async def test_tls_connects_with_the_ca_and_not_without(tls_broker: BrokerSetup,
                                                        tmp_path: Path) -> None:
    s = MqttSettings.from_file(tls_broker.accounts["runcontrol"])
    async with client(s) as c:
        await c.publish("na64/status/runcontrol", b"{}", qos=1)
        assert c.refused_publishes == 0
    other = init_broker(tmp_path / "other", hosts=["localhost"])
    with pytest.raises(aiomqtt.MqttError):
        async with client(s.model_copy(update={"ca": other.ca})):
            pass
    with pytest.raises(aiomqtt.MqttError):  # the system's CAs do not know this one
        async with client(s.model_copy(update={"ca": None})):
            pass
    with pytest.raises(aiomqtt.MqttError):  # plain MQTT on the TLS port
        async with client(s.model_copy(update={"tls": False, "ca": None})):
            pass


def test_passwd_command_leaves_600(tmp_path: Path) -> None:
    require_binary("mosquitto_passwd")
    from daq.control.broker import set_password

    set_password(tmp_path / "passwd", "shift", "a-password")
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600


def test_mqtts_urls() -> None:
    base = {"NA64_MQTT_USERNAME": "u", "NA64_MQTT_PASSWORD": "p"}
    s = MqttSettings.from_mapping({**base, "NA64_MQTT_URL": "mqtts://broker"}, source="t")
    assert (s.tls, s.port, s.ca) == (True, 8883, None)
    with pytest.raises(ConfigError):
        MqttSettings.from_mapping({**base, "NA64_MQTT_URL": "mqtt://b", "NA64_MQTT_CA": "x"},
                                  source="t")


def test_cli_prints_accounts(tmp_path: Path) -> None:
    require_binary("openssl")
    out = subprocess.run([sys.executable, "-m", "daq.cli", "broker", "init", str(tmp_path / "b"),
                          "--host", "localhost"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "mqtts://localhost:8883" in out and str(tmp_path / "b" / "accounts" / "shift.env") in out
