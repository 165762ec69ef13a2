"""The durable outbox: finished utterances on disk until the broker acknowledges them.

SQLite in WAL mode with ``synchronous=FULL`` (each utterance is on disk before it is
published, at our rate of at most a few a second), so a broker outage, a SIGKILL or a reboot
loses nothing: what is still here at start is published first, oldest first, with its
original id and ``"delayed": true``. Bounded by count and age; what falls out is counted and
logged as an error, never dropped silently. These bounds are the only ones that drop a
stored utterance (the publisher's memory queue never deletes from here).

Faults have a mode each (docs/mqtt.md):

- a damaged file (not a database, a bad page) is moved aside as ``outbox.sqlite3.damaged-<time>``
  (named in the log), every row that can still be read is copied into a fresh outbox, and
  the daemon starts;
- a full or failing disk makes the outbox *degraded*: ``add`` raises ``OutboxUnavailable``,
  the publisher keeps the utterance in memory and says so (log, ``<prefix>/stats``), and
  every later ``add`` tries the disk again, so the outbox recovers by itself when space returns;
- a state directory we may not write to is a start-up error (``OutboxError``, exit 3): it is
  a set-up mistake, not a fault that passes.

Every call does disk I/O (an fsync per insert): the publisher makes them all on one thread
of its own, never on the event loop. ``len()`` is a count kept in memory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.outbox_repair import Damaged, damaged, move_aside, salvage

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
    "payload TEXT NOT NULL, utterance_id TEXT, room TEXT, created REAL NOT NULL)"
)
# The journal (pipeline/journal.py): recognized pieces not yet stored as part of an utterance.
PIECES_SCHEMA = "CREATE TABLE IF NOT EXISTS pieces (id TEXT PRIMARY KEY, record TEXT NOT NULL, created REAL NOT NULL)"


class OutboxError(Exception):
    """The state directory cannot hold an outbox at all (permissions, read-only); names the path."""


class OutboxUnavailable(Exception):
    """The disk refused this write (full, I/O error); the outbox is degraded until one succeeds."""


@dataclass(frozen=True)
class Stored:
    seq: int
    topic: str
    payload: str
    utterance_id: str | None
    room: str | None
    created: float  # epoch seconds


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """An explicit transaction (the connection autocommits each statement otherwise)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def prepare_state_dir(folder: Path) -> None:
    """The state directory, owner-only whatever the umask; ``OutboxError`` naming it if we
    cannot write there."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise OutboxError(f"state directory {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutboxError(f"state directory {folder}: not writable by this user (uid {os.getuid()})")


class Outbox:
    def __init__(self, path: Path, max_entries: int = 100_000, max_age_s: float = 7 * 86400) -> None:
        prepare_state_dir(path.parent)
        self.path = path
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.dropped = 0
        self.degraded: str | None = None  # why the disk refused the last write, until one succeeds
        self.salvaged = 0  # rows copied out of a damaged file at start
        self.log = structlog.get_logger().bind(component="outbox", path=str(path))
        self._db: sqlite3.Connection | None = None
        self._count = 0
        try:
            self._open()
        except sqlite3.OperationalError as exc:  # full disk, I/O error: start degraded, retry on add
            self._degrade(exc)

    def _open(self) -> None:
        try:
            db = self._connect()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            self._replace_damaged(exc)
            db = self._connect()
        self._db = db
        self._count = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        self._trim()

    def _connect(self) -> sqlite3.Connection:
        old_umask = os.umask(0o077)  # the database and its -wal/-shm files: owner-only
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old_umask)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(SCHEMA)
            db.execute(PIECES_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise Damaged(f"integrity check: {check}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _replace_damaged(self, exc: sqlite3.DatabaseError) -> None:
        aside = move_aside(self.path)
        rows = salvage(aside)
        db = self._connect()
        with db:
            db.executemany(
                "INSERT INTO outbox (topic, payload, utterance_id, room, created) VALUES (?, ?, ?, ?, ?)",
                [row[1:] for row in rows],  # new seqs, the same order
            )
        db.close()
        self.salvaged = len(rows)
        self.log.error(
            "outbox damaged: moved aside, readable rows kept", error=str(exc), moved_to=str(aside), kept=len(rows)
        )

    def _degrade(self, exc: Exception) -> None:
        if self.degraded is None:
            self.log.error("outbox degraded: utterances kept in memory until the disk takes writes", error=str(exc))
        self.degraded = str(exc)  # the connection stays: reads and removals may still work

    def add(
        self, topic: str, payload: str, utterance_id: str | None, room: str | None, settles: Sequence[str] = ()
    ) -> tuple[int, list[int]]:
        """Store a message, and settle the journal's ``settles`` pieces in the same
        transaction; returns its seq and the seqs the bounds pushed out (already logged).
        Raises ``OutboxUnavailable`` when the disk refuses (the outbox is then degraded)."""
        try:
            db = self._writable()
            with transaction(db):  # stored and settled, or neither
                cursor = db.execute(
                    "INSERT INTO outbox (topic, payload, utterance_id, room, created) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, utterance_id, room, time.time()),
                )
                db.executemany("DELETE FROM pieces WHERE id = ?", [(piece,) for piece in settles])
        except (sqlite3.Error, OSError) as exc:  # full, failing or damaged under us
            self._degrade(exc)
            raise OutboxUnavailable(str(exc)) from None
        self._count += 1
        if self.degraded is not None:
            self.log.warning("outbox recovered: utterances on disk again", was=self.degraded)
            self.degraded = None
        return int(cursor.lastrowid or 0), self._trim()

    def _writable(self) -> sqlite3.Connection:
        if self._db is None:
            self._open()
        assert self._db is not None
        return self._db

    def keep_piece(self, piece_id: str, record: str) -> None:
        """A recognized piece into the journal; ``OutboxUnavailable`` when the disk refuses."""
        try:
            self._writable().execute(
                "INSERT OR REPLACE INTO pieces (id, record, created) VALUES (?, ?, ?)", (piece_id, record, time.time())
            )
        except (sqlite3.Error, OSError) as exc:  # full, failing or damaged under us
            self._degrade(exc)
            raise OutboxUnavailable(str(exc)) from None

    def settle_pieces(self, piece_ids: Sequence[str]) -> None:
        if self._db is not None:
            with transaction(self._db):
                self._db.executemany("DELETE FROM pieces WHERE id = ?", [(piece,) for piece in piece_ids])

    def kept_pieces(self) -> list[str]:
        """The journal's records, oldest first."""
        if self._db is None:
            return []
        return [row[0] for row in self._db.execute("SELECT record FROM pieces ORDER BY created, rowid")]

    def remove(self, seq: int) -> None:
        if self._db is None:
            return  # degraded: the row stays, and is published again after a restart at worst
        self._count -= self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount

    def pending(self, from_seq: int = 0, limit: int = -1) -> list[Stored]:
        """Stored rows, oldest first: all of them, or ``limit`` from ``from_seq`` on."""
        if self._db is None:
            return []
        rows = self._db.execute(
            "SELECT seq, topic, payload, utterance_id, room, created FROM outbox WHERE seq >= ? ORDER BY seq LIMIT ?",
            (from_seq, limit),
        ).fetchall()
        return [Stored(*row) for row in rows]

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _trim(self) -> list[int]:
        """Past the bounds, the oldest go: counted and logged as an error; returns their seqs."""
        assert self._db is not None
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
