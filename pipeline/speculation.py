"""Speculations: live pieces recognized before their endpoint, kept until it comes.

In a live room, the VAD sends the piece so far once a short silence begins
(``stitch.speculate_ms``, pipeline/vad.py; a room without the stitcher too, before its own
hangover: daemon/config.room_vad_params), under the id its finished piece will get. The
recognize stage recognizes it like a live piece but publishes nothing; when the endpoint
comes and no speech came since (the finished piece's ``speculation_end_s`` names it), the
speculation's transcript stands for the finished piece, so its text is ready at once. A
speculation that speech overtook is counted as wasted: a recognition spent, never a message
changed.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from pipeline.messages import Transcript, Utterance, Work


class SpeculationCounters(Protocol):
    speculative: int
    speculative_used: int
    speculative_wasted: int


class Speculations:
    """Per room, its newest speculation's transcript, until that room's next finished piece."""

    def __init__(self, counters: SpeculationCounters) -> None:
        self.counters = counters
        self.by_room: dict[str, Transcript] = {}

    def superseded_dropped(self, waiting: list[Utterance]) -> list[Utterance]:
        """``waiting`` without the speculations that could only be wasted: those whose
        finished piece (same id) already waits, and all but the newest of a room."""
        finished = {u.id for u in waiting if not u.speculative}
        newest: dict[str, Utterance] = {}
        for u in waiting:
            if u.speculative and u.id not in finished and (u.room not in newest or u.end_s > newest[u.room].end_s):
                newest[u.room] = u
        keep = {id(u) for u in newest.values()}
        return [u for u in waiting if not u.speculative or id(u) in keep]

    def keep(self, t: Transcript) -> None:
        """A speculation recognized: it waits for its endpoint."""
        self.counters.speculative += 1
        if self.by_room.get(t.utterance.room) is not None:
            self.counters.speculative_wasted += 1  # an older one, overtaken by more speech
        self.by_room[t.utterance.room] = t

    def take(self, utt: Utterance) -> Transcript | None:
        """For a finished live piece: its transcript (its text may be empty) when its
        room's speculation stands for it (same piece, no speech since), else None. A
        speculation that does not stand is counted as wasted."""
        if utt.kind is not Work.LIVE:
            return None
        spec = self.by_room.pop(utt.room, None)
        if spec is None:
            return None
        s = spec.utterance
        if s.id != utt.id or utt.speculation_end_s is None or abs(s.end_s - utt.speculation_end_s) > 1e-6:
            self.counters.speculative_wasted += 1
            return None
        self.counters.speculative_used += 1
        return dataclasses.replace(spec, utterance=utt)
