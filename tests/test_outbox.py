"""The durable outbox on its own: order, persistence, bounds."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from daemon.outbox import Outbox
from daemon.outgoing import with_delayed_flag
from tests.helpers import SmallDisk


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

    from daemon.config_mqtt import MqttSettings
    from daemon.mqtt import Publisher
    from daemon.outgoing import Outgoing

    threads: list[str] = []

    class Watched(Outbox):
        def add(
            self, topic: str, payload: str, utterance_id: str | None, room: str | None, settles: Sequence[str] = ()
        ) -> tuple[int, list[int]]:
            threads.append(threading.current_thread().name)
            return super().add(topic, payload, utterance_id, room, settles)

    async def store() -> Publisher:
        publisher = Publisher(MqttSettings(), Watched(tmp_path / "o.sqlite3"))
        await publisher.submit_durable(Outgoing("p/kitchen/utterance", "{}", utterance_id="k-1", room="kitchen"))
        return publisher

    publisher = asyncio.run(store())
    assert threads and all(name.startswith("outbox") for name in threads), threads
    assert threading.current_thread().name not in threads
    # Stored before it was queued: the queued message knows its row.
    assert publisher.pending[0].seq is not None and publisher.durable is not None and len(publisher.durable) == 1


def _damage_one_page(path: Path, page: int) -> None:
    """Overwrite one page in the middle of the file with random bytes (a bad sector)."""
    import os
    import random

    page_size = 4096
    with path.open("r+b") as f:
        f.seek(page * page_size)
        f.write(random.Random(page).randbytes(page_size))
        f.flush()
        os.fsync(f.fileno())


def test_a_file_that_is_not_a_database_is_moved_aside_and_the_outbox_starts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(__import__("random").Random(1).randbytes(50_000))
    box = Outbox(path)
    box.add("t", "{}", "k-1", "kitchen")
    aside = list(tmp_path.glob("outbox.sqlite3.damaged-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 50_000  # kept, for a person to look at
    assert [row.utterance_id for row in box.pending()] == ["k-1"] and box.salvaged == 0


def test_a_bad_page_loses_only_the_rows_on_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    payload = json.dumps({"text": "x" * 500})  # about 8 rows per page: the table spans many pages
    for i in range(200):
        box.add("p/kitchen/utterance", payload, f"k-{i}", "kitchen")
    box.close()
    import sqlite3

    with sqlite3.connect(path) as db:  # everything in the main file, as after a checkpoint
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = path.stat().st_size // 4096
    _damage_one_page(path, pages // 2)
    again = Outbox(path)
    kept = [str(row.utterance_id) for row in again.pending()]
    assert 150 <= len(kept) < 200, len(kept)  # one page's rows gone, not all 200
    assert kept == sorted(kept, key=lambda k: int(k.split("-")[1]))  # still oldest first
    assert again.salvaged == len(kept) and list(tmp_path.glob("outbox.sqlite3.damaged-*"))


def test_a_full_disk_degrades_the_outbox_and_it_recovers_when_space_returns(small_disk: SmallDisk) -> None:
    from daemon.outbox import OutboxUnavailable

    box = Outbox(small_disk.folder / "outbox.sqlite3")
    box.add("t", "{}", "k-0", "kitchen")
    small_disk.fill()
    with pytest.raises(OutboxUnavailable):
        for i in range(1, 200):  # the WAL has some room left in its last page
            box.add("t", json.dumps({"text": "y" * 2000}), f"k-{i}", "kitchen")
    assert box.degraded is not None and "full" in box.degraded
    small_disk.free()
    box.add("t", "{}", "k-last", "kitchen")
    assert box.degraded is None and box.pending()[-1].utterance_id == "k-last"


def test_a_state_directory_we_cannot_write_is_a_start_up_error_naming_it(tmp_path: Path) -> None:
    from daemon.outbox import OutboxError

    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], check=False)
    try:
        if not os.path.ismount(folder):
            pytest.skip("cannot mount a read-only tmpfs here")
        with pytest.raises(OutboxError, match=str(folder)):
            Outbox(folder / "state" / "outbox.sqlite3")
        with pytest.raises(OutboxError, match="not writable"):
            Outbox(folder / "outbox.sqlite3")
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_the_state_directory_and_database_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        box = Outbox(tmp_path / "state" / "outbox.sqlite3")
        box.add("t", "{}", "k-1", "kitchen")
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    for part in (tmp_path / "state").iterdir():
        assert part.stat().st_mode & 0o077 == 0, (part, oct(part.stat().st_mode))


def test_a_journaled_piece_comes_back_as_it_went_and_is_settled_with_its_utterance(tmp_path: Path) -> None:
    import asyncio

    import numpy as np

    from daemon.durable import Durable
    from daemon.journal import PieceJournal
    from pipeline.messages import Transcript, Utterance

    utterance = Utterance("kitchen", "kitchen-x-1", np.zeros(1600, np.float32), 1.0, 2.0, 1e9, 1e9 + 1, "silence", 0.0)
    piece = Transcript(utterance, "Turn on the", "turn on the", "en", np.float32(0.5), "m", 12.0)  # type: ignore[arg-type]
    box = Outbox(tmp_path / "o.sqlite3")

    async def scenario() -> list[Transcript]:
        journal = PieceJournal(Durable(box))
        await journal.keep(piece)
        restored = await PieceJournal(Durable(Outbox(tmp_path / "o.sqlite3"))).restore()  # as after a crash
        box.add("t", "{}", "kitchen-x-1", "kitchen", settles=["kitchen-x-1"])
        return restored

    (back,) = asyncio.run(scenario())
    assert (back.utterance.id, back.text, back.raw_text, back.confidence) == (
        "kitchen-x-1",
        "Turn on the",
        "turn on the",
        0.5,
    )
    assert back.utterance.restored and back.utterance.start_wall == 1e9
    assert box.kept_pieces() == [] and len(box) == 1  # stored and settled in one transaction
