"""The deployed Mosquitto configuration: ACL in step with roles, bad clients refused."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest
from paho.mqtt.client import MQTTv5

from daq.control.broker import DEPLOY_DIR, load_roles, render_acl
from tests.control.conftest import SecureBroker

pytestmark = pytest.mark.mosquitto


def test_committed_acl_is_generated_from_roles() -> None:
    assert (DEPLOY_DIR / "acl").read_text() == render_acl(load_roles())


def test_conf_refuses_anonymous() -> None:
    text = (DEPLOY_DIR / "mosquitto.conf").read_text()
    assert "\nallow_anonymous false\n" in text
    assert "password_file" in text and "acl_file" in text


async def _connect(b: SecureBroker, user: str | None, password: str | None) -> None:
    async with aiomqtt.Client(b.host, b.port, username=user, password=password,
                              protocol=aiomqtt.ProtocolVersion(MQTTv5), timeout=5) as c:
        await c.publish("na64/run/state", b"x", qos=1)


@pytest.mark.asyncio
@pytest.mark.parametrize("who", ["anonymous", "wrong-password", "unknown-user"])
async def test_refused_clients(secure_broker: SecureBroker, who: str) -> None:
    user, pw = {"anonymous": (None, None),
                "wrong-password": ("shift", "not-the-password"),
                "unknown-user": ("mallory", "whatever")}[who]
    with pytest.raises(aiomqtt.MqttError) as e:
        await _connect(secure_broker, user, pw)
    assert "authori" in str(e.value).lower() or "password" in str(e.value).lower()


@pytest.mark.asyncio
async def test_known_user_connects(secure_broker: SecureBroker) -> None:
    await asyncio.wait_for(
        _connect(secure_broker, "runcontrol", secure_broker.passwords["runcontrol"]), 10)
