"""A damaged outbox file: moved aside, and every row that can still be read copied out.

A bad page loses only the rows on it: the forward scan stops at the first unreadable page,
then single-row lookups (which walk the B-tree from the root, not through the bad leaf)
find the next readable row, and the scan goes on from there.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

Row = tuple[Any, ...]  # seq, topic, payload, utterance_id, room, created

# SQLite's verdicts for a file that is not (or no longer) a sound database.
DAMAGED_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
# How far past the last readable row the lookups go when the table's high-water mark is lost.
PROBE_SPAN = 100_000
COLUMNS = "seq, topic, payload, utterance_id, room, created"


class Damaged(sqlite3.DatabaseError):
    """The integrity check failed."""


def damaged(exc: sqlite3.DatabaseError) -> bool:
    return isinstance(exc, Damaged) or getattr(exc, "sqlite_errorname", None) in DAMAGED_CODES


def move_aside(path: Path) -> Path:
    """``outbox.sqlite3`` (and its -wal/-shm) -> ``outbox.sqlite3.damaged-<utc time>``."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    for suffix in ("-wal", "-shm", ""):  # the database last: a crash midway leaves it findable
        part = Path(f"{path}{suffix}")
        if part.exists():
            part.rename(f"{aside}{suffix}")
    return aside


def salvage(path: Path) -> list[Row]:
    """Every readable row of a damaged outbox, oldest first; [] when nothing can be read."""
    try:
        db = sqlite3.connect(path)
        top = _high_water(db)
    except sqlite3.DatabaseError:
        return []
    rows: list[Row] = []
    last = 0
    try:
        while True:
            try:
                for row in db.execute(f"SELECT {COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq", (last,)):
                    rows.append(tuple(row))
                    last = row[0]
                return rows
            except sqlite3.DatabaseError:
                found = _next_readable(db, last, top if top is not None else last + PROBE_SPAN)
                if found is None:
                    return rows
                rows.append(found)
                last = found[0]
    finally:
        db.close()


def _high_water(db: sqlite3.Connection) -> int | None:
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    except sqlite3.DatabaseError:
        return None
    return int(row[0]) if row else None


def _next_readable(db: sqlite3.Connection, after: int, top: int) -> Row | None:
    for seq in range(after + 1, top + 1):
        try:
            row = db.execute(f"SELECT {COLUMNS} FROM outbox WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            return tuple(row)
    return None
