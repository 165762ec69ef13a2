"""The stitch stage: pieces of one sentence that a pause split go out as one utterance.

In a room it serves, the VAD cuts a piece after ``endpoint_ms`` of silence and the recognizer
says how sure it is that the text ends a sentence there (pipeline/stitch_rules.py). A piece
that does is published at once (after ``complete_wait_ms``, 0 by default); one that does not
is held, and the room's next piece within ``max_gap_ms`` is joined to it. A held piece goes
out ``max_gap_ms`` after its cut when nobody speaks again in its room, never later than
``max_hold_ms``. A published utterance is final: nothing is retracted or corrected after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pipeline.messages import Transcript
from pipeline.roomstate import RoomStates
from pipeline.stage import Stage
from pipeline.stitch_rules import END_THRESHOLD, JOINT_THRESHOLD, ends_sentence, join, joint_opinion


@dataclass(frozen=True)
class StitchSettings:
    enabled: bool = True
    # The VAD of a room the stitcher serves cuts a piece after this much silence (instead of
    # vad.hangover_ms): the sentence-end decision then comes from the recognizer.
    endpoint_ms: int = 400
    end_threshold: float = END_THRESHOLD
    joint_threshold: float = JOINT_THRESHOLD
    max_gap_ms: int = 1200  # tuned with the thresholds (stitch_rules.END_THRESHOLD)
    max_hold_ms: int = 5000
    # A piece that ends its sentence waits this long after its cut for more (0: published
    # when recognized).
    complete_wait_ms: int = 0
    # After this much silence the piece so far is recognized ahead (the VAD's speculation,
    # pipeline/vad.py), so its text is ready when the endpoint comes; 0: never.
    speculate_ms: int = 160


@dataclass
class StitchCounters:
    joined: int = 0  # pieces joined onto a held one
    held: int = 0  # pieces that waited for a continuation (the recognizer heard them unfinished)
    waited_in_vain: int = 0  # held pieces that went out alone: latency spent, no message changed
    joint_unused: int = 0  # joint decodes that neither joined nor parted the pieces (lost words)


@dataclass
class _Held:
    transcript: Transcript
    arrived: float  # time.monotonic()
    last_id: str = ""  # the id of its last piece (the joint decode names it)


class StitchStage(Stage[Transcript, Transcript, StitchCounters]):
    """Holds at most one piece per room; joins or releases it as described above. Batch work
    and rooms with ``stitch = false`` pass straight through."""

    name: ClassVar[str] = "stitch"

    def __init__(
        self,
        inbox: asyncio.Queue[Transcript | None],
        output: asyncio.Queue[Transcript | None],
        settings: StitchSettings,
        *,
        rooms: RoomStates,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(inbox, output)
        self.settings = settings
        self.rooms = rooms
        self.clock = clock
        self.held: dict[str, _Held] = {}
        self.counters = StitchCounters()

    def enabled(self, room: str) -> bool:
        return self.settings.enabled and self.rooms[room].stitch

    async def run(self) -> None:
        while True:
            timeout = self._next_deadline()
            try:
                if timeout is None:
                    item = await self.inbox.get()
                else:
                    async with asyncio.timeout(max(0.0, timeout - self.clock())):
                        item = await self.inbox.get()
            except TimeoutError:
                await self._release_due()
                continue
            if item is None:
                await self.end()
                return
            await self.handle(item)

    async def finish(self) -> None:
        for room in list(self.held):
            await self._release(room)

    async def handle(self, item: Transcript) -> None:
        room = item.utterance.room
        if not item.raw_parts:
            item = dataclasses.replace(item, raw_parts=(item.raw_text,))
        if not self.enabled(room) or item.utterance.batch:  # batch work: segments as cut
            await self.emit(item)
            return
        await self._release_due()  # what was due before this piece came goes first
        held = self.held.pop(room, None)
        arrived, last_id = self.clock(), item.utterance.id
        if held is not None:
            first = held.transcript
            gap_s = item.utterance.start_wall - first.utterance.end_wall
            # The joint decode covers the held piece only while it is a single one.
            paired = item.joint_with == held.last_id and first.parts == 1
            joint = joint_opinion(first.text, item, self.settings.joint_threshold) if paired else None
            self.counters.joint_unused += joint is None and item.joint_with == held.last_id
            if gap_s * 1000 <= self.settings.max_gap_ms and joint is not False:
                joined = join(first, item)
                if joint:
                    # Heard as one sentence: the joint decode's words, with context both ways.
                    joined = dataclasses.replace(joined, text=item.joint_text, raw_text=item.joint_raw)
                self.counters.joined += 1
                self.log.info(
                    "pieces joined", utterance_id=first.utterance.id, parts=joined.parts, gap_s=round(gap_s, 2)
                )
                item, arrived = joined, held.arrived
            else:
                await self._alone(first)
        if not ends_sentence(item, self.settings.end_threshold):
            self.counters.held += 1
        self.held[room] = _Held(item, arrived, last_id)
        await self._release_due()

    def _deadline(self, room: str, held: _Held) -> float:
        """When ``held`` must go: max_hold after it arrived, or max_gap after its cut when
        no new speech started in the room in that time."""
        hold_until = held.arrived + self.settings.max_hold_ms / 1000
        t = held.transcript
        complete = ends_sentence(t, self.settings.end_threshold)
        wait_ms = self.settings.complete_wait_ms if complete else self.settings.max_gap_ms
        gap_until = t.utterance.decided_at + min(wait_ms, self.settings.max_gap_ms) / 1000
        started = self.rooms[room].speech_started_at
        if not complete and started is not None and t.utterance.decided_at - 0.5 <= started <= gap_until:
            return hold_until  # someone is speaking again: wait for that piece
        return min(hold_until, gap_until)

    def _next_deadline(self) -> float | None:
        return min((self._deadline(room, h) for room, h in self.held.items()), default=None)

    async def _release_due(self) -> None:
        now = self.clock()
        for room, held in list(self.held.items()):
            if self._deadline(room, held) <= now:
                await self._release(room)

    async def _release(self, room: str) -> None:
        await self._alone(self.held.pop(room).transcript)

    async def _alone(self, t: Transcript) -> None:
        """A piece (or joined pieces) going out with nothing more joined to it."""
        if not ends_sentence(t, self.settings.end_threshold):
            self.counters.waited_in_vain += 1
        await self.emit(t)
