"""What the daemon publishes, also for listeners inside the process (the caption page).

Partials, finished utterances and room states are handed to every listener as they are
published. A listener that falls behind (a slow phone on Wi-Fi) loses its oldest events,
counted; it never slows publishing, and none is kept when nobody listens.
"""

from __future__ import annotations

from typing import Any

from pipeline.queues import DropOldestQueue

Event = dict[str, Any]


class LocalEvents:
    def __init__(self, backlog: int = 256) -> None:
        self.backlog = backlog
        self._listeners: set[DropOldestQueue[Event]] = set()

    def listen(self) -> DropOldestQueue[Event]:
        queue: DropOldestQueue[Event] = DropOldestQueue(self.backlog)
        self._listeners.add(queue)
        return queue

    def forget(self, queue: DropOldestQueue[Event]) -> None:
        self._listeners.discard(queue)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        """``{"type": kind, **payload}`` to every listener; called on the event loop."""
        event = {"type": kind, **payload}
        for queue in self._listeners:
            queue.put_dropping_oldest(event)
