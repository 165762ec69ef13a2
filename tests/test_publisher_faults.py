"""The publisher under faults, against a real Mosquitto: what from outside cannot be encoded,
a memory queue smaller than the outage, a disk that fills and empties, a failing exit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from daemon.config_mqtt import MqttSettings
from daemon.mqtt import Publisher
from daemon.outbox import Outbox
from daemon.outgoing import Outgoing
from daemon.safe import safe_text
from tests.helpers import Mosquitto, SmallDisk, Subscriber, free_port


def settings(port: int, prefix: str, max_pending: int = 1000) -> MqttSettings:
    return MqttSettings(
        host="127.0.0.1",
        port=port,
        prefix=prefix,
        client_id=f"{prefix}-pub",
        reconnect_min_s=0.1,
        reconnect_max_s=0.3,
        max_pending=max_pending,
    )


def utterance(publisher: Publisher, i: int) -> Outgoing:
    record = {"id": f"k-{i}", "room": "kitchen", "text": f"utterance {i}"}
    return Outgoing(
        publisher.topic("kitchen", "utterance"), publisher.encode(record), utterance_id=f"k-{i}", room="kitchen"
    )


def ids(payloads: list[bytes]) -> list[str]:
    return [json.loads(p)["id"] for p in payloads]


def test_lone_surrogates_from_outside_become_replacement_characters() -> None:
    text = json.loads('"ok \\ud800 \\udc00 done"')
    assert safe_text(text) == "ok \ufffd \ufffd done"
    safe_text(text).encode("utf-8")  # would raise on the original
    assert safe_text("日本語 ok") == "日本語 ok"


def test_an_outage_longer_than_the_memory_queue_loses_nothing_from_disk(tmp_path: Path) -> None:
    """max_pending = 3 and 7 utterances while the broker is away: all 7 stay in the outbox
    (only its own bounds drop stored utterances) and arrive in order once it is back."""
    port = free_port()
    broker = Mosquitto(tmp_path / "broker", port=port)
    outbox = Outbox(tmp_path / "state" / "outbox.sqlite3")

    async def scenario() -> tuple[Publisher, list[bytes]]:
        publisher = Publisher(settings(port, "spill", max_pending=3), outbox)
        runner = asyncio.create_task(publisher.run())
        for i in range(7):
            await publisher.submit_durable(utterance(publisher, i))
        assert len(outbox) == 7 and len(publisher.pending) == 3
        subscriber = None
        try:
            broker.start()
            subscriber = Subscriber(port, "spill/#", "spill-sub")
            assert subscriber.connected.wait(10)
            await asyncio.to_thread(subscriber.wait_for, "/utterance", 7, 30)
            await publisher.finish()
            await runner
            return publisher, subscriber.payloads("/utterance")
        finally:
            if subscriber is not None:
                subscriber.close()
            broker.stop()

    publisher, received = asyncio.run(scenario())
    assert ids(received) == [f"k-{i}" for i in range(7)]
    assert publisher.counters.dropped == 0 and publisher.counters.waited_on_disk == 4 and len(outbox) == 0


@pytest.mark.parametrize("small_disk", ["2m"], indirect=True)  # room for all eight once freed
def test_a_full_disk_keeps_publishing_from_memory_and_recovers(small_disk: SmallDisk, tmp_path: Path) -> None:
    """The disk fills with the broker away: seven utterances wait in memory only; space
    returns and the next one stores them all (none was published yet, so every one goes to
    disk); the broker comes back and they arrive in order. The broker starts only after the
    recovery so that no run depends on how far the publisher got (a broker already up could
    publish some before the disk is back, a different path each run)."""
    broker = Mosquitto(tmp_path / "broker")
    outbox = Outbox(small_disk.folder / "outbox.sqlite3")

    async def scenario() -> Publisher:
        publisher = Publisher(settings(broker.port, "full"), outbox)
        runner = asyncio.create_task(publisher.run())
        await publisher.submit_durable(utterance(publisher, 0))
        small_disk.fill()
        big = {"id": "", "room": "kitchen", "text": "z" * 4000}
        for i in range(1, 8):  # the first write after the fill fails: the WAL grows by appending
            big["id"] = f"k-{i}"
            await publisher.submit_durable(
                Outgoing(
                    publisher.topic("kitchen", "utterance"),
                    publisher.encode(big),
                    utterance_id=f"k-{i}",
                    room="kitchen",
                )
            )
        assert publisher.durable is not None and publisher.durable.degraded is not None
        assert publisher.durable.memory_only == 7 and len(outbox) == 1
        small_disk.free()
        await publisher.submit_durable(utterance(publisher, 30))
        assert publisher.durable.degraded is None
        assert len(outbox) == 9  # k-0, k-30 and the seven that waited in memory
        broker.start()
        subscriber = Subscriber(broker.port, "full/#", "full-sub")
        try:
            assert subscriber.connected.wait(10)
            await asyncio.to_thread(subscriber.wait_for, "/utterance", 9, 30)
            await publisher.finish()
            await runner
            assert ids(subscriber.payloads("/utterance")) == [f"k-{i}" for i in [*range(8), 30]]
        finally:
            subscriber.close()
        return publisher

    try:
        publisher = asyncio.run(scenario())
        assert publisher.durable is not None and len(publisher.durable) == 0
    finally:
        broker.stop()


def test_a_failing_exit_publishes_offline_not_online(broker: Mosquitto) -> None:
    """A crash elsewhere cancels the publisher: it says ``offline`` before its DISCONNECT
    (which would otherwise keep the broker from sending the will)."""
    subscriber = Subscriber(broker.port, "crash/status", "crash-sub")
    assert subscriber.connected.wait(10)

    async def scenario() -> None:
        publisher = Publisher(settings(broker.port, "crash"))
        runner = asyncio.create_task(publisher.run())
        await publisher.connected.wait()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    try:
        asyncio.run(scenario())
        statuses = subscriber.wait_for("/status", 2, 10)
        assert statuses[0] == b"online" and statuses[-1] == b"offline"
    finally:
        subscriber.close()
