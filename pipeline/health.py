"""Is the pipeline making progress? Stages mark the stretches where they wait on work that
could hang (a model call, a VAD call); the watchdog asks which has been busy too long."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class BusyWatch:
    def __init__(self) -> None:
        self._busy: dict[str, float] = {}  # what -> monotonic time it started
        self.completed = 0

    @contextmanager
    def busy(self, what: str) -> Iterator[None]:
        self._busy[what] = time.monotonic()
        try:
            yield
        finally:
            self._busy.pop(what, None)
            self.completed += 1

    def touch(self, what: str) -> None:
        """A stretch that waits by design (on remote workers) shows it is still alive."""
        if what in self._busy:
            self._busy[what] = time.monotonic()

    def stuck(self, deadline_s: float, now: float | None = None) -> dict[str, float]:
        """What has been busy longer than ``deadline_s``, with for how long."""
        now = time.monotonic() if now is None else now
        return {what: now - since for what, since in self._busy.items() if now - since > deadline_s}
