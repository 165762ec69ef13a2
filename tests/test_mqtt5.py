"""MQTT 5 against a running daemon: commands answered on their response topic with their
correlation data (paho-mqtt as an MQTT 5 client, a real Mosquitto), and the fall back to
3.1.1 on a broker that refuses 5 (amqtt, which speaks only 3.1.1)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, Mosquitto, Mqtt5Client, Received, free_port, wait_for_port, write_config


def answers(client: Mqtt5Client, transaction: str, count: int = 1) -> list[Received]:
    def mine() -> list[Received]:
        return [m for m in client.messages if m[1].get("transaction") == transaction]

    return client.wait(mine, count, f"answers to {transaction}", timeout_s=30)


def ask(client: Mqtt5Client, topic: str, command: dict[str, object], reply_to: str, correlation: bytes | None) -> None:
    client.request(topic, json.dumps(command).encode(), reply_to, correlation)


def no_rooms() -> str:
    """A daemon without rooms must serve some door: Wyoming, on a free port."""
    return f"[wyoming]\nenabled = true\nport = {free_port()}\n"


@pytest.fixture
def daemon5(tmp_path: Path) -> Iterator[tuple[Daemon, Mqtt5Client, str]]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(write_config(tmp_path / "c.toml", broker.port, prefix, "", no_rooms()))
    client = Mqtt5Client(broker.port, [f"{prefix}/response", "replies/#"])
    try:
        daemon.wait_log("mqtt connected", timeout_s=120)
        yield daemon, client, prefix
        assert daemon.terminate() == 0
    finally:
        client.close()
        daemon.kill()
        broker.stop()


def test_a_command_is_answered_on_its_response_topic(daemon5: tuple[Daemon, Mqtt5Client, str]) -> None:
    daemon, client, prefix = daemon5
    assert daemon.events("mqtt connected")[0]["mqtt"] == "5"
    correlation = b"\x00\xffreq-1"
    ask(client, f"{prefix}/set", {"command": "status", "transaction": "a"}, "replies/me", correlation)
    [(topic, answer, got)] = answers(client, "a")
    assert topic == "replies/me" and answer["status"] == "ok" and got == correlation
    # Without correlation data, still to the response topic; an error answer too.
    ask(client, f"{prefix}/nowhere/set", {"command": "pause", "transaction": "b"}, "replies/other", None)
    [(topic, answer, got)] = answers(client, "b")
    assert topic == "replies/other" and answer["status"] == "error" and "no room" in str(answer["error"])
    assert got is None


def test_a_bad_response_topic_is_answered_on_the_response_topic_of_the_contract(
    daemon5: tuple[Daemon, Mqtt5Client, str],
) -> None:
    _, client, prefix = daemon5
    ask(client, f"{prefix}/set", {"command": "status", "transaction": "c"}, "replies/+/x", b"id")
    [(topic, answer, _)] = answers(client, "c")
    assert topic == f"{prefix}/response" and answer["status"] == "error"
    assert "response_topic" in str(answer["error"])
    # The connection survived (a publish to a wildcard topic would have cost it): a good one works.
    ask(client, f"{prefix}/set", {"command": "status", "transaction": "d"}, "replies/me", b"id2")
    assert answers(client, "d")[0][0] == "replies/me"


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
