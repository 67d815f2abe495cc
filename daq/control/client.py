"""What `na64daq ctl` uses: send requests and read retained state over MQTT v5.

    async with ControlClient(settings) as ctl:
        reply = await ctl.run("start", params={"comment": "calibration"})
        reply = await ctl.trigger_set(["ecal_max_gev=85"])
        state = await ctl.retained(protocol.RUN_STATE)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from types import TracebackType
from typing import Any, Self

import aiomqtt

from daq.control import protocol as P
from daq.control.mqtt import request_properties, response_of
from daq.errors import DaqError
from daq.mqtt import MqttSettings, client


class ControlError(DaqError):
    """A request got no reply, or the broker connection failed."""


class RefusedError(ControlError):
    """The broker's ACL refused a request: the user's role may not send it."""


class ControlClient:
    """One connection to the broker, a private reply topic, and a reader dispatching replies."""

    def __init__(self, settings: MqttSettings, *, timeout: float | None = None) -> None:
        self.settings = settings
        self.user = settings.account()
        self.timeout = settings.timeout if timeout is None else timeout
        self.client_id = f"ctl-{uuid.uuid4().hex}"
        # the reply topic is seen by others (services read na64/#): its last level is not
        # the client id, which would let them take this session over
        self.reply_topic = P.reply_topic(self.user, uuid.uuid4().hex[:12])
        self._mqtt = client(settings, identifier=self.client_id)
        self._replies: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._retained: dict[str, Any] = {}
        self._arrived = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        try:
            await self._mqtt.__aenter__()
        except aiomqtt.MqttError as e:
            raise ControlError(f"cannot connect to {self.settings.host}:{self.settings.port} as "
                               f"{self.user}: {e}") from None
        self._reader = asyncio.create_task(self._read(), name="ctl.reader")
        await self._mqtt.subscribe(self.reply_topic, qos=1)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        await self._mqtt.__aexit__(et, e, tb)

    async def _read(self) -> None:
        async for msg in self._mqtt.messages:
            payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else b""
            try:
                body = json.loads(payload) if payload else None
            except ValueError:
                body = {"unparseable": bytes(payload).decode(errors="replace")}
            topic = str(msg.topic)
            if topic == self.reply_topic:
                _, corr = response_of(msg.properties)
                fut = self._replies.pop(corr or b"", None)
                if fut is not None and not fut.done():
                    fut.set_result(body if isinstance(body, dict) else
                                   {"ok": False, "error": P.MALFORMED, "reason": "bad reply"})
                continue
            async with self._arrived:
                self._retained[topic] = body
                self._arrived.notify_all()

    async def request(self, topic: str, body: dict[str, Any]) -> dict[str, Any]:
        """Publish a request (QoS 1, not retained) and wait for its reply."""
        rid = body.setdefault("id", uuid.uuid4().hex)
        return await self.request_raw(topic, P.dumps(body), correlation=str(rid).encode())

    async def request_raw(self, topic: str, payload: bytes, *,
                          correlation: bytes | None = None) -> dict[str, Any]:
        """Publish `payload` as it is (diagnostics, tests of refusals) and wait for the reply."""
        corr = correlation or uuid.uuid4().hex.encode()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[corr] = fut
        refused = self._mqtt.refused_publishes
        await self._mqtt.publish(topic, payload, qos=1, retain=False,
                                 properties=request_properties(self.reply_topic, corr))
        if self._mqtt.refused_publishes > refused:
            self._replies.pop(corr, None)
            raise RefusedError(f"the broker refused {topic} for user {self.user}: "
                               f"{self._mqtt.last_refusal} (not allowed for this role)")
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            raise ControlError(
                f"no reply to {topic} within {self.timeout:g} s: run control is not running, "
                f"or the broker refused the request (may {self.user} send it?)"
            ) from None
        finally:
            self._replies.pop(corr, None)

    async def run(self, verb: str, *, params: dict[str, Any] | None = None,
                  reason: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": request_id or uuid.uuid4().hex}
        if params is not None:
            body["params"] = params
        if reason is not None:
            body["reason"] = reason
        return await self.request(P.run_topic(verb, self.user), body)

    async def trigger_set(self, overrides: list[str], *, comment: str = "") -> dict[str, Any]:
        body = {"set": overrides, "comment": comment}
        return await self.request(P.user_topic(P.DESIRED, self.user), body)

    async def retained(self, topic_filter: str, *, wait: float = 0.5) -> dict[str, Any]:
        """Retained messages on `topic_filter`: {topic: document}; waits `wait` s for them."""
        await self._mqtt.subscribe(topic_filter, qos=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        matches: dict[str, Any] = {}
        while (left := deadline - loop.time()) > 0:
            async with self._arrived:
                matches = {t: b for t, b in self._retained.items()
                           if aiomqtt.Topic(t).matches(topic_filter)}
                if matches and "+" not in topic_filter and "#" not in topic_filter:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
        await self._mqtt.unsubscribe(topic_filter)
        return matches

    async def follow(self, *topic_filters: str) -> None:
        """Subscribe for good: `seen(filter)` then returns what arrived so far, newest."""
        for f in topic_filters:
            await self._mqtt.subscribe(f, qos=1)

    def seen(self, topic_filter: str) -> dict[str, Any]:
        """{topic: document} of what arrived on `topic_filter` (after `follow`)."""
        return {t: b for t, b in self._retained.items()
                if aiomqtt.Topic(t).matches(topic_filter)}

    async def status(self) -> dict[str, Any]:
        state = await self.retained(P.RUN_STATE)
        services = await self.retained(f"{P.STATUS}/+", wait=0.3)
        daq = await self.retained(f"{P.SERVICES}/+", wait=0.3)
        return {"run": state.get(P.RUN_STATE),
                "services": {t.rsplit("/", 1)[-1]: b for t, b in services.items()},
                "daq": {t.rsplit("/", 1)[-1]: b for t, b in daq.items()}}

    async def trigger(self) -> dict[str, Any]:
        active = await self.retained(P.ACTIVE)
        desired = await self.retained(P.DESIRED, wait=0.2)
        return {"active": active.get(P.ACTIVE), "desired": desired.get(P.DESIRED)}

    async def history(self) -> list[dict[str, Any]]:
        got = await self.retained(P.HISTORY)
        return list(got.get(P.HISTORY) or [])
