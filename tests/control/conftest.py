"""A real Mosquitto started with the project's deploy/mosquitto configuration.

Only the listener and the file paths are rewritten (into the test's temporary directory);
allow_anonymous, the ACL (the committed, generated file) and every other setting are the
deployed ones.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daq.control.broker import DEPLOY_DIR, create_password_file, plain_listener_only
from tests.conftest import require_binary, start_mosquitto, stop_pid

USERS = ("shift", "expert", "runcontrol", "builder", "monitor")


@dataclass
class SecureBroker:
    host: str
    port: int
    pid: int
    workdir: Path
    passwords: dict[str, str]

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def deployed_conf_body(workdir: Path) -> str:
    """deploy/mosquitto/mosquitto.conf with listener, persistence and paths moved to `workdir`.

    start_mosquitto writes its own listener (free port), persistence and log lines. Run as
    root (containers), mosquitto would drop to the `mosquitto` user, which cannot read
    pytest's private temporary directory: `user` keeps it as whoever runs the tests.
    """
    out = [f"user {getpass.getuser()}"]
    for line in plain_listener_only((DEPLOY_DIR / "mosquitto.conf").read_text()).splitlines():
        key = line.split(" ", 1)[0]
        if key in {"listener", "persistence", "persistence_location", "autosave_interval",
                   "log_dest", "log_type"}:
            continue
        line = re.sub(r"^password_file .*", f"password_file {workdir / 'passwd'}", line)
        line = re.sub(r"^acl_file .*", f"acl_file {workdir / 'acl'}", line)
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    require_binary("mosquitto_passwd")
    passwords = {u: secrets.token_urlsafe(12) for u in USERS}
    create_password_file(tmp_path / "passwd", passwords)
    (tmp_path / "acl").write_text((DEPLOY_DIR / "acl").read_text())
    proc, port = start_mosquitto(tmp_path, deployed_conf_body(tmp_path))
    try:
        yield SecureBroker("127.0.0.1", port, proc.pid, tmp_path, passwords)
    finally:
        stop_pid(proc)


def env_for(b: SecureBroker, user: str) -> dict[str, str]:
    return {**os.environ, "NA64_MQTT_URL": b.url, "NA64_MQTT_USERNAME": user,
            "NA64_MQTT_PASSWORD": b.passwords[user]}


async def ctl(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daq.cli", "ctl", "--timeout", "2", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
