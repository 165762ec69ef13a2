"""Messages that flow between the stages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
FRAME_MS = 500
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
# Partials go after every finished utterance and all batch work.
PARTIAL_PRIORITY = 2


@dataclass(frozen=True, slots=True)
class Frame:
    """500 ms of 16 kHz mono float32 audio from one room (more when a file room's VAD
    takes several queued frames at once)."""

    room: str
    samples: np.ndarray
    offset: int  # index of the first sample since the room's stream started
    wall: float  # wall-clock time (epoch seconds) of the first sample
    mono: float  # time.monotonic() when the frame was captured or read


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The room's source ended (file finished, or capture stopped for shutdown)."""

    room: str
    reason: str


@dataclass(frozen=True, slots=True)
class Utterance:
    """A stretch of speech cut by the VAD, ready for recognition."""

    room: str
    id: str
    audio: np.ndarray
    start_s: float  # seconds from the start of the room's stream
    end_s: float
    start_wall: float  # epoch seconds
    end_wall: float
    reason: str  # why it was cut: silence | max_length | end_of_stream
    decided_at: float  # time.monotonic() when the VAD cut it
    language: str | None = None
    source: str | None = None  # the file it came from, for batch transcription
    priority: int = 0  # 0: a live room; 1: batch work; 2: a partial (see PARTIAL_PRIORITY)
    # A batch chunk (several VAD segments of a file): recognize with timestamps, and the
    # VAD's speech spans in it (seconds from its start) to place them on.
    timestamps: bool = False
    speech: tuple[tuple[float, float], ...] = ()

    @property
    def partial(self) -> bool:
        """Audio of speech still going on, for an interim result (``reason == "partial"``)."""
        return self.reason == "partial"

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class TimedText:
    """A timed segment of a chunk's transcript (seconds from the chunk's start)."""

    start_s: float
    end_s: float
    raw_text: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognized utterance."""

    utterance: Utterance
    text: str
    raw_text: str
    language: str
    confidence: float
    model: str
    recognize_ms: float
    parts: int = 1
    raw_parts: tuple[str, ...] = ()  # the recognizer's text of each joined piece
    # The previous piece of the room and this one recognized as one stretch of audio, when
    # the stitcher could not tell from the texts alone (pipeline/recognize.py): the id of
    # that previous piece, the recognizer's text and, after the text stage, the written text.
    joint_with: str = ""
    joint_raw: str = ""
    joint_text: str = ""
    error: str | None = None  # batch work: recognition failed; the segment has no text
    segments: tuple[TimedText, ...] = ()  # a chunk recognized with timestamps


def iso_utc(epoch_s: float) -> str:
    """``2026-11-26T08:15:02.120Z``: the timestamp form used in every payload."""
    stamp = datetime.fromtimestamp(epoch_s, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def utterance_record(t: Transcript, published_at: float | None = None) -> dict[str, Any]:
    """The finished-utterance JSON object of the MQTT contract."""
    u = t.utterance
    latency: dict[str, int] = {"recognize": round(t.recognize_ms)}
    if published_at is not None:
        latency["end_to_publish"] = round((published_at - u.decided_at) * 1000)
    return {
        "id": u.id,
        "room": u.room,
        "text": t.text,
        "raw_text": t.raw_text,
        "language": t.language,
        "start": iso_utc(u.start_wall),
        "end": iso_utc(u.end_wall),
        "duration_s": round(u.end_s - u.start_s, 3),
        "confidence": t.confidence,
        "parts": t.parts,
        "raw_parts": list(t.raw_parts or (t.raw_text,)),
        "latency_ms": latency,
        "model": t.model,
    }
