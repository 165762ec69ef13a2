"""Reaching the broker: credentials from their files, TLS, the reconnect delay, the MQTT
version (5, or 3.1.1 where the broker refuses 5), and MQTT 5's request/response properties."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.config import credential_path
from daemon.config_mqtt import MqttSettings

V5, V311 = aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311
# CONNACK codes for "unsupported protocol version": 3.1.1's 1 and MQTT 5's 132.
PROTOCOL_REFUSED = (1, 132)
TCP_PROBE_S = 2.0


def first_protocol(settings: MqttSettings) -> aiomqtt.ProtocolVersion:
    return V311 if settings.protocol == "3.1.1" else V5


async def refuses_protocol(exc: BaseException, host: str, port: int) -> bool:
    """Whether a failed MQTT 5 connect means a broker that speaks only 3.1.1: a CONNACK that
    says so, or no CONNACK at all from a broker that does take TCP connections (amqtt, for
    one, never answers an MQTT 5 CONNECT that carries a will)."""
    if isinstance(exc, MqttConnectError):
        rc = getattr(exc, "rc", None)
        return getattr(rc, "value", rc) in PROTOCOL_REFUSED or "protocol version" in str(rc).lower()
    if not isinstance(exc, aiomqtt.MqttError) or "timed out" not in str(exc).lower():
        return False  # refused, reset, no route: the broker is away, not too old
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TCP_PROBE_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@dataclass(frozen=True)
class Reply:
    """Where an MQTT 5 request wants its answer: its response topic and correlation data."""

    topic: str
    correlation: bytes | None


class BadReply(ValueError):
    pass


def reply_address(properties: Any) -> Reply | None:
    """The request's response topic and correlation data (MQTT 5), None without one; a
    response topic we may not publish to (wildcards, empty) raises BadReply."""
    topic = getattr(properties, "ResponseTopic", None)
    if topic is None:
        return None
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise BadReply(f"response_topic {topic!r} is not a topic one can publish to")
    correlation = getattr(properties, "CorrelationData", None)
    return Reply(topic, bytes(correlation) if correlation is not None else None)


def payload_bytes(message: aiomqtt.Message) -> bytes:
    """A received message's payload as bytes (aiomqtt may hand over str, int or float)."""
    raw = message.payload
    return bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw).encode()


def publish_properties(correlation: bytes | None, response_topic: str | None = None) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if correlation is not None:
        properties.CorrelationData = correlation
    if response_topic is not None:
        properties.ResponseTopic = response_topic
    return properties


def read_password(settings: MqttSettings, config_path: Path) -> str | None:
    """The password from its file (first line); never logged."""
    if not settings.password_file:
        return None
    return credential_path(settings.password_file, config_path).read_text(encoding="utf-8").strip()


def tls_context(settings: MqttSettings, config_path: Path) -> ssl.SSLContext | None:
    """TLS with the broker's certificate and host name verified (unless tls_insecure)."""
    if not settings.tls:
        return None
    ca = credential_path(settings.ca_file, config_path) if settings.ca_file else None
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if settings.cert_file:
        context.load_cert_chain(
            str(credential_path(settings.cert_file, config_path)), str(credential_path(settings.key_file, config_path))
        )
    if settings.tls_insecure:
        context.check_hostname = False
    return context


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Full-jitter exponential backoff: uniform in [low, min(high, low * 2**attempt)]."""
    cap = min(high, low * 2 ** min(attempt, 30))
    return random.uniform(low, max(low, cap))
