"""The durable outbox on its own: order, persistence, bounds."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.mqtt import with_delayed_flag
from daemon.outbox import Outbox


def test_oldest_first_and_removed_on_acknowledgement(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    seqs = [box.add("p/kitchen/utterance", json.dumps({"id": f"k-{i}"}), f"k-{i}", "kitchen")[0] for i in range(3)]
    box.remove(seqs[1])
    assert [row.utterance_id for row in box.pending()] == ["k-0", "k-2"]


def test_what_was_not_acknowledged_survives_a_new_process(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.add("p/kitchen/utterance", "{}", "k-1", "kitchen")
    # No close: as after a SIGKILL, only what is on disk counts.
    again = Outbox(tmp_path / "o.sqlite3")
    assert [(row.topic, row.utterance_id) for row in again.pending()] == [("p/kitchen/utterance", "k-1")]


def test_bounded_by_count_and_age_with_a_count_of_what_was_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_entries=2)
    for i in range(4):
        box.add("t", "{}", f"k-{i}", "kitchen")
    assert [row.utterance_id for row in box.pending()] == ["k-2", "k-3"] and box.dropped == 2
    aged = Outbox(tmp_path / "o.sqlite3", max_age_s=1e-9)
    assert len(aged) == 0 and aged.dropped == 2


def test_the_delayed_flag_is_added_to_json_objects_only() -> None:
    assert json.loads(with_delayed_flag('{"id": "k-1", "text": "hi"}')) == {"id": "k-1", "text": "hi", "delayed": True}
    assert with_delayed_flag("online") == "online"
    assert with_delayed_flag("[1]") == "[1]"


def test_the_publisher_stores_utterances_off_the_event_loop(tmp_path: Path) -> None:
    """The fsync'd insert runs on the outbox's own thread: the event loop also runs capture."""
    import asyncio
    import threading

    from daemon.config import MqttSettings
    from daemon.mqtt import Outgoing, Publisher

    threads: list[str] = []

    class Watched(Outbox):
        def add(self, topic: str, payload: str, utterance_id: str | None, room: str | None) -> tuple[int, list[int]]:
            threads.append(threading.current_thread().name)
            return super().add(topic, payload, utterance_id, room)

    async def store() -> Publisher:
        publisher = Publisher(MqttSettings(), Watched(tmp_path / "o.sqlite3"))
        await publisher.submit_durable(Outgoing("p/kitchen/utterance", "{}", utterance_id="k-1", room="kitchen"))
        return publisher

    publisher = asyncio.run(store())
    assert threads and all(name.startswith("outbox") for name in threads), threads
    assert threading.current_thread().name not in threads
    # Stored before it was queued: the queued message knows its row.
    assert publisher.pending[0].seq is not None and publisher.outbox is not None and len(publisher.outbox) == 1
