"""The recognize stage: shared by all rooms and batch jobs; batches utterances and runs the
model off the event loop, on the single model thread."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from models.tokenizer import latin_script
from pipeline.health import Progress
from pipeline.messages import SAMPLE_RATE, TimedText, Transcript, Utterance
from pipeline.stitch import JOIN_SCORE, JOINT_BONUS, join_score, without_strong_final

if TYPE_CHECKING:  # the model (and torch) stays out of the pipeline's import time
    from models.recognizer import Recognition, Recognizer

# Whisper sees 30 s at once; the joint audio is the two pieces with this much silence between.
JOINT_MAX_S = 30.0
# Previous texts kept for prompts: live rooms and the files of batch jobs (one "room" each).
MAX_ROOMS_REMEMBERED = 1024
JOINT_PAUSE_S = 0.3


@dataclass(frozen=True)
class RecognizeSettings:
    max_batch: int = 16
    max_wait_ms: int = 10
    prompt_previous: bool = True
    prompt_max_gap_s: float = 60.0
    hotwords: tuple[str, ...] = ()
    idle_release_s: float = 30.0
    # Joint decoding for the stitcher (see _joint_candidates): pieces of a room at most this
    # far apart; 0 turns it off.
    joint_max_gap_s: float = 0.0


@dataclass(frozen=True)
class RoomContext:
    hotwords: tuple[str, ...] = ()
    prompt_previous: bool | None = None  # None: the stage's setting
    stitch: bool = True  # the stitcher joins this room's pieces (joint decoding is for it)


@dataclass
class RecognizeCounters:
    batches: int = 0
    utterances: int = 0
    audio_seconds: float = 0.0
    empty: int = 0
    failed: int = 0
    releases: int = 0
    partials: int = 0
    partials_skipped: int = 0
    joint: int = 0
    gaps_filled: int = 0  # speech spans of batch chunks recognized again on their own
    model_seconds: float = 0.0  # time spent in model calls (the rest of a batch job's wall time went elsewhere)
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=100))  # the latest ones


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


def settle(
    segments: Sequence[TimedText], speech: Sequence[tuple[float, float]]
) -> tuple[tuple[TimedText, ...], list[tuple[float, float]]]:
    """The chunk's segments, and the speech spans they do not account for: spans no segment
    overlaps, and spans after the first of a segment whose words are too few for the speech
    it spans (that segment is cut back to its first span)."""
    covered: set[int] = set()
    out = []
    for seg in segments:
        spans = [k for k, (b, e) in enumerate(speech) if min(e, seg.end_s) - max(b, seg.start_s) > 0.1]
        talk = sum(speech[k][1] - speech[k][0] for k in spans)
        if len(spans) > 1 and len(seg.raw_text.split()) < MIN_WORDS_PER_S * talk:
            spans = spans[:1]
            seg = dataclasses.replace(seg, end_s=min(seg.end_s, speech[spans[0]][1]))
        covered.update(spans)
        out.append(seg)
    return tuple(out), [span for k, span in enumerate(speech) if k not in covered]


class RecognizeStage:
    """Takes utterances from ``inbox`` and puts transcripts into ``outbox``.

    It takes what is waiting, up to ``max_batch``, waiting at most ``max_wait_ms`` for
    company when alone; live rooms go before batch work (``Utterance.priority``). Every
    model call runs in ``executor``, which must have exactly one worker thread. ``None`` in
    the inbox means no more input: the stage finishes what it has and passes ``None`` on.
    """

    def __init__(
        self,
        recognizer: Recognizer,
        executor: Executor,
        inbox: asyncio.Queue[Utterance | None],
        outbox: asyncio.Queue[Transcript | None],
        settings: RecognizeSettings | None = None,
        rooms: dict[str, RoomContext] | None = None,
        on_partial: Callable[[Utterance, Recognition], None] | None = None,
        hotwords_for: Callable[[str], Sequence[str]] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.executor = executor
        self.inbox = inbox
        self.outbox = outbox
        self.settings = settings or RecognizeSettings()
        self.rooms = rooms or {}
        self.on_partial = on_partial
        self.hotwords_for = hotwords_for  # overrides settings and rooms (hotwords set at run time)
        self.counters = RecognizeCounters()
        self.progress = progress or Progress()  # the model calls, for the watchdog
        self.latencies: deque[float] = deque(maxlen=1000)  # ms per model call, the latest ones
        self.log = structlog.get_logger()
        self._waiting: list[Utterance] = []
        self._ended = False
        self._previous: dict[str, tuple[str, float]] = {}  # room -> (text, end wall time)
        self._last_piece: dict[str, tuple[Utterance, str]] = {}  # room -> (piece, its text)
        self._released = True

    @property
    def waiting(self) -> int:
        """Utterances taken from the inbox that wait for a batch."""
        return len(self._waiting)

    async def run(self) -> None:
        while True:
            await self._gather()
            if not self._waiting and self._ended:
                await self.outbox.put(None)
                return
            self._drop_stale_partials()
            if not self._waiting:
                continue
            # Live rooms first, then batch work, then partials; the oldest first within each.
            self._waiting.sort(key=lambda u: (u.priority, u.decided_at))
            batch = self._waiting[: self.settings.max_batch]
            del self._waiting[: self.settings.max_batch]
            for language, timestamps in dict.fromkeys((u.language, u.timestamps) for u in batch):
                group = [u for u in batch if u.language == language and u.timestamps == timestamps]
                await self._recognize(group, language)

    def _drop_stale_partials(self) -> None:
        """Partials never queue up: only the newest per room is kept, and none while finished
        utterances wait (the recognizer is behind; a fresher partial will come)."""
        partials = [u for u in self._waiting if u.partial]
        if not partials:
            return
        finished = [u for u in self._waiting if not u.partial]
        keep: dict[str, Utterance] = {}
        if not finished:
            for u in partials:
                if u.room not in keep or u.decided_at > keep[u.room].decided_at:
                    keep[u.room] = u
        self.counters.partials_skipped += len(partials) - len(keep)
        self._waiting = finished + list(keep.values())

    async def _get(self, wait_s: float | None) -> bool:
        """One item from the inbox into ``_waiting``; False on timeout."""
        try:
            item = await asyncio.wait_for(self.inbox.get(), wait_s)
        except TimeoutError:
            return False
        if item is None:
            self._ended = True
        else:
            self._waiting.append(item)
        return True

    async def _gather(self) -> None:
        s = self.settings
        if not self._waiting and not self._ended:
            idle_timeout = s.idle_release_s if (s.idle_release_s > 0 and not self._released) else None
            if not await self._get(idle_timeout):
                await self._release_memory()
                await self._get(None)
        # Everything already waiting comes in (the inbox is bounded), so priorities apply
        # to all of it; then a short wait for company if the batch is not full.
        while not self.inbox.empty() and not self._ended:
            await self._get(None)
        deadline = time.monotonic() + s.max_wait_ms / 1000
        while len(self._waiting) < s.max_batch and not self._ended:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._get(remaining):
                break

    async def _release_memory(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.recognizer.release_memory)
        self._released = True
        self.counters.releases += 1
        self.log.info("idle: cached model memory released")

    def _prompt(self, utt: Utterance) -> str:
        room = self.rooms.get(utt.room, RoomContext())
        parts = list(self.hotwords(utt.room))
        use_previous = self.settings.prompt_previous if room.prompt_previous is None else room.prompt_previous
        # A batch chunk is up to 28 s of its own context; with the previous chunk's text as
        # prompt, timestamped decoding was seen to stop after its first segment.
        use_previous = use_previous and not utt.timestamps
        previous = self._previous.get(utt.room)
        if use_previous and previous and utt.start_wall - previous[1] <= self.settings.prompt_max_gap_s:
            return (", ".join(parts) + ". " if parts else "") + previous[0]
        return ", ".join(parts)

    async def _call(self, batch: list[Utterance], language: str | None) -> list[Recognition]:
        audios = [u.audio for u in batch]
        prompts = [self._prompt(u) for u in batch]
        hotwords: list[Sequence[str]] = [self.hotwords(u.room) for u in batch]
        self._released = False
        call = self.recognizer.recognize
        if batch[0].timestamps:  # batch chunks (the batch holds only those)
            call = functools.partial(call, timestamps=True)
        return await self._model(call, audios, language, prompts, hotwords)

    async def _model(self, call: Callable[..., list[Recognition]], *args: Any) -> list[Recognition]:
        """One model call on the model thread, watched by the watchdog and timed."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            with self.progress.busy("recognize"):
                return await loop.run_in_executor(self.executor, call, *args)
        finally:
            self.counters.model_seconds += time.monotonic() - started

    def hotwords(self, room: str) -> tuple[str, ...]:
        """The global hotwords and the room's, once each; for an English-only model only
        those in Latin script (Chinese hotwords in its prompt made it write Chinese)."""
        if self.hotwords_for is not None:
            words = tuple(self.hotwords_for(room))
        else:
            context = self.rooms.get(room, RoomContext())
            words = tuple(dict.fromkeys((*self.settings.hotwords, *context.hotwords)))
        if getattr(self.recognizer, "multilingual", True):
            return words
        return tuple(w for w in words if latin_script(w))

    async def _recognize(self, batch: list[Utterance], language: str | None) -> None:
        started = time.monotonic()
        try:
            results = await self._call(batch, language)
        except Exception:
            if len(batch) > 1:
                # One bad item must not lose the others: retry them one at a time.
                self.log.exception("batch recognition failed; retrying one by one", size=len(batch))
                for utt in batch:
                    await self._recognize([utt], language)
                return
            self.counters.failed += 1
            utt = batch[0]
            self.log.exception("recognition failed", room=utt.room, utterance_id=utt.id)
            if utt.source is not None and not utt.partial:  # the batch job must hear of it
                name = getattr(self.recognizer, "name", "?")
                await self.outbox.put(
                    Transcript(utt, "", "", language or "", 0.0, name, 0.0, error="recognition failed")
                )
            return
        elapsed_ms = (time.monotonic() - started) * 1000
        self.latencies.append(elapsed_ms)
        self.counters.batches += 1
        self.counters.batch_sizes.append(len(batch))
        transcripts: list[Transcript] = []
        for utt, result in zip(batch, results, strict=True):
            if utt.partial:
                self.counters.partials += 1
                if self.on_partial is not None and result.text:
                    self.on_partial(utt, result)
                continue
            self.counters.utterances += 1
            self.counters.audio_seconds += utt.duration_s
            log = self.log.bind(room=utt.room, utterance_id=utt.id)
            if not result.text:
                self.counters.empty += 1
                log.info("no speech recognized", reason=result.rejected, no_speech_prob=round(result.no_speech_prob, 3))
                if utt.source is None:
                    continue
                # Batch work: an empty transcript still goes on, so the job can tell when a
                # file's every segment is done (pipeline/batch.py); nothing publishes it.
            if result.text:
                self._previous.pop(utt.room, None)
                self._previous[utt.room] = (result.text, utt.end_wall)
                if len(self._previous) > MAX_ROOMS_REMEMBERED:  # batch files come and go: forget the oldest
                    del self._previous[next(iter(self._previous))]
            log.info(
                "utterance recognized",
                recognize_ms=round(elapsed_ms),
                batch=len(batch),
                temperature=result.temperature,
                text=result.text,
            )
            transcripts.append(
                Transcript(
                    utterance=utt,
                    text=result.text,
                    raw_text=result.text,
                    language=result.language,
                    confidence=result.confidence,
                    model=self.recognizer.name,
                    recognize_ms=elapsed_ms,
                    segments=timed_segments(result.segments, utt.speech, utt.duration_s),
                )
            )
        transcripts = await self._fill_gaps(transcripts, language)
        for t in await self._with_joint(transcripts, language):
            await self.outbox.put(t)

    async def _fill_gaps(self, transcripts: list[Transcript], language: str | None) -> list[Transcript]:
        """Speech spans of a chunk that its timestamped decode left out are recognized on
        their own (one more call for all of them), so a chunk never loses words."""
        wanted: list[tuple[int, float, float]] = []
        out = list(transcripts)
        for i, t in enumerate(out):
            if t.utterance.timestamps:
                segments, gaps = settle(t.segments, t.utterance.speech)
                out[i] = dataclasses.replace(t, segments=segments)
                wanted += [(i, b, e) for b, e in gaps]
        if not wanted:
            return out
        audios = [out[i].utterance.audio[round(b * SAMPLE_RATE) : round(e * SAMPLE_RATE)] for i, b, e in wanted]
        try:
            results = await self._model(self.recognizer.recognize, audios, language)
        except Exception:
            self.log.exception("recognizing a chunk's left-out speech failed", spans=len(wanted))
            return out
        for (i, b, e), result in zip(wanted, results, strict=True):
            self.counters.gaps_filled += 1
            if result.text:
                t = out[i]
                merged = sorted((*t.segments, TimedText(b, e, result.text)), key=lambda s: s.start_s)
                text = " ".join(s.raw_text for s in merged)
                out[i] = dataclasses.replace(t, segments=tuple(merged), text=text, raw_text=text)
        return out

    def _joint_candidates(self, transcripts: list[Transcript]) -> list[tuple[int, Utterance]]:
        """Pieces to recognize once more together with the room's previous piece.

        The texts of two pieces say a lot ("turn on the | kitchen lights") but tiny models
        punctuate fragments as sentences; the recognizer hearing both pieces as one stretch
        is a second opinion: one sentence, or a full stop between them (pipeline/stitch.py,
        JOINT_BONUS). Pairs whose texts cannot reach a join even with it cost nothing."""
        chosen: list[tuple[int, Utterance]] = []
        for i, t in enumerate(transcripts):
            u = t.utterance
            if u.source is not None:  # batch work is never stitched
                continue
            previous = self._last_piece.get(u.room)
            self._last_piece[u.room] = (u, t.raw_text)
            if previous is None or self.settings.joint_max_gap_s <= 0:
                continue
            if not self.rooms.get(u.room, RoomContext()).stitch:
                continue
            first, first_text = previous
            gap_s = u.start_wall - first.end_wall
            if not 0 <= gap_s <= self.settings.joint_max_gap_s:
                continue
            if first.duration_s + JOINT_PAUSE_S + u.duration_s > JOINT_MAX_S:
                continue
            # As the stitcher will score it if the joint decode hears one sentence.
            score = join_score(without_strong_final(first_text), t.raw_text, gap_s, t.language)
            if score >= JOIN_SCORE - JOINT_BONUS:
                chosen.append((i, first))
        return chosen

    async def _with_joint(self, transcripts: list[Transcript], language: str | None) -> list[Transcript]:
        chosen = self._joint_candidates(transcripts)
        if not chosen:
            return transcripts
        pause = np.zeros(round(JOINT_PAUSE_S * SAMPLE_RATE), np.float32)
        audios = [np.concatenate([first.audio, pause, transcripts[i].utterance.audio]) for i, first in chosen]
        rooms = [transcripts[i].utterance.room for i, _ in chosen]
        hotwords: list[Sequence[str]] = [self.hotwords(room) for room in rooms]
        prompts = [", ".join(words) for words in hotwords]
        try:
            results = await self._model(self.recognizer.recognize, audios, language, prompts, hotwords)
        except Exception:
            # The pieces still go out, judged by their texts alone.
            self.log.exception("joint recognition failed", size=len(audios))
            return transcripts
        out = list(transcripts)
        for (i, first), result in zip(chosen, results, strict=True):
            self.counters.joint += 1
            out[i] = dataclasses.replace(out[i], joint_with=first.id, joint_raw=result.text)
            self.log.info("pieces recognized together", utterance_id=out[i].utterance.id, text=result.text)
        return out
