"""The recognize stage: shared by all rooms and batch jobs; batches utterances and runs the
model off the event loop, on the single model thread."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.chunks import already_said, doubtful_tails, settle, timed_segments
from pipeline.health import BusyWatch
from pipeline.journal import Journal
from pipeline.messages import SAMPLE_RATE, TimedText, Transcript, Utterance
from pipeline.recognize_settings import RecognizeCounters, RecognizeSettings
from pipeline.roomstate import RoomStates
from pipeline.speculation import Speculations
from pipeline.stage import Stage
from pipeline.stitch_rules import JOINT_PAUSE_S, joint_partner

if TYPE_CHECKING:  # the model (and torch) stays out of the pipeline's import time
    from models.api import Recognition, Recognizer


class RecognizeStage(Stage[Utterance, Transcript, RecognizeCounters]):
    """Takes utterances from ``inbox`` and puts transcripts into ``output``.

    It takes what is waiting, up to ``max_batch``, waiting at most ``max_wait_ms`` for
    company when alone; live rooms go before batch work, partials last
    (``Utterance.priority``). Every model call runs in ``executor``, which must have exactly
    one worker thread. What the model is asked (a prompt, hotwords, timestamps) follows its
    declared capabilities.
    """

    name: ClassVar[str] = "recognize"

    def __init__(
        self,
        inbox: asyncio.Queue[Utterance | None],
        output: asyncio.Queue[Transcript | None],
        settings: RecognizeSettings,
        *,
        recognizer: Recognizer,
        executor: Executor,
        rooms: RoomStates,
        on_partial: Callable[[Utterance, Recognition], None] | None = None,
        watch: BusyWatch | None = None,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(inbox, output)
        self.settings = settings
        self.journal = journal
        self.recognizer = recognizer
        self.capabilities = recognizer.capabilities
        self.executor = executor
        self.rooms = rooms
        self.on_partial = on_partial
        self.counters = RecognizeCounters()
        self.watch = watch or BusyWatch()  # the model calls, for the watchdog
        self._waiting: list[Utterance] = []
        self.speculations = Speculations(self.counters)
        self._ended = False
        self._released = True

    def depth(self) -> int:
        """Utterances taken from the inbox that wait for a batch (priorities apply to them)."""
        return len(self._waiting)

    async def run(self) -> None:
        while True:
            await self._gather()
            if not self._waiting and self._ended:
                await self.end()
                return
            self._drop_stale_partials()
            self._waiting = self.speculations.superseded_dropped(self._waiting)
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
        await self._model(self.recognizer.release_memory)
        self._released = True
        self.counters.releases += 1
        self.log.info("idle: cached model memory released")

    def _prompt(self, utt: Utterance) -> str:
        """The room's hotwords, then its previous text when recent (not for batch chunks: up
        to 28 s of their own context; with the previous chunk's text as prompt, timestamped
        decoding was seen to stop after its first segment)."""
        if not self.capabilities.prompt:
            return ""
        parts = list(self._decoding_hotwords(utt.room))
        room = self.rooms[utt.room]
        use_previous = self.settings.prompt_previous if room.prompt_previous is None else room.prompt_previous
        previous = self.rooms.previous.get(utt.room) if use_previous and not utt.timestamps else None
        if previous is not None and utt.start_wall - previous[1] <= self.settings.prompt_max_gap_s:
            return (", ".join(parts) + ". " if parts else "") + previous[0]
        return ", ".join(parts)

    def _endpointed(self, utt: Utterance) -> bool:
        """A live piece the stitcher decides on (it ends a sentence or waits for more)."""
        return not utt.batch and not utt.partial and self.settings.stitch_max_gap_s > 0 and self.rooms[utt.room].stitch

    def _decoding_hotwords(self, room: str) -> tuple[str, ...]:
        return self.rooms.decoding_hotwords(room, latin_only=not self.capabilities.multilingual)

    def _hotwords(self, rooms: Sequence[str]) -> list[Sequence[str]] | None:
        if not self.capabilities.hotword_bias:
            return None
        return [self._decoding_hotwords(room) for room in rooms]

    async def _call(self, batch: list[Utterance], language: str | None) -> list[Recognition]:
        audios = [u.audio for u in batch]
        prompts = [self._prompt(u) for u in batch]
        hotwords = self._hotwords([u.room for u in batch])
        self._released = False
        call: Callable[..., list[Recognition]] = self.recognizer.recognize
        if batch[0].timestamps:  # batch chunks (the batch holds only those)
            call = functools.partial(call, timestamps=True)
        elif self.capabilities.sentence_end and any(self._endpointed(u) for u in batch):
            call = functools.partial(call, sentence_end=True)  # the stitcher's evidence
        results: list[Recognition] = await self._model(call, audios, language, prompts, hotwords)
        return results

    async def _model(self, call: Callable[..., Any], *args: Any) -> Any:
        """One model call on the model thread, watched by the watchdog and timed."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            with self.watch.busy("recognize"):
                return await loop.run_in_executor(self.executor, call, *args)
        finally:
            self.counters.model_seconds += time.monotonic() - started

    async def _recognize(self, batch: list[Utterance], language: str | None) -> None:
        # By place in the batch, not by id: batch files of the same name share ids.
        ready: dict[int, Transcript | None] = {}  # finished pieces whose speculation stands
        for i, u in enumerate(batch):
            if (spec := self.speculations.take(u)) is not None:
                ready[i] = self._speculated(spec)
        todo = [i for i in range(len(batch)) if i not in ready]
        recognized: dict[int, Transcript] = {}
        if todo:
            started = time.monotonic()
            utterances = [batch[i] for i in todo]
            try:
                results = await self._call(utterances, language)
            except Exception:
                await self._failed(utterances, language)
                return
            elapsed_ms = (time.monotonic() - started) * 1000
            c = self.counters
            c.latencies_ms.append(elapsed_ms)
            c.batches += 1
            c.batch_sizes.append(len(todo))
            for i, result in zip(todo, results, strict=True):
                if t := self._transcript(batch[i], result, elapsed_ms, len(todo)):
                    recognized[i] = t
        in_order = [t for i in range(len(batch)) if (t := ready.get(i) or recognized.get(i))]
        transcripts = await self._fill_gaps(in_order, language)
        for t in await self._with_joint(transcripts, language):
            if self.journal is not None and not t.utterance.batch:
                await self.journal.keep(t)  # on disk before it waits in the stitcher
            await self.emit(t)

    async def _failed(self, batch: list[Utterance], language: str | None) -> None:
        if len(batch) > 1:
            # One bad item must not lose the others: retry them one at a time.
            self.log.exception("batch recognition failed; retrying one by one", size=len(batch))
            for utt in batch:
                await self._recognize([utt], language)
            return
        self.counters.failed += 1
        utt = batch[0]
        self.log.exception("recognition failed", room=utt.room, utterance_id=utt.id)
        if utt.batch:  # the batch job must hear of it
            name = self.recognizer.name
            await self.emit(Transcript(utt, "", "", language or "", 0.0, name, 0.0, error="recognition failed"))
        else:
            self.rooms[utt.room].piece_gone(utt.start_wall)

    def _transcript(self, utt: Utterance, result: Recognition, elapsed_ms: float, size: int) -> Transcript | None:
        """The transcript of one result; None for a partial (handed to ``on_partial``) and for
        a live utterance with no text. Batch work keeps its empty transcripts: the job counts
        every segment to know when a file is done (pipeline/batch.py)."""
        if utt.partial:
            self.counters.partials += 1
            if self.on_partial is not None and result.text:
                self.on_partial(utt, result)
            return None
        if utt.speculative:
            self.speculations.keep(self._make_transcript(utt, result, elapsed_ms))
            return None
        self._count_finished(utt, result.text)
        log = self.log.bind(room=utt.room, utterance_id=utt.id)
        if not result.text:
            log.info("no speech recognized", reason=result.rejected, no_speech_prob=round(result.no_speech_prob, 3))
            if not utt.batch:
                self.rooms[utt.room].piece_gone(utt.start_wall)
                return None
        log.info(
            "utterance recognized",
            recognize_ms=round(elapsed_ms),
            batch=size,
            temperature=result.temperature,
            text=result.text,
        )
        return self._make_transcript(utt, result, elapsed_ms)

    def _count_finished(self, utt: Utterance, text: str) -> None:
        """A finished piece counted, and its text kept as its room's next prompt."""
        self.counters.utterances += 1
        self.counters.audio_seconds += utt.duration_s
        if not text:
            self.counters.empty += 1
        else:
            self.rooms.remember(utt.room, text, utt.end_wall)

    def _speculated(self, t: Transcript) -> Transcript | None:
        """A finished piece whose speculation stood: counted like any recognized piece, and
        logged with the same event, marked; None when it found no text."""
        u = t.utterance
        self._count_finished(u, t.text)
        if not t.text:
            self.rooms[u.room].piece_gone(u.start_wall)
            return None
        log = self.log.bind(room=u.room, utterance_id=u.id)
        log.info("utterance recognized", recognize_ms=round(t.recognize_ms), speculated=True, text=t.text)
        return t

    def _make_transcript(self, utt: Utterance, result: Recognition, elapsed_ms: float) -> Transcript:
        return Transcript(
            utterance=utt,
            text=result.text,
            raw_text=result.text,
            language=result.language,
            confidence=result.confidence,
            model=self.recognizer.name,
            recognize_ms=elapsed_ms,
            segments=timed_segments(result.segments, utt.speech, utt.duration_s),
            sentence_end=result.sentence_end,
            audio_events=result.audio_events,
            emotion=result.emotion,
        )

    async def _fill_gaps(self, transcripts: list[Transcript], language: str | None) -> list[Transcript]:
        """Speech spans of a chunk that its timestamped decode left out are recognized on
        their own (one more call for all of them), so a chunk never loses words; so are
        doubtful ones (chunks.doubtful_tails), whose text is kept where it is new."""
        wanted: list[tuple[int, float, float, bool]] = []  # (transcript, span, only if not said)
        out = list(transcripts)
        for i, t in enumerate(out):
            if t.utterance.timestamps:
                segments, gaps = settle(t.segments, t.utterance.speech)
                out[i] = dataclasses.replace(t, segments=segments)
                wanted += [(i, b, e, False) for b, e in gaps]
                doubts = doubtful_tails(segments, t.utterance.speech)
                wanted += [(i, b, e, True) for b, e in doubts if (b, e) not in gaps]
        if not wanted:
            return out
        audios = [out[i].utterance.audio[round(b * SAMPLE_RATE) : round(e * SAMPLE_RATE)] for i, b, e, _ in wanted]
        try:
            results: list[Recognition] = await self._model(self.recognizer.recognize, audios, language)
        except Exception:
            self.log.exception("recognizing a chunk's left-out speech failed", spans=len(wanted))
            return out
        for (i, b, e, doubtful), result in zip(wanted, results, strict=True):
            self.counters.gaps_filled += 1
            if result.text and not (doubtful and already_said(out[i].segments, (b, e), result.text)):
                t = out[i]
                merged = sorted((*t.segments, TimedText(b, e, result.text)), key=lambda s: s.start_s)
                text = " ".join(s.raw_text for s in merged)
                out[i] = dataclasses.replace(t, segments=tuple(merged), text=text, raw_text=text)
        return out

    def _joint_candidates(self, transcripts: list[Transcript]) -> list[tuple[int, Utterance, str]]:
        """(index, the room's previous piece, its text) for each live piece to recognize once
        more together with that piece (pipeline/stitch_rules.joint_partner)."""
        chosen: list[tuple[int, Utterance, str]] = []
        for i, t in enumerate(transcripts):
            u = t.utterance
            if u.batch:  # batch work is never stitched
                continue
            room = self.rooms[u.room]
            previous, room.last_piece = room.last_piece, (u, t)
            s = self.settings
            max_gap_s = s.stitch_max_gap_s if room.stitch and s.joint_decode else 0.0
            if previous is not None and (first := joint_partner(previous, t, max_gap_s, s.end_threshold)) is not None:
                chosen.append((i, first, previous[1].raw_text))
        return chosen

    async def _with_joint(self, transcripts: list[Transcript], language: str | None) -> list[Transcript]:
        chosen = self._joint_candidates(transcripts)
        if not chosen:
            return transcripts
        pause = np.zeros(round(JOINT_PAUSE_S * SAMPLE_RATE), np.float32)
        audios = [np.concatenate([first.audio, pause, transcripts[i].utterance.audio]) for i, first, _ in chosen]
        rooms = [transcripts[i].utterance.room for i, _, _ in chosen]
        prompts = [", ".join(self._decoding_hotwords(room)) if self.capabilities.prompt else "" for room in rooms]
        call: Callable[..., list[Recognition]] = self.recognizer.recognize
        if self.capabilities.sentence_end:
            # Does a sentence end after the first piece's words, hearing what came next?
            call = functools.partial(call, sentence_end=[text for _, _, text in chosen])
        try:
            results: list[Recognition] = await self._model(call, audios, language, prompts, self._hotwords(rooms))
        except Exception:
            # The pieces still go out, judged by their texts alone.
            self.log.exception("joint recognition failed", size=len(audios))
            return transcripts
        out = list(transcripts)
        for (i, first, _), result in zip(chosen, results, strict=True):
            self.counters.joint += 1
            out[i] = dataclasses.replace(
                out[i], joint_with=first.id, joint_raw=result.text, joint_end=result.sentence_end
            )
            self.log.info("pieces recognized together", utterance_id=out[i].utterance.id, text=result.text)
        return out
