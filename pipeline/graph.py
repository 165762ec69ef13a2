"""The one place that builds the stage graph after the sources:

    utterances -> recognize -> recognized -> text -> texts -> stitch -> transcripts

Rooms and batch jobs put into ``utterances``; whoever runs the graph takes ``transcripts``
(the daemon publishes them, ``roomscribe transcribe`` hands them to its job, the benches
read them). Without a stitcher (batch transcription) the text stage writes into
``transcripts`` itself. The daemon, ``roomscribe transcribe``, the demo and the benches all
build their graph here (daemon/wiring.py maps the config onto it), so they cannot drift.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.health import BusyWatch
from pipeline.journal import Journal
from pipeline.messages import Transcript, Utterance
from pipeline.recognize import RecognizeStage
from pipeline.recognize_settings import RecognizeSettings
from pipeline.roomstate import RoomStates
from pipeline.stage import Stage
from pipeline.stitch import StitchSettings, StitchStage
from pipeline.text.processor import TextProcessor
from pipeline.text.stage import TextStage

if TYPE_CHECKING:
    from models.api import Recognition, Recognizer

# Utterances waiting for the recognizer. When full, rooms wait (backpressure), and a
# real-time room's capture then drops its oldest frames and counts them.
UTTERANCE_QUEUE_SIZE = 64
TRANSCRIPT_QUEUE_SIZE = 64
# The names queue_depths() reports, in the graph's order.
QUEUES = ("utterances", "recognize_waiting", "recognized", "text", "publish")


@dataclass
class Pipeline:
    utterances: asyncio.Queue[Utterance | None]
    transcripts: asyncio.Queue[Transcript | None]
    rooms: RoomStates
    recognize: RecognizeStage
    text: TextStage
    stitch: StitchStage | None

    @property
    def stages(self) -> list[Stage[Any, Any, Any]]:
        """In order; each passes the end marker on to the next."""
        return [self.recognize, self.text, *([self.stitch] if self.stitch else [])]

    def queue_depths(self) -> dict[str, int]:
        """What waits where (the status command, the stats, systemd's STATUS=)."""
        return {
            "utterances": self.utterances.qsize(),
            "recognize_waiting": self.recognize.depth(),
            "recognized": self.text.inbox.qsize(),
            "text": self.stitch.inbox.qsize() if self.stitch else 0,
            "publish": self.transcripts.qsize(),
        }

    def held(self) -> int:
        """Everything inside the graph not yet handed out (the drain reports it when lost)."""
        return sum(self.queue_depths().values()) + (len(self.stitch.held) if self.stitch else 0)

    async def replay(self, transcripts: list[Transcript]) -> None:
        """Pieces recognized before a crash (the journal's), into the text stage as if just
        recognized; before the rooms start, so they come out first."""
        for t in transcripts:
            await self.text.inbox.put(t)

    def tasks(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        return [group.create_task(stage.run(), name=stage.name) for stage in self.stages]


def build_pipeline(
    recognizer: Recognizer,
    model_executor: Executor,
    rooms: RoomStates,
    recognize: RecognizeSettings,
    text: TextProcessor,
    stitch: StitchSettings | None,
    *,
    on_partial: Callable[[Utterance, Recognition], None] | None = None,
    watch: BusyWatch | None = None,
    clock: Callable[[], float] = time.monotonic,
    journal: Journal | None = None,
) -> Pipeline:
    """The graph for ``recognizer`` (run on ``model_executor``, one thread). ``stitch`` None:
    no stitcher and no joint decoding (batch work is never stitched). ``journal``: live
    pieces are kept on disk from recognition until they are stored (pipeline/journal.py)."""
    if stitch is None or not stitch.enabled:
        recognize = dataclasses.replace(recognize, stitch_max_gap_s=0.0)
    utterances: asyncio.Queue[Utterance | None] = asyncio.Queue(UTTERANCE_QUEUE_SIZE)
    recognized: asyncio.Queue[Transcript | None] = asyncio.Queue(TRANSCRIPT_QUEUE_SIZE)
    texts: asyncio.Queue[Transcript | None] = asyncio.Queue(TRANSCRIPT_QUEUE_SIZE)
    transcripts: asyncio.Queue[Transcript | None] = texts if stitch is None else asyncio.Queue(TRANSCRIPT_QUEUE_SIZE)
    recognize_stage = RecognizeStage(
        utterances,
        recognized,
        recognize,
        recognizer=recognizer,
        executor=model_executor,
        rooms=rooms,
        on_partial=on_partial,
        watch=watch,
        journal=journal,
    )
    text_stage = TextStage(recognized, texts, text, rooms=rooms, journal=journal)
    stitch_stage = StitchStage(texts, transcripts, stitch, rooms=rooms, clock=clock) if stitch else None
    return Pipeline(utterances, transcripts, rooms, recognize_stage, text_stage, stitch_stage)
