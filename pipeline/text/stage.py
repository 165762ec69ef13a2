"""The text stage: recognizer text in, written text out, between recognize and publish."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from pipeline.messages import Transcript
from pipeline.text.dictionary import DictionaryError
from pipeline.text.processor import TextProcessor


class TextStage:
    """Applies the text rules to each transcript (well under a millisecond each, so inline
    on the event loop). A rule that fails publishes the recognizer's text rather than
    losing the utterance; a transcript left empty (it was all fillers) is dropped, logged."""

    def __init__(
        self,
        processor: TextProcessor,
        inbox: asyncio.Queue[Transcript | None],
        outbox: asyncio.Queue[Transcript | None],
        hotwords: Callable[[str], Sequence[str]] = lambda room: (),
    ) -> None:
        self.processor = processor
        self.hotwords = hotwords
        self.inbox = inbox
        self.outbox = outbox
        self.log = structlog.get_logger().bind(stage="text")
        self.emptied = 0
        self.failures = 0

    async def run(self) -> None:
        while (item := await self.inbox.get()) is not None:
            out = self.process(item)
            if out is not None:
                await self.outbox.put(out)
        await self.outbox.put(None)

    def reload_dictionary(self) -> dict[str, Any]:
        """Re-read the dictionary now (the ``reload`` command); raises DictionaryError."""
        return {"entries": self.processor.dictionary.reload()}

    def process(self, t: Transcript) -> Transcript | None:
        try:
            if self.processor.dictionary.reload_if_changed():
                self.log.info("dictionary reloaded", entries=len(self.processor.dictionary.entries))
        except DictionaryError as exc:
            self.log.error("dictionary not reloaded; keeping the previous entries", error=str(exc))
        if t.segments:  # a timed chunk: each segment written on its own, the text their sum
            segments = tuple(dataclasses.replace(seg, text=self._rules(t, seg.raw_text)) for seg in t.segments)
            t = dataclasses.replace(t, segments=segments)
            text = " ".join(seg.text for seg in segments if seg.text.strip())
        else:
            text = self._rules(t, t.raw_text) if t.raw_text else ""
        if not text.strip() and t.utterance.source is not None:
            return dataclasses.replace(t, text="")  # batch work: the job counts every segment
        if not text.strip():
            self.emptied += 1
            self.log.info("nothing left after filler removal", utterance=t.utterance.id, raw_text=t.raw_text)
            return None
        joint_text = self._rules(t, t.joint_raw) if t.joint_raw else ""
        return dataclasses.replace(t, text=text, joint_text=joint_text)

    def _rules(self, t: Transcript, raw: str) -> str:
        try:
            return self.processor(raw, t.language, self.hotwords(t.utterance.room))
        except Exception:
            self.failures += 1
            self.log.exception("text rules failed; publishing the recognizer's text", utterance=t.utterance.id)
            return raw
