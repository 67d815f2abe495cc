"""`na64daq ctl` and `python -m daq.control.service` as processes, against the deployed broker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from daq.control import protocol as P
from daq.control.client import ControlClient
from daq.errors import ConfigError
from daq.mqtt import MqttSettings
from tests.control.conftest import SecureBroker, ctl, env_for

pytestmark = pytest.mark.mosquitto


def creds_file(b: SecureBroker, user: str, path: Path, mode: int = 0o600) -> Path:
    path.write_text(f"# broker\nNA64_MQTT_URL={b.url}\nNA64_MQTT_USERNAME={user}\n"
                    f"NA64_MQTT_PASSWORD={b.passwords[user]}\n")
    path.chmod(mode)
    return path


def test_credentials_come_from_env_or_a_private_file(secure_broker: SecureBroker,
                                                     tmp_path: Path) -> None:
    s = MqttSettings.from_env(env_for(secure_broker, "shift"))
    assert (s.host, s.port, s.username) == ("127.0.0.1", secure_broker.port, "shift")
    assert secure_broker.passwords["shift"] not in repr(s)
    f = MqttSettings.from_file(creds_file(secure_broker, "expert", tmp_path / "c"))
    assert f.username == "expert"
    with pytest.raises(ConfigError) as e:
        MqttSettings.from_file(creds_file(secure_broker, "expert", tmp_path / "o", 0o644))
    assert "chmod 600" in str(e.value)
    with pytest.raises(ConfigError):
        MqttSettings.from_env({"NA64_MQTT_URL": "mqtt://u:pw@host:1883",
                               "NA64_MQTT_USERNAME": "u", "NA64_MQTT_PASSWORD": "pw"})


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.multiprocess
async def test_cli_drives_the_service_process(secure_broker: SecureBroker,
                                              tmp_path: Path) -> None:
    b = secure_broker
    svc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daq.control.service", "--state-dir", str(tmp_path / "state"),
        "--credentials", str(creds_file(b, "runcontrol", tmp_path / "svc")),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        shift, expert = env_for(b, "shift"), env_for(b, "expert")
        for _ in range(100):
            rc, out, _ = await ctl(shift, "--json", "status")
            if rc == 0 and json.loads(out)["services"].get("runcontrol", {}).get(
                    "status") == "online":
                break
            await asyncio.sleep(0.1)
        rc, out, err = await ctl(shift, "start", "--comment", "from the CLI")
        assert rc == 0 and "state=running" in out and "run=1" in out, err
        rc, out, err = await ctl(shift, "start")
        assert rc == 1 and "refused (state)" in err
        rc, out, err = await ctl(shift, "trigger", "set", "ecal_max_gev=50")
        assert rc == 2 and "refused" in err and "Not authorized" in err
        rc, out, err = await ctl(expert, "trigger", "set", "ecal_max_gev=88", "--comment",
                                 "lower")
        assert rc == 0 and "pending=True" in out, err
        rc, out, _ = await ctl(expert, "trigger", "history")
        assert rc == 0 and "requested" in out and "expert" in out
        # when, readable: an ISO date and time in UTC, not seconds since 1970
        assert re.search(r"^20\d\d-\d\d-\d\d \d\d:\d\d:\d\dZ requested +expert: version",
                         out, re.M), out
        rc, out, _ = await ctl(shift, "status")
        assert rc == 0 and "state running" in out and "runcontrol" in out
        bad = {**shift, "NA64_MQTT_PASSWORD": "wrong"}
        rc, _, err = await ctl(bad, "status")
        assert rc == 2 and "cannot connect" in err
    finally:
        # SIGKILL: no clean disconnect, so the broker publishes the service's will
        os.kill(svc.pid, signal.SIGKILL)
        await svc.wait()
    async with ControlClient(MqttSettings.from_env(env_for(b, "shift"))) as c:
        st = await c.retained(f"{P.STATUS}/runcontrol")
        assert st[f"{P.STATUS}/runcontrol"]["status"] == "offline"
