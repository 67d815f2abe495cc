"""One MQTT session module for every service that talks to the broker (run control, the
monitor, `ctl`): settings and credentials, the MQTT v5 client, and `Session`, a service's
presence on the broker (last will, "online"/"offline" status documents, reconnection with
randomised exponential backoff).

Credentials come from the environment (NA64_MQTT_URL, NA64_MQTT_USERNAME,
NA64_MQTT_PASSWORD, and for an mqtts:// URL NA64_MQTT_CA, the CA file that signed the
broker's certificate; without it the system's trusted CAs) or from a file of such
KEY=VALUE lines that only its owner can read; never from a command-line argument, which
would end up in shell history and `ps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import ssl
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import MQTTv5
from pydantic import Field, SecretStr

from daq.config import StrictModel
from daq.errors import ConfigError

log = logging.getLogger("na64.mqtt")

ENV_URL = "NA64_MQTT_URL"
ENV_USER = "NA64_MQTT_USERNAME"
ENV_PASSWORD = "NA64_MQTT_PASSWORD"
ENV_CA = "NA64_MQTT_CA"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class MqttSettings(StrictModel):
    """Where the broker is and who we are on it."""

    host: str = Field(default="127.0.0.1", min_length=1, max_length=253,
                      description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.")
    username: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
        description="Broker account; also the `who` of requests. None: anonymous (a "
        "development broker); run control and `ctl` need an account.")
    password: SecretStr | None = Field(default=None,
                                       description="Password of the account (never logged).")
    timeout: float = Field(default=5.0, gt=0.0, le=120.0,
                           description="Seconds to wait for the broker or a reply.")
    tls: bool = Field(default=False, description=(
        "Connect with TLS (an mqtts:// URL) and verify the broker's certificate and name."))
    ca: Path | None = Field(default=None, description=(
        "CA certificate file (PEM) the broker's certificate must chain to; None: the "
        "system's trusted CAs. Only with tls."))

    def account(self) -> str:
        """The account name; ConfigError when there is none (run control and `ctl` act
        for a user: the ACL and the audit trail name it)."""
        if self.username is None:
            raise ConfigError(ENV_USER, None, "set: run control and ctl need a broker account")
        return self.username

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        """The verifying TLS context (hostname checked), or None for plain mqtt://."""
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(ENV_CA, str(self.ca), f"a readable PEM CA file ({e})") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], *, source: str) -> MqttSettings:
        url = values.get(ENV_URL, "mqtt://127.0.0.1:1883")
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ConfigError(ENV_URL, url, "an mqtt://HOST[:PORT] or mqtts://HOST[:PORT] URL")
        ca = values.get(ENV_CA) or None
        if ca and parts.scheme != "mqtts":
            raise ConfigError(ENV_CA, ca, f"set only with an mqtts:// {ENV_URL}")
        if parts.username or parts.password:
            raise ConfigError(ENV_URL, "<hidden>", f"no credentials in the URL; use {ENV_USER} "
                              f"and {ENV_PASSWORD}")
        for key in (ENV_USER, ENV_PASSWORD):
            if not values.get(key):
                raise ConfigError(key, None, f"set in {source}")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ConfigError(ENV_URL, url, "a port between 1 and 65535") from None
        return cls.parse({"host": parts.hostname, "port": port,
                          "username": values[ENV_USER], "password": values[ENV_PASSWORD],
                          "tls": parts.scheme == "mqtts", "ca": ca})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MqttSettings:
        return cls.from_mapping(os.environ if env is None else env, source="the environment")

    @classmethod
    def from_file(cls, path: Path) -> MqttSettings:
        """Read KEY=VALUE lines; refuse a file that others than its owner may read."""
        try:
            st = os.stat(path)
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError("credentials", str(path), f"a readable file ({e.strerror})") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError("credentials", str(path),
                              f"mode {stat.S_IMODE(st.st_mode):o} lets others read it; chmod 600")
        values = {}
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, sep, val = line.partition("=")
                if not sep:
                    raise ConfigError("credentials", line.split()[0], "KEY=VALUE lines")
                values[key.strip()] = val.strip()
        return cls.from_mapping(values, source=str(path))


class Client(aiomqtt.Client):
    """aiomqtt's client, also counting publishes the broker refused (MQTT v5 PUBACK code).

    Mosquitto answers a QoS 1 publish its ACL forbids with PUBACK "Not authorized" and
    drops it; aiomqtt ignores that code, so a refused request would look like a silent
    service. This hooks aiomqtt's (private, stable across 2.x) `_on_publish` callback.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused_publishes = 0
        self.last_refusal = ""

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self.refused_publishes += 1
            self.last_refusal = str(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)


def client(settings: MqttSettings, *, identifier: str | None = None,
           will: aiomqtt.Will | None = None) -> Client:
    """An MQTT v5 client for `settings` (enter it with `async with`)."""
    return Client(
        settings.host, settings.port, username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        # unguessable by default: Mosquitto hands a session to whoever connects with its
        # id, so a predictable id could be taken over by any account (docs/control.md)
        identifier=identifier or f"{settings.username or 'na64'}-{uuid.uuid4().hex}",
        protocol=aiomqtt.ProtocolVersion(MQTTv5), will=will, timeout=settings.timeout,
        tls_context=settings.tls_context(),
        # small request/reply messages: without TCP_NODELAY (here and in the broker's
        # set_tcp_nodelay) every QoS 1 exchange waits ~40 ms for a delayed ACK
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))


def status_payload(service: str, status: str, when: float) -> bytes:
    """The retained `na64/status/<service>` document ("online" / "offline")."""
    return json.dumps({"service": service, "status": status, "when": when},
                      sort_keys=True).encode()


def offline_will(service: str, when: float) -> aiomqtt.Will:
    """The last will every service registers: its status becomes "offline" (retained)."""
    return aiomqtt.Will(f"na64/status/{service}", status_payload(service, "offline", when),
                        qos=1, retain=True)



def status_topic(service: str) -> str:
    return f"na64/status/{service}"


OnClient = Callable[[Client], Awaitable[None]]


class Session:
    """One service's presence on the broker for as long as it runs.

        session = Session(settings, "monitor", stopping=svc.stopping)
        await session.run(body, prepare=subscribe)   # returns once stopping and done

    Each connection: an MQTT v5 client with an unguessable id and a last will that says
    "offline" (retained on `na64/status/<service>`); `prepare(client)` (subscriptions,
    retained state: everything a client that sees "online" may rely on); "online";
    `body(client)` until it returns. A body that returns while the service is stopping ends
    the session with "offline"; a lost or refused connection is counted (`reconnects`),
    logged, `on_lost(error)` is called, and the session reconnects after a randomised
    exponential backoff (`backoff`: first and longest delay, s) until the service stops.
    """

    def __init__(self, settings: MqttSettings, service: str, *, stopping: asyncio.Event,
                 clock: Callable[[], float] = time.time,
                 backoff: tuple[float, float] = (0.1, 10.0),
                 on_lost: Callable[[Exception], None] | None = None) -> None:
        self.settings = settings
        self.service = service
        self.stopping = stopping
        self.clock = clock
        self.backoff = backoff
        self.on_lost = on_lost
        self.topic = status_topic(service)
        self.reconnects = 0
        #: the connected client, None between connections
        self.client: Client | None = None

    def status(self, status: str) -> bytes:
        return status_payload(self.service, status, self.clock())

    async def run(self, body: OnClient, *, prepare: OnClient | None = None) -> None:
        delay = self.backoff[0]
        while not self.stopping.is_set():
            try:
                async with client(self.settings, will=offline_will(self.service,
                                                                   self.clock())) as c:
                    self.client = c
                    if prepare is not None:
                        await prepare(c)
                    await c.publish(self.topic, self.status("online"), qos=1, retain=True)
                    delay = self.backoff[0]
                    await body(c)
                    if self.stopping.is_set():
                        await c.publish(self.topic, self.status("offline"), qos=1,
                                        retain=True)
                        return
            except aiomqtt.MqttError as e:
                self.reconnects += 1
                if self.on_lost is not None:
                    self.on_lost(e)
                if self.stopping.is_set():
                    return
                log.warning("%s: broker connection lost or refused (%s); retrying in "
                            "%.1f s", self.service, e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(),
                                           delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.backoff[1])
            finally:
                self.client = None
