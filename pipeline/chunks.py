"""Batch chunks: a file's consecutive VAD segments as one stretch recognized with timestamps.

On a CPU the encoder always sees a 30 s window, so a chunk of up to CHUNK_S of a file costs
one encoder pass instead of one per segment. The recognizer's timed segments of a chunk are
placed on the VAD's speech bounds (``timed_segments``), and speech its decode left out is
found (``settle``) and recognized on its own, so a chunk loses no words.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.messages import SAMPLE_RATE, TimedText, Utterance

if TYPE_CHECKING:
    from models.api import Capabilities
    from pipeline.sources import AudioSource

# Chunks span at most this much of a file's timeline: Whisper's 30 s window, less a margin.
CHUNK_S = 28.0
# A file at most this long is recognized whole, as one utterance without timestamps: what
# one would get decoding it alone. Timestamped decoding and cutting at the VAD's bounds cost
# words (bench/batch.py, bench/chinese.py; docs/architecture.md "Batch transcription").
WHOLE_FILE_S = 30.0


def chunk_seconds(device: str, capabilities: Capabilities) -> float:
    """How a queue run cuts files for a recognizer on ``device``.

    On a CPU the encoder dominates and always sees a 30 s window, so merging a file's
    segments into chunks of up to CHUNK_S (decoded with timestamps) saves most of the work.
    On a GPU the encoder is cheap and the decoder's token-by-token loop dominates: 28 s
    chunks make long sequential decodes (29 min of audio on an H100: 7 calls of 3.2 s, barely
    faster than one call per segment), while separate segments of several files share each
    decoding step in one batch. Measured with bench/batch.py on both; see docs/architecture.md.
    Without timestamps (``capabilities.timestamps``) segments go as they are.
    """
    if not capabilities.timestamps:
        return 0.0
    return CHUNK_S if device.startswith("cpu") else 0.0


def whole_seconds(capabilities: Capabilities) -> float:
    """Files at most this long are recognized whole: WHOLE_FILE_S, or less for a model that
    takes less audio at once."""
    return min(WHOLE_FILE_S, capabilities.max_audio_s)


def chunk(pieces: list[Utterance]) -> Utterance:
    """Consecutive segments of one file as one stretch of its timeline: the silence between
    them is silence again (zeros), so a time in the chunk is its start plus that time."""
    first, last = pieces[0], pieces[-1]
    audio: list[np.ndarray] = []
    position = first.start_s
    for piece in pieces:
        gap = round((piece.start_s - position) * SAMPLE_RATE)
        if gap > 0:
            audio.append(np.zeros(gap, np.float32))
        audio.append(piece.audio)
        position = piece.start_s + len(piece.audio) / SAMPLE_RATE
    speech = tuple((round(p.start_s - first.start_s, 3), round(p.end_s - first.start_s, 3)) for p in pieces)
    return dataclasses.replace(
        first,
        audio=np.concatenate(audio),
        end_s=last.end_s,
        end_wall=last.end_wall,
        reason=last.reason,
        timestamps=True,
        speech=speech,
    )


class KeptAudio:
    """A source that keeps what it yields while that is at most ``limit_s`` long, so a short
    file's whole audio (its silences too) is there once its VAD has finished with it."""

    def __init__(self, source: AudioSource, limit_s: float) -> None:
        self.source = source
        self.realtime = source.realtime
        self.description = source.description
        self._limit = round(limit_s * SAMPLE_RATE)
        self._kept: list[np.ndarray] | None = [] if limit_s > 0 else None
        self._length = 0

    @property
    def overflows(self) -> int:
        return self.source.overflows

    @property
    def audio(self) -> np.ndarray | None:
        """All of it, or None when it ran past the limit."""
        return None if self._kept is None else np.concatenate([np.zeros(0, np.float32), *self._kept])

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        async for piece in self.source.chunks(stop):
            self._length += len(piece)
            if self._kept is not None and self._length > self._limit:
                self._kept = None  # a long file: chunks of its segments instead
            elif self._kept is not None:
                self._kept.append(piece)
            yield piece


def whole(pieces: list[Utterance], audio: np.ndarray) -> Utterance:
    """A short file's segments as one utterance of the file's whole audio, decoded without
    timestamps; its times are those of the speech in it (first start to last end)."""
    first, last = pieces[0], pieces[-1]
    assert first.file is not None
    return dataclasses.replace(
        first,
        audio=audio,
        end_s=last.end_s,
        end_wall=last.end_wall,
        reason=last.reason,
        file=dataclasses.replace(first.file, whole=True),
    )


def whole_check(pieces: list[Utterance], audio: np.ndarray) -> Utterance:
    """A short file's whole audio once more, decoded with timestamps and placed on its
    segments' speech, to check the whole decode (WHOLE_KEEPS). It is the very same audio,
    so the recognizer encodes it once for both (models/encoded.py); its times run from the
    file's start."""
    first, last = pieces[0], pieces[-1]
    return dataclasses.replace(
        first,
        audio=audio,
        start_s=0.0,
        start_wall=first.start_wall - first.start_s,
        end_s=last.end_s,
        end_wall=last.end_wall,
        reason=last.reason,
        timestamps=True,
        speech=tuple((round(p.start_s, 3), round(p.end_s, 3)) for p in pieces),
    )


# Without timestamps Whisper may end a decode at a pause and leave the speech after it out
# (a 25 s file of four sentences came back as its first one). So a short file with several
# segments is recognized both whole and as it would be otherwise (its chunk or segments),
# and the whole text is kept unless it says clearly less: under this share of the words.
WHOLE_KEEPS = 0.9


def keep_whole(whole_text: str, other_texts: Sequence[str]) -> bool:
    """Whether a short file's whole-audio text stands for it (see WHOLE_KEEPS)."""
    other = sum(spoken_words(t) for t in other_texts)
    return spoken_words(whole_text) >= WHOLE_KEEPS * other


# Whisper's own segment times are coarse (tiny models often say whole seconds); a bound
# within this of a VAD speech bound is moved onto it.
SNAP_S = 2.0


def _nearest(value: float, candidates: list[float]) -> float:
    best = min(candidates, key=lambda c: abs(c - value), default=value)
    return best if abs(best - value) <= SNAP_S else value


def timed_segments(
    segments: Sequence[tuple[float, float, str]], speech: Sequence[tuple[float, float]], duration_s: float
) -> tuple[TimedText, ...]:
    """The recognizer's timed segments of a chunk, their bounds placed on the VAD's speech
    bounds where one is near (starts on starts, ends on ends), kept in order. A segment the
    model never closed ends with the speech it starts in."""
    starts = [s for s, _ in speech]
    ends = [e for _, e in speech]
    out: list[TimedText] = []
    floor = 0.0
    for start, end, text in segments:
        s = max(floor, min(_nearest(start, starts), duration_s))
        if end <= start:  # open: to the end of the speech span it starts in
            end = next((e for b, e in speech if e >= s and b <= s + SNAP_S), duration_s)
        e = min(max(_nearest(end, ends), s), duration_s)
        out.append(TimedText(round(s, 3), round(e, 3), text))
        floor = e
    return tuple(out)


# Speech runs at 2-3 words a second; a segment with far fewer words than the speech it
# claims to span skipped some of it (tiny models end a timestamped decode early).
MIN_WORDS_PER_S = 1.0
# Chinese and Japanese are written without spaces, at 4-5 characters a second: two
# characters count as one word.
CHARS_PER_WORD = 2


def spoken_words(text: str) -> float:
    """About how many words a text says: spaced words, with runs of unspaced CJK script
    counted by their characters."""
    cjk = sum(1 for c in text if _unspaced(c))
    spaced = "".join(" " if _unspaced(c) else c for c in text).split()
    return len(spaced) + cjk / CHARS_PER_WORD


def _unspaced(c: str) -> bool:
    # CJK ideographs, kana, Hangul syllables (Korean is spaced, but by phrase, not word)
    return (
        "\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" or "\uf900" <= c <= "\ufaff"
    )


def _spans_of(seg: TimedText, speech: Sequence[tuple[float, float]]) -> tuple[list[int], float]:
    """The speech spans a segment overlaps (by more than 0.1 s), and their seconds of speech."""
    spans = [k for k, (b, e) in enumerate(speech) if min(e, seg.end_s) - max(b, seg.start_s) > 0.1]
    return spans, sum(speech[k][1] - speech[k][0] for k in spans)


def settle(
    segments: Sequence[TimedText], speech: Sequence[tuple[float, float]]
) -> tuple[tuple[TimedText, ...], list[tuple[float, float]]]:
    """The chunk's segments, and the speech they do not account for: spans no segment
    overlaps; spans after the first of a segment whose words are too few for the speech it
    spans (that segment is cut back to its first span); and the head or tail of a span its
    segments leave out by more than SNAP_S (more than coarse timing explains: a decode that
    ended before the speech did, seen dropping a sentence's last five words)."""
    covered: dict[int, list[TimedText]] = {}
    out = []
    for seg in segments:
        spans, talk = _spans_of(seg, speech)
        if len(spans) > 1 and spoken_words(seg.raw_text) < MIN_WORDS_PER_S * talk:
            spans = spans[:1]
            seg = dataclasses.replace(seg, end_s=min(seg.end_s, speech[spans[0]][1]))
        for k in spans:
            covered.setdefault(k, []).append(seg)
        out.append(seg)
    left_out = []
    for k, (begin, end) in enumerate(speech):
        if k not in covered:
            left_out.append((begin, end))
            continue
        first, last = min(s.start_s for s in covered[k]), max(s.end_s for s in covered[k])
        if first - begin > SNAP_S:
            left_out.append((begin, first))
        if end - last > SNAP_S:
            left_out.append((last, end))
    return tuple(out), sorted(left_out)


# A segment over several spans of speech with words enough for them (MIN_WORDS_PER_S) but
# fewer than this per second of them may still have left its last span out: tiny.en ended
# a 20 s file's timestamped decode a sentence early and put its closing timestamp at the
# end of the audio, over 2.5 s of speech it never wrote (1.8 words a second over its spans;
# speech runs at 2-3). That span is recognized on its own as well, and its text is kept only
# where the segment does not already say it (``already_said``).
DOUBT_WORDS_PER_S = 2.0


def doubtful_tails(segments: Sequence[TimedText], speech: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The last span of speech of each settled segment that spans several with few words
    for them (DOUBT_WORDS_PER_S)."""
    out = []
    for seg in segments:
        spans, talk = _spans_of(seg, speech)
        if len(spans) > 1 and spoken_words(seg.raw_text) < DOUBT_WORDS_PER_S * talk:
            out.append(speech[spans[-1]])
    return out


def _tokens(text: str) -> list[str]:
    """Lower-case words without punctuation; unspaced CJK script one character a token."""
    spaced = "".join(f" {c} " if _unspaced(c) else c for c in text.lower())
    return [w for w in ("".join(c for c in word if c.isalnum()) for word in spaced.split()) if w]


def already_said(segments: Sequence[TimedText], span: tuple[float, float], addition: str) -> bool:
    """Whether most of ``addition``'s words (a doubtful span's own text) are in the segments
    around that span already: the one that claimed it, or a neighbour whose coarse times
    put the words beside it."""
    begin, end = span
    near = " ".join(s.raw_text for s in segments if s.end_s > begin - SNAP_S and s.start_s < end + SNAP_S)
    new, said = _tokens(addition), set(_tokens(near))
    return not new or sum(w in said for w in new) >= 0.5 * len(new)
