"""Issue 20: identities that cannot be borrowed, over the deployed broker configuration.

Each case of the issue is a refusal here: a retained command, a reused request id, a
service account writing what only run control writes, a borrowed client id.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from daq.control import protocol as P
from daq.control.client import ControlClient
from daq.control.core import RunControl
from daq.control.datapath import MemoryDataPath
from daq.control.mqtt import command_subscription
from daq.control.state import ControlState
from daq.mqtt import MqttSettings, client
from tests.control.conftest import SecureBroker
from tests.control.test_service import eventually, running, settings

ONLY_RUNCONTROL = (P.ACTIVE, P.DESIRED, P.RUN_STATE, f"{P.SERVICES}/builder", P.HISTORY,
                   P.AUDIT)


def _req(user: str, verb: str, rid: str) -> P.Request:
    return P.parse(P.run_topic(verb, user), json.dumps({"id": rid}).encode())


def test_request_id_reused_by_another_user_or_verb_is_a_new_request() -> None:
    core = RunControl(ControlState(), clock=lambda: 1.0)
    first = core.commit(core.plan(_req("shift", "configure", "x1")))
    assert core.plan(_req("shift", "configure", "x1")).duplicate_reply == first
    assert core.plan(_req("expert", "configure", "x1")).duplicate_reply is None
    assert core.plan(_req("shift", "start", "x1")).duplicate_reply is None


@pytest.mark.mosquitto
@pytest.mark.asyncio
@pytest.mark.parametrize("user", ["monitor", "builder", "shift", "expert"])
@pytest.mark.parametrize("topic", ONLY_RUNCONTROL)
async def test_only_runcontrol_writes_what_it_applies(secure_broker: SecureBroker, user: str,
                                                      topic: str) -> None:
    async with client(settings(secure_broker, user)) as c:
        await c.publish(topic, b'{"forged": true}', qos=1, retain=True)
        assert c.refused_publishes == 1, f"{user} may write {topic}"
    async with client(settings(secure_broker, "runcontrol")) as c:
        await c.publish(topic, b"{}", qos=1, retain=True)
        assert c.refused_publishes == 0


@pytest.mark.mosquitto
@pytest.mark.asyncio
async def test_retained_command_is_refused_and_cleared(secure_broker: SecureBroker,
                                                       tmp_path: Path) -> None:
    dp = MemoryDataPath()
    async with running(secure_broker, tmp_path / "state", dp) as svc, \
            client(settings(secure_broker, "shift")) as shift:
        topic = P.run_topic("start", "shift")
        await shift.publish(topic, P.dumps({"id": "retained-1"}), qos=1, retain=True)
        assert await eventually(lambda: _async(svc.refused("run", P.MALFORMED) == 1))
        assert dp.run is None and svc.core.state.state.value == "idle"
        # and it is gone from the broker: a new subscriber gets no retained message
        async with client(settings(secure_broker, "runcontrol")) as rc:
            await rc.subscribe(topic, options=command_subscription())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(aiter(rc.messages)), 0.5)
    assert svc.refused("run", "ok") == 0


async def _async(v: bool) -> bool:
    return v


@pytest.mark.mosquitto
@pytest.mark.asyncio
async def test_another_account_cannot_take_over_run_control(secure_broker: SecureBroker,
                                                            tmp_path: Path) -> None:
    """The old fixed id `runcontrol-runcontrol` no longer names run control's session."""
    dp = MemoryDataPath()
    async with running(secure_broker, tmp_path / "state", dp) as svc:
        async with client(settings(secure_broker, "monitor"),
                          identifier="runcontrol-runcontrol"):
            await asyncio.sleep(0.3)
        assert svc.ready.is_set() and svc._reconnects._value.get() == 0
        async with ControlClient(settings(secure_broker, "shift")) as ctl, \
                ControlClient(settings(secure_broker, "shift")) as ctl2:
            # two sessions of one account (up's own and a human's) both work
            assert (await ctl.run("configure"))["ok"]
            assert (await ctl2.run("configure"))["ok"]


@pytest.mark.asyncio
async def test_client_ids_are_unguessable() -> None:
    s = MqttSettings.parse({"username": "shift", "password": "x"})
    a, b = client(s), client(s)
    assert a.identifier != b.identifier and len(a.identifier) > 30
