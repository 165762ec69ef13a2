"""The stitch stage: pieces of one sentence that a pause split go out as one utterance.

It holds each finished piece of a room briefly and joins the next piece to it when the
rules say they are one sentence (pipeline/stitch_rules.py, with the joint decode's opinion
when the recognize stage made one). A held piece goes out as soon as it can no longer be
continued: ``max_gap_ms`` after its cut with no new speech in its room, or
``complete_wait_ms`` when it looks complete, and never later than ``max_hold_ms``.
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
from pipeline.stitch_rules import (
    JOIN_SCORE,
    JOINT_BONUS,
    JOINT_PENALTY,
    join,
    join_score,
    joint_opinion,
    looks_complete,
    moved_final,
    without_strong_final,
)


@dataclass(frozen=True)
class StitchSettings:
    enabled: bool = True
    max_gap_ms: int = 2000
    max_hold_ms: int = 5000
    # A piece that looks complete waits only this long after its cut for new speech, so a
    # finished command is not delayed by the whole max_gap_ms.
    complete_wait_ms: int = 800


@dataclass
class StitchCounters:
    joined: int = 0  # pieces joined onto a held one


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
        held = self.held.pop(room, None)
        if held is not None:
            first = held.transcript
            gap_s = item.utterance.start_wall - first.utterance.end_wall
            score = join_score(first.text, item.text, gap_s, first.language)
            # The joint decode covers the held piece only while it is a single one.
            joint = joint_opinion(first.text, item) if item.joint_with == held.last_id and first.parts == 1 else None
            if joint and moved_final(first.text, item.joint_text):
                # Heard as one sentence with the first piece's ? or ! at its end: the mark
                # was misplaced on the fragment ("Can you remind me to call?").
                score = join_score(without_strong_final(first.text), item.text, gap_s, first.language)
            if joint is not None:
                score += JOINT_BONUS if joint else -JOINT_PENALTY
            if gap_s * 1000 <= self.settings.max_gap_ms and score >= JOIN_SCORE:
                joined = join(first, item)
                if joint:
                    # Heard as one sentence: the joint decode's words, with context both ways.
                    joined = dataclasses.replace(joined, text=item.joint_text, raw_text=item.joint_raw)
                self.counters.joined += 1
                self.log.info(
                    "pieces joined", utterance_id=first.utterance.id, parts=joined.parts, gap_s=round(gap_s, 2)
                )
                held = _Held(joined, held.arrived, item.utterance.id)
            else:
                await self.emit(first)
                held = _Held(item, self.clock(), item.utterance.id)
        else:
            held = _Held(item, self.clock(), item.utterance.id)
        self.held[room] = held
        await self._release_due()

    def _deadline(self, room: str, held: _Held) -> float:
        """When ``held`` must go: max_hold after it arrived, or max_gap after its cut when
        no new speech started in the room in that time."""
        hold_until = held.arrived + self.settings.max_hold_ms / 1000
        t = held.transcript
        wait_ms = self.settings.complete_wait_ms if looks_complete(t.text, t.language) else self.settings.max_gap_ms
        gap_until = t.utterance.decided_at + min(wait_ms, self.settings.max_gap_ms) / 1000
        started = self.rooms[room].speech_started_at
        if started is not None and held.transcript.utterance.decided_at - 0.5 <= started <= gap_until:
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
        held = self.held.pop(room)
        await self.emit(held.transcript)
