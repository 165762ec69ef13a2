"""The journal: recognized live pieces kept on disk until the utterance they end up in is
stored (daemon/journal.py keeps them in the outbox's database).

Between recognition and the outbox a piece waits in the text and stitch stages, the
stitcher holding it up to ``stitch.max_hold_ms`` for a continuation; a crash there would
lose text the model already wrote. So the recognize stage keeps each live piece before it
hands it on, a piece that ends up as nothing (no text left) is settled by the text stage,
and the publish stage settles a transcript's pieces in the same transaction that stores it.
After a crash the pieces still kept go through the text and stitch stages again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.messages import Transcript


class Journal(Protocol):
    async def keep(self, t: Transcript) -> None:
        """On disk before it goes on (an error is the journal's to log, never raised)."""

    def settle(self, piece_ids: Sequence[str]) -> None:
        """These pieces need no keeping any more; returns at once."""


def pieces(t: Transcript) -> tuple[str, ...]:
    """The ids of the recognized pieces ``t`` is made of."""
    return t.pieces or (t.utterance.id,)
