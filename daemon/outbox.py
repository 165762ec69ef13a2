"""The durable outbox: finished utterances on disk until the broker acknowledges them.

SQLite in WAL mode with ``synchronous=FULL`` (each utterance is on disk before it is
published, at our rate of at most a few a second), so a broker outage, a SIGKILL or a reboot
loses nothing: what is still here at start is published first, oldest first, with its
original id and ``"delayed": true``. Bounded by count and age; what falls out is counted and
logged as an error, never dropped silently.

Every call does disk I/O (an fsync per insert): the publisher makes them all on one thread
of its own, never on the event loop. ``len()`` is a count kept in memory.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import structlog


@dataclass(frozen=True)
class Stored:
    seq: int
    topic: str
    payload: str
    utterance_id: str | None
    room: str | None
    created: float  # epoch seconds


class Outbox:
    def __init__(self, path: Path, max_entries: int = 100_000, max_age_s: float = 7 * 86400) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.dropped = 0
        self.log = structlog.get_logger().bind(component="outbox")
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
            "payload TEXT NOT NULL, utterance_id TEXT, room TEXT, created REAL NOT NULL)"
        )
        self._count = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        self._trim()

    def add(self, topic: str, payload: str, utterance_id: str | None, room: str | None) -> tuple[int, list[int]]:
        """Store a message; returns its seq and the seqs the bounds pushed out (already logged)."""
        cursor = self._db.execute(
            "INSERT INTO outbox (topic, payload, utterance_id, room, created) VALUES (?, ?, ?, ?, ?)",
            (topic, payload, utterance_id, room, time.time()),
        )
        self._count += 1
        return int(cursor.lastrowid or 0), self._trim()

    def remove(self, seq: int) -> None:
        self._count -= self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount

    def pending(self) -> list[Stored]:
        rows = self._db.execute(
            "SELECT seq, topic, payload, utterance_id, room, created FROM outbox ORDER BY seq"
        ).fetchall()
        return [Stored(*row) for row in rows]

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        self._db.close()

    def _trim(self) -> list[int]:
        """Past the bounds, the oldest go: counted and logged as an error; returns their seqs."""
        old = self._db.execute(
            "SELECT seq, utterance_id FROM outbox WHERE created < ? ORDER BY seq", (time.time() - self.max_age_s,)
        ).fetchall()
        excess = max(0, len(self) - len(old) - self.max_entries)
        if excess:
            old += self._db.execute(
                "SELECT seq, utterance_id FROM outbox WHERE created >= ? ORDER BY seq LIMIT ?",
                (time.time() - self.max_age_s, excess),
            ).fetchall()
        for seq, utterance_id in old:
            self._count -= self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
            self.dropped += 1
            self.log.error(
                "outbox full or entry too old: utterance dropped", utterance_id=utterance_id, dropped=self.dropped
            )
        return [seq for seq, _ in old]
