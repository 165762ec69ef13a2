"""The stitch stage: pieces of one sentence that a pause split go out as one utterance.

In a room it serves, the VAD cuts a piece after ``endpoint_ms`` of silence and the recognizer
says how sure it is that the text ends a sentence there (pipeline/stitch_rules.py). A piece
that does is published at once (after ``complete_wait_ms``, 0 by default); one that does not
is held, and the room's next piece within ``max_gap_ms`` is joined to it. A held piece goes
out as soon as its room's VAD has heard ``max_gap_ms`` of silence after it (the wait
overlaps the VAD's own hangover: it counts from the end of the piece's audio, not from its
cut), and waits for a piece whose speech began in that time; never longer than
``max_hold_ms``. A published utterance is final: nothing is retracted or corrected after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from pipeline.messages import Transcript
from pipeline.roomstate import RoomStates
from pipeline.stage import Stage
from pipeline.stitch_rules import END_THRESHOLD, JOINT_THRESHOLD, ends_sentence, join, joint_opinion

# While a held piece's room has not yet heard max_gap of silence after it, the stitcher looks
# again this often (the room hears a 500 ms frame at a time; 20 ms adds little to that).
POLL_S = 0.02
# A held piece whose room stopped hearing audio goes out this long after max_gap.
NO_AUDIO_S = 1.0


@dataclass(frozen=True)
class StitchSettings:
    enabled: bool = True
    # The VAD of a room the stitcher serves cuts a piece after this much silence (instead of
    # vad.hangover_ms): the sentence-end decision then comes from the recognizer.
    endpoint_ms: int = 400
    end_threshold: float = END_THRESHOLD
    joint_threshold: float = JOINT_THRESHOLD
    # Silence between two pieces' audio that still joins them (each piece keeps pre_roll_ms
    # before its speech and post_roll_ms after: 500 ms joins pauses up to about 1.0 s);
    # tuned with the thresholds (stitch_rules.END_THRESHOLD).
    max_gap_ms: int = 500
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
        if not self._complete(item):
            self.counters.held += 1
        self.held[room] = _Held(item, arrived, last_id)
        await self._release_due()

    def _complete(self, t: Transcript) -> bool:
        return ends_sentence(t, self.settings.end_threshold)

    def _deadline(self, room: str, held: _Held, now: float) -> float:
        """When to look at ``held`` again (the stitcher's clock); at ``now`` or before: it is
        due. While its continuation may be on its way (a piece that was cut comes through the
        inbox, unless it had no speech; speech under way may become one), or the room has not
        heard max_gap after it yet: after POLL_S."""
        hold_until = held.arrived + self.settings.max_hold_ms / 1000
        t = held.transcript
        if self._complete(t):
            return min(hold_until, t.utterance.decided_at + self.settings.complete_wait_ms / 1000)
        began = self._continuation(room, t)
        if began == "none":
            return now
        look = min(hold_until, now + POLL_S)
        return min(look, self._no_audio_until(held)) if began == "unheard" else look

    def _continuation(self, room: str, t: Transcript) -> Literal["piece", "speech", "none", "unheard"]:
        """What began in the room within max_gap after ``t``'s audio ended (RoomState.began_between)."""
        end = t.utterance.end_wall
        return self.rooms[room].began_between(end, end + self.settings.max_gap_ms / 1000)

    def _no_audio_until(self, held: _Held) -> float:
        """A room whose audio stopped coming (its source went away) never hears max_gap of
        silence: its held piece goes out this long after it arrived."""
        return held.arrived + self.settings.max_gap_ms / 1000 + NO_AUDIO_S

    def _next_deadline(self) -> float | None:
        now = self.clock()
        return min((self._deadline(room, h, now) for room, h in self.held.items()), default=None)

    async def _release_due(self) -> None:
        now = self.clock()
        for room, held in list(self.held.items()):
            if self._deadline(room, held, now) <= now:
                await self._release(room)

    async def _release(self, room: str) -> None:
        await self._alone(self.held.pop(room).transcript)

    async def _alone(self, t: Transcript) -> None:
        """A piece (or joined pieces) going out with nothing more joined to it."""
        if not self._complete(t):
            self.counters.waited_in_vain += 1
        await self.emit(t)
