"""The outbox as the publisher sees it: every disk call on one thread of its own, in order.

One thread keeps the calls in submission order, which the publisher relies on: a removal
queued before a read is done before it, and an insert that finishes before a read is seen
by it (their completions also reach the event loop in that order).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from daemon.outbox import Outbox, OutboxUnavailable, Stored

T = TypeVar("T")


class Durable:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.memory_only = 0  # utterances the degraded outbox could not take (kept in memory)
        self.log = structlog.get_logger().bind(component="outbox")
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="outbox")

    def __len__(self) -> int:
        return len(self.outbox)

    @property
    def degraded(self) -> str | None:
        return self.outbox.degraded

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._disk.submit(fn, *args))

    async def store(
        self, topic: str, payload: str, utterance_id: str | None, room: str | None, settles: Sequence[str] = ()
    ) -> tuple[int, list[int]] | None:
        """(seq, seqs the bounds pushed out), or None when the disk refused: the caller keeps
        the message in memory (the outbox logged that it is degraded). ``settles``: journal
        pieces it is made of, settled in the same transaction."""
        try:
            return await self._call(self.outbox.add, topic, payload, utterance_id, room, settles)
        except OutboxUnavailable:
            self.memory_only += 1
            return None

    async def keep_piece(self, piece_id: str, record: str) -> bool:
        try:
            await self._call(self.outbox.keep_piece, piece_id, record)
        except OutboxUnavailable:
            return False
        return True

    def settle_pieces(self, piece_ids: Sequence[str]) -> None:
        self._disk.submit(self.outbox.settle_pieces, piece_ids).add_done_callback(self._done)

    async def kept_pieces(self) -> list[str]:
        try:
            return await self._call(self.outbox.kept_pieces)
        except sqlite3.Error as exc:
            self.log.error("journal unreadable: its pieces stay on disk", error=str(exc))
            return []

    async def rows(self, from_seq: int = 0, limit: int = -1) -> list[Stored]:
        """Stored rows from ``from_seq`` on; [] (logged) when the disk cannot be read."""
        try:
            return await self._call(self.outbox.pending, from_seq, limit)
        except sqlite3.Error as exc:
            self.log.error("outbox unreadable: what waits there goes out after a restart", error=str(exc))
            return []

    def forget(self, seq: int) -> None:
        """Out of the outbox (acknowledged), without waiting."""
        self._disk.submit(self.outbox.remove, seq).add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        if (exc := future.exception()) is not None:
            self.log.error("outbox update failed", error=str(exc))

    async def close(self) -> None:
        """After the removals already queued are on disk."""
        await self._call(lambda: None)
        self._disk.shutdown(wait=False)
