"""Bounded queues with a stated overflow rule and a counter."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


class DropOldestQueue(asyncio.Queue[T]):
    """For real-time capture: never blocks the producer; when full, the oldest item goes.

    Capture cannot wait (the microphone keeps talking), and the newest audio is the one a
    listener cares about, so overflow discards from the head and counts it.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize <= 0:
            raise ValueError("DropOldestQueue needs a positive maxsize")
        super().__init__(maxsize)
        self.dropped = 0

    def put_dropping_oldest(self, item: T) -> bool:
        """Put without waiting; returns False when an older item was dropped to make room."""
        dropped = False
        if self.full():
            self.get_nowait()
            self.task_done()
            self.dropped += 1
            dropped = True
        self.put_nowait(item)
        return not dropped
