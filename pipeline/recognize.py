"""The recognize stage: shared by all rooms, batches utterances, runs the model off the loop."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from pipeline.messages import Transcript, Utterance

if TYPE_CHECKING:  # the model (and torch) stays out of the pipeline's import time
    from models.recognizer import Recognition, Recognizer


@dataclass
class RecognizeCounters:
    batches: int = 0
    utterances: int = 0
    empty: int = 0
    failed: int = 0
    last_batch_size: int = 0


class RecognizeStage:
    """Takes utterances from ``inbox`` and puts transcripts into ``outbox``.

    Everything already waiting (up to ``max_batch``) goes into one model call; all model
    calls run in ``executor``, which must have exactly one worker thread. ``None`` in the
    inbox means no more input: the stage finishes what it has and passes ``None`` on.
    """

    def __init__(
        self,
        recognizer: Recognizer,
        executor: Executor,
        inbox: asyncio.Queue[Utterance | None],
        outbox: asyncio.Queue[Transcript | None],
        max_batch: int = 8,
    ) -> None:
        self.recognizer = recognizer
        self.executor = executor
        self.inbox = inbox
        self.outbox = outbox
        self.max_batch = max_batch
        self.counters = RecognizeCounters()
        self.log = structlog.get_logger()

    async def run(self) -> None:
        while True:
            first = await self.inbox.get()
            if first is None:
                await self.outbox.put(None)
                return
            batch = [first]
            finished = False
            while len(batch) < self.max_batch and not self.inbox.empty():
                item = self.inbox.get_nowait()
                if item is None:
                    finished = True
                    break
                batch.append(item)
            for language in dict.fromkeys(u.language for u in batch):
                await self._recognize([u for u in batch if u.language == language], language)
            if finished:
                await self.outbox.put(None)
                return

    async def _call(self, batch: list[Utterance], language: str | None) -> list[Recognition]:
        loop = asyncio.get_running_loop()
        audios = [u.audio for u in batch]
        return await loop.run_in_executor(self.executor, self.recognizer.recognize, audios, language)

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
            self.log.exception("recognition failed", room=batch[0].room, utterance_id=batch[0].id)
            return
        done = time.monotonic()
        elapsed_ms = (done - started) * 1000
        self.counters.batches += 1
        self.counters.last_batch_size = len(batch)
        for utt, result in zip(batch, results, strict=True):
            self.counters.utterances += 1
            log = self.log.bind(room=utt.room, utterance_id=utt.id)
            if not result.text:
                self.counters.empty += 1
                log.info("no speech recognized", no_speech_prob=round(result.no_speech_prob, 3))
                continue
            log.info("utterance recognized", recognize_ms=round(elapsed_ms), batch=len(batch), text=result.text)
            await self.outbox.put(
                Transcript(
                    utterance=utt,
                    text=result.text,
                    raw_text=result.text,
                    language=result.language,
                    confidence=result.confidence,
                    model=self.recognizer.name,
                    recognize_ms=elapsed_ms,
                    recognized_at=done,
                )
            )
