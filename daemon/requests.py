"""One-shot recognitions for the daemon's other doors (the Wyoming server): a caller's audio
in, the written text out, through the same recognize and text stages as the rooms.

A request is batch work (``Work.BATCH`` with its own ``BatchFile`` job id): live rooms keep
their priority in the recognizer's batches, the stitcher passes it by, and the publish stage
hands its transcript back here instead of to MQTT. Audio longer than the model takes at once
goes as consecutive slices, recognized in one batch, their texts joined in order.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import numpy as np

from daemon.runtime import Runtime
from pipeline.messages import SAMPLE_RATE, BatchFile, Transcript, Utterance, Work
from pipeline.stitch_rules import NO_SPACE_LANGUAGES


@dataclass(frozen=True)
class Answer:
    text: str
    language: str
    pieces: tuple[str, ...]  # each slice's text, in order


class RequestError(RuntimeError):
    """The request cannot be served now (no model yet, or the daemon is stopping)."""


class Requests:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._numbers = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Transcript]] = {}
        self.served = 0

    def deliver(self, t: Transcript) -> bool:
        """A transcript of one of our requests (True), or someone else's (False)."""
        key = self._key(t.utterance)
        future = self._waiting.pop(key, None) if key is not None else None
        if future is None:
            return False
        if not future.done():
            future.set_result(t)
        return True

    @staticmethod
    def _key(u: Utterance) -> str | None:
        return f"{u.file.job}/{u.file.index}" if u.file is not None and u.file.job.startswith("req") else None

    async def recognize(self, audio: np.ndarray, language: str | None, source: str) -> Answer:
        """``audio``: 16 kHz mono float32. Raises RequestError before the model is loaded."""
        rt = self.rt
        if rt.pipeline is None or rt.recognizer is None:
            raise RequestError("the model is still loading")
        job = f"req{next(self._numbers)}"
        step = int(rt.recognizer.capabilities.max_audio_s * SAMPLE_RATE)
        slices = [audio[i : i + step] for i in range(0, max(len(audio), 1), step)] or [audio]
        loop = asyncio.get_running_loop()
        futures = []
        now_wall, now = time.time(), time.monotonic()
        for index, part in enumerate(slices):
            start_s = index * step / SAMPLE_RATE
            end_s = start_s + len(part) / SAMPLE_RATE
            utt = Utterance(
                room=source, id=f"{source}-{job}-{index}", audio=part.astype(np.float32, copy=False),
                start_s=start_s, end_s=end_s, start_wall=now_wall - len(audio) / SAMPLE_RATE + start_s,
                end_wall=now_wall - len(audio) / SAMPLE_RATE + end_s, reason="request", decided_at=now,
                language=language, kind=Work.BATCH, file=BatchFile(job, index, source),
            )  # fmt: skip
            future: asyncio.Future[Transcript] = loop.create_future()
            self._waiting[f"{job}/{index}"] = future
            futures.append(future)
            await rt.pipeline.utterances.put(utt)
        try:
            done = await asyncio.gather(*futures)
        finally:
            for index in range(len(slices)):
                self._waiting.pop(f"{job}/{index}", None)
        self.served += 1
        return _answer(done, language)


def _answer(done: list[Transcript], language: str | None) -> Answer:
    failed = [t.error for t in done if t.error]
    if failed:
        raise RequestError(f"recognition failed: {failed[0]}")
    spoken = [t for t in done if t.text.strip()]
    lang = spoken[0].language if spoken else (language or (done[0].language if done else "") or "en")
    # Slices are cut by length, not by sentence: their texts keep their own punctuation.
    joiner = "" if lang.split("-")[0] in NO_SPACE_LANGUAGES else " "
    text = joiner.join(t.text.strip() for t in spoken)
    return Answer(text, lang, tuple(t.text for t in spoken))
