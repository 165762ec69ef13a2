"""MQTT 5 against a running daemon: commands answered on their response topic with their
correlation data (paho-mqtt as an MQTT 5 client, a real Mosquitto), and the fall back to
3.1.1 on a broker that refuses 5 (amqtt, which speaks only 3.1.1)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers import Daemon, Mosquitto, free_port, wait_for_port, wait_until, write_config


class Client5:
    """A paho MQTT 5 client that records (topic, payload, correlation data)."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[str, dict[str, object], bytes | None]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self.cond:
            self.messages.append((msg.topic, json.loads(msg.payload), correlation))
            self.cond.notify_all()

    def request(self, topic: str, command: dict[str, object], reply_to: str, correlation: bytes | None) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = reply_to
        if correlation is not None:
            properties.CorrelationData = correlation
        self.client.publish(topic, json.dumps(command), qos=1, properties=properties).wait_for_publish(10)

    def answers(self, transaction: str, count: int = 1) -> list[tuple[str, dict[str, object], bytes | None]]:
        def mine() -> list[tuple[str, dict[str, object], bytes | None]]:
            return [m for m in self.messages if m[1].get("transaction") == transaction]

        return wait_until(self.cond, mine, count, 30, f"answers to {transaction}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def no_rooms() -> str:
    """A daemon without rooms must serve some door: Wyoming, on a free port."""
    return f"[wyoming]\nenabled = true\nport = {free_port()}\n"


@pytest.fixture
def daemon5(tmp_path: Path) -> Iterator[tuple[Daemon, Client5, str]]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(write_config(tmp_path / "c.toml", broker.port, prefix, "", no_rooms()))
    client = Client5(broker.port, [f"{prefix}/response", "replies/#"])
    try:
        daemon.wait_log("mqtt connected", timeout_s=120)
        yield daemon, client, prefix
        assert daemon.terminate() == 0
    finally:
        client.close()
        daemon.kill()
        broker.stop()


def test_a_command_is_answered_on_its_response_topic(daemon5: tuple[Daemon, Client5, str]) -> None:
    daemon, client, prefix = daemon5
    assert daemon.events("mqtt connected")[0]["mqtt"] == "5"
    correlation = b"\x00\xffreq-1"
    client.request(f"{prefix}/set", {"command": "status", "transaction": "a"}, "replies/me", correlation)
    [(topic, answer, got)] = client.answers("a")
    assert topic == "replies/me" and answer["status"] == "ok" and got == correlation
    # Without correlation data, still to the response topic; an error answer too.
    client.request(f"{prefix}/nowhere/set", {"command": "pause", "transaction": "b"}, "replies/other", None)
    [(topic, answer, got)] = client.answers("b")
    assert topic == "replies/other" and answer["status"] == "error" and "no room" in str(answer["error"])
    assert got is None


def test_a_bad_response_topic_is_answered_on_the_response_topic_of_the_contract(
    daemon5: tuple[Daemon, Client5, str],
) -> None:
    _, client, prefix = daemon5
    client.request(f"{prefix}/set", {"command": "status", "transaction": "c"}, "replies/+/x", b"id")
    [(topic, answer, _)] = client.answers("c")
    assert topic == f"{prefix}/response" and answer["status"] == "error"
    assert "response_topic" in str(answer["error"])
    # The connection survived (a publish to a wildcard topic would have cost it): a good one works.
    client.request(f"{prefix}/set", {"command": "status", "transaction": "d"}, "replies/me", b"id2")
    assert client.answers("d")[0][0] == "replies/me"


AMQTT = """
import asyncio, sys
from amqtt.broker import Broker
async def main():
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:%s" % sys.argv[1]}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


def test_a_broker_without_mqtt5_gets_3_1_1(tmp_path: Path) -> None:
    port = free_port()
    broker = subprocess.Popen([sys.executable, "-c", AMQTT, str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout_s=30)
        prefix = f"rs-{uuid.uuid4().hex[:8]}"
        daemon = Daemon(write_config(tmp_path / "c.toml", port, prefix, "", no_rooms()))
        try:
            connected = daemon.wait_log("mqtt connected", timeout_s=120)[0]
            assert connected["mqtt"] == "3.1.1"
            assert daemon.events("broker refused MQTT 5: connecting with 3.1.1")
            assert daemon.terminate() == 0
        finally:
            daemon.kill()
    finally:
        broker.kill()
        broker.wait()
