"""The journal of recognized pieces (pipeline/journal.py), in the outbox's database.

A piece is kept as JSON with what the text and stitch stages and the record need; not its
audio (a replayed piece has none: its debug recording, if any, is silent).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog

from daemon.durable import Durable
from daemon.safe import safe_text
from pipeline.messages import Transcript, Utterance, Work

UTTERANCE_FIELDS = ("room", "id", "start_s", "end_s", "start_wall", "end_wall", "reason", "language")
TRANSCRIPT_FIELDS = (
    "text",
    "raw_text",
    "language",
    "confidence",
    "model",
    "recognize_ms",
    "parts",
    "raw_parts",
    "pieces",
    "audio_events",
    "emotion",
)


def encode_piece(t: Transcript) -> str:
    u = t.utterance
    record: dict[str, Any] = {"utterance": {k: getattr(u, k) for k in UTTERANCE_FIELDS}}
    record.update({k: getattr(t, k) for k in TRANSCRIPT_FIELDS})
    return safe_text(json.dumps(record, ensure_ascii=False, default=_plain))


def _plain(value: Any) -> Any:
    """numpy scalars (a confidence, a time) as the Python numbers they hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def decode_piece(text: str) -> Transcript:
    record = json.loads(text)
    fields = record["utterance"]
    utterance = Utterance(
        audio=np.zeros(0, np.float32), decided_at=time.monotonic(), kind=Work.LIVE, restored=True, **fields
    )
    return Transcript(
        utterance,
        text=str(record["text"]),
        raw_text=str(record["raw_text"]),
        language=str(record["language"]),
        confidence=float(record["confidence"]),
        model=str(record["model"]),
        recognize_ms=float(record["recognize_ms"]),
        parts=int(record["parts"]),
        raw_parts=tuple(record["raw_parts"]),
        pieces=tuple(record["pieces"]),
        # Pieces kept before these fields existed have none.
        audio_events=tuple(record.get("audio_events", ())),
        emotion=record.get("emotion"),
    )


class PieceJournal:
    """The pipeline's ``Journal``: writes on the outbox's thread; a refused write (a degraded
    outbox) is logged there and the piece goes on, kept in memory only."""

    def __init__(self, durable: Durable) -> None:
        self.durable = durable
        self.kept = 0
        self.log = structlog.get_logger().bind(component="journal")

    async def keep(self, t: Transcript) -> None:
        try:
            record = encode_piece(t)
        except (TypeError, ValueError) as exc:  # never raised into the recognize stage
            self.log.error("piece not journaled", utterance_id=t.utterance.id, error=str(exc))
            return
        if await self.durable.keep_piece(t.utterance.id, record):
            self.kept += 1

    def settle(self, piece_ids: Sequence[str]) -> None:
        self.durable.settle_pieces(list(piece_ids))

    async def restore(self) -> list[Transcript]:
        """What was recognized and never stored before the last exit, oldest first; a record
        that cannot be read is logged and left on disk for a person to look at."""
        out = []
        for text in await self.durable.kept_pieces():
            try:
                out.append(decode_piece(text))
            except (ValueError, KeyError, TypeError) as exc:
                self.log.error("journal record unreadable: skipped", error=str(exc), record=text[:200])
        return out
