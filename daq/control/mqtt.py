"""Run control's MQTT v5 helpers (request/reply properties, how commands are subscribed);
the settings, client and session every service shares are daq.mqtt."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions


def command_subscription() -> SubscribeOptions:
    """How run control subscribes to commands: QoS 1, retain-as-published (a retained
    command keeps its flag and is refused), no-local (not its own clearing publishes)."""
    return SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True)


def request_properties(response_topic: str, correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props


def reply_properties(correlation: bytes | None) -> Properties | None:
    if not correlation:
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = correlation
    return props


def response_of(props: Properties | None) -> tuple[str | None, bytes | None]:
    """(response topic, correlation data) of a received message, None where absent."""
    if props is None:
        return None, None
    return getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None)
