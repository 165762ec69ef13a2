"""Messages that flow between the stages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
FRAME_MS = 500
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000


class Work(StrEnum):
    """What an utterance is for; it decides its priority and where its transcript goes."""

    LIVE = "live"  # a room's finished utterance: stitched, published
    BATCH = "batch"  # a segment or chunk of a batch job's file: back to its job, never published
    PARTIAL = "partial"  # the audio of speech still going on: an interim result only
    # A live utterance whose endpoint is still open, recognized ahead so its text is ready
    # when the endpoint comes; kept by the recognize stage, never published itself.
    SPECULATIVE = "speculative"


# Lower goes first: live rooms, their speculations, then batch work, then partials (only
# when nothing else waits).
PRIORITY = {Work.LIVE: 0, Work.SPECULATIVE: 1, Work.BATCH: 2, Work.PARTIAL: 3}


@dataclass(frozen=True, slots=True)
class Frame:
    """500 ms of 16 kHz mono float32 audio from one room (more when a file room's VAD
    takes several queued frames at once)."""

    room: str
    samples: np.ndarray
    offset: int  # index of the first sample since the room's stream started
    wall: float  # wall-clock time (epoch seconds) of the first sample
    captured_at: float  # time.monotonic() when the frame was captured or read


@dataclass(frozen=True, slots=True)
class BatchFile:
    """Where a batch utterance comes from: a job, the file's place in it, and its path."""

    job: str
    index: int
    path: str
    whole: bool = False  # the file's whole audio, recognized beside its segments (pipeline/batch.py)


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
    reason: str  # why it was cut: silence | max_length | end_of_stream | shutdown | partial | speculative
    decided_at: float  # time.monotonic() when the VAD cut it
    language: str | None = None
    kind: Work = Work.LIVE
    file: BatchFile | None = None  # batch work: which job's which file
    # A batch chunk (several VAD segments of a file): recognize with timestamps, and the
    # VAD's speech spans in it (seconds from its start) to place them on.
    timestamps: bool = False
    speech: tuple[tuple[float, float], ...] = ()
    restored: bool = False  # recognized before a crash, replayed from the journal at start
    # A live utterance whose speech ended where its speculation did (seconds in the stream):
    # that speculation's text stands for it. None: no speculation stands.
    speculation_end_s: float | None = None

    @property
    def partial(self) -> bool:
        return self.kind is Work.PARTIAL

    @property
    def batch(self) -> bool:
        return self.kind is Work.BATCH

    @property
    def speculative(self) -> bool:
        return self.kind is Work.SPECULATIVE

    @property
    def priority(self) -> int:
        return PRIORITY[self.kind]

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
    # The recognizer's P(sentence ends) after the previous piece's words in that joint decode.
    joint_end: float | None = None
    error: str | None = None  # batch work: recognition failed; the segment has no text
    segments: tuple[TimedText, ...] = ()  # a chunk recognized with timestamps
    pieces: tuple[str, ...] = ()  # ids of the recognized pieces joined into it (none: just its own)
    # The recognizer's probability that the text ends a sentence (models/sentence_end.py);
    # the stitcher publishes at once above stitch.end_threshold. None: not asked.
    sentence_end: float | None = None
    # What else the recognizer heard (SenseVoice): audio events and the speaker's emotion.
    audio_events: tuple[str, ...] = ()
    emotion: str | None = None


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
    record: dict[str, Any] = {
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
    # Only from models that say (SenseVoice): the payload of a Whisper room stays as it was.
    if t.audio_events:
        record["audio_events"] = list(t.audio_events)
    if t.emotion is not None:
        record["emotion"] = t.emotion
    return record
