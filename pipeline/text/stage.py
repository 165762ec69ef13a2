"""The text stage: recognizer text in, written text out, between recognize and stitch."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.journal import Journal, pieces
from pipeline.messages import Transcript
from pipeline.roomstate import RoomStates
from pipeline.stage import Stage
from pipeline.text.dictionary import DictionaryError
from pipeline.text.processor import TextProcessor


@dataclass
class TextCounters:
    emptied: int = 0  # live transcripts left empty (all fillers) and dropped
    failures: int = 0  # a rule raised; the recognizer's text went out instead


class TextStage(Stage[Transcript, Transcript, TextCounters]):
    """Applies the text rules to each transcript (well under a millisecond each, so inline
    on the event loop), with the room's hotwords for correction. A rule that fails publishes
    the recognizer's text rather than losing the utterance; a live transcript left empty (it
    was all fillers) is dropped, logged."""

    name: ClassVar[str] = "text"

    def __init__(
        self,
        inbox: asyncio.Queue[Transcript | None],
        output: asyncio.Queue[Transcript | None],
        processor: TextProcessor,
        *,
        rooms: RoomStates,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(inbox, output)
        self.processor = processor
        self.rooms = rooms
        self.journal = journal
        self.counters = TextCounters()

    async def handle(self, item: Transcript) -> None:
        out = self.process(item)
        if out is not None:
            await self.emit(out)
        elif self.journal is not None:
            self.journal.settle(pieces(item))  # nothing left to publish: nothing to keep

    def reload_dictionary(self) -> dict[str, Any]:
        """Re-read the dictionary now (the ``reload`` command); raises DictionaryError."""
        return {"entries": self.processor.dictionary.reload()}

    def write(self, room: str, text: str, language: str) -> str:
        """One text through the rules with the room's hotwords (partials use this too)."""
        return self.processor(text, language, self.rooms.hotwords_for(room), self.rooms[room].zh_script)

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
        if not text.strip() and t.utterance.batch:
            return dataclasses.replace(t, text="")  # batch work: the job counts every segment
        if not text.strip():
            self.counters.emptied += 1
            self.log.info("nothing left after filler removal", utterance=t.utterance.id, raw_text=t.raw_text)
            return None
        joint_text = self._rules(t, t.joint_raw) if t.joint_raw else ""
        return dataclasses.replace(t, text=text, joint_text=joint_text)

    def _rules(self, t: Transcript, raw: str) -> str:
        try:
            return self.write(t.utterance.room, raw, t.language)
        except Exception:
            self.counters.failures += 1
            self.log.exception("text rules failed; publishing the recognizer's text", utterance=t.utterance.id)
            return raw
