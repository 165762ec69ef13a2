"""Per-room runtime state, in one place: what commands change and what stages read.

A ``RoomState`` holds a room's settings that can change at run time (hotwords, language,
paused) and the little the stages remember of it (the previous text for the next prompt,
the last piece for a joint decode, what its VAD heard for the stitcher). ``RoomStates`` owns them
all, with the global hotwords, and answers the questions several stages ask: which hotwords
a room has, and which of them the model can use.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from models.tokenizer import latin_script
from pipeline.text.script import Script

if TYPE_CHECKING:
    from pipeline.messages import Transcript, Utterance

# Previous texts kept for prompts: live rooms and the files of batch jobs (one "room" each).
MAX_ROOMS_REMEMBERED = 1024
# What the model is given of a room's hotwords (prompt and decoding boost): a prompt holds
# at most 223 tokens, and the boost checks every hotword at every decoding step. Text
# correction still sees them all.
DECODING_HOTWORDS_MAX = 50
DECODING_HOTWORDS_MAX_CHARS = 400
# Starts of a room's latest pieces kept for the stitcher: more than the recognizer can have
# waiting (a file room read at full speed cuts pieces far ahead of their recognition).
PIECE_STARTS_KEPT = 256


@dataclass
class RoomState:
    name: str
    hotwords: tuple[str, ...] = ()
    language: str | None = None  # None: the model's own (detected when multilingual)
    paused: bool = False
    prompt_previous: bool | None = None  # None: recognizer.prompt_previous
    stitch: bool = True  # the stitcher joins this room's pieces (joint decoding is for it)
    zh_script: Script | None = None  # None: text.zh_script
    # What the room's VAD heard, in wall-clock time, for the stitcher: the starts of its
    # latest pieces, where the piece being spoken (or a run of speech not yet long enough to
    # be one) would start, and the time before which no other piece can start any more.
    piece_starts: deque[float] = field(default_factory=lambda: deque(maxlen=PIECE_STARTS_KEPT))
    speaking_from: float | None = None
    settled_until: float = -math.inf
    # The last finished piece and its transcript (a joint decode pairs it with the next).
    last_piece: tuple[Utterance, Transcript] | None = None

    def heard(self, starts: Iterable[float], speaking_from: float | None, settled_until: float) -> None:
        """After each block of audio the VAD classified: the pieces it cut (their starts),
        the speech under way, how far it heard."""
        self.piece_starts.extend(starts)
        self.speaking_from = speaking_from
        self.settled_until = settled_until

    def piece_gone(self, start_wall: float) -> None:
        """A piece that will never reach the stitcher (no speech in it, or its recognition
        failed): a held piece must not wait for it."""
        with contextlib.suppress(ValueError):
            self.piece_starts.remove(start_wall)

    def began_between(self, after: float, until: float) -> Literal["piece", "speech", "none", "unheard"]:
        """What started in this room in [after, until]: a piece (cut, so on its way), speech
        under way (it may become a piece, or come to nothing), nothing (and nothing can any
        more), or not known: the room has not heard that far."""
        if any(after - 1e-6 <= start <= until for start in self.piece_starts):
            return "piece"
        if self.speaking_from is not None and self.speaking_from <= until:
            return "speech"
        return "none" if self.settled_until >= until else "unheard"


@dataclass
class RoomStates:
    """Every room's state; a room not configured (a batch job's file) reads as the defaults."""

    hotwords: tuple[str, ...] = ()  # every room's, before its own
    rooms: dict[str, RoomState] = field(default_factory=dict)
    # Room -> (text, end wall time) of its last recognized utterance, oldest first.
    previous: dict[str, tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, hotwords: Iterable[str], rooms: Iterable[RoomState]) -> RoomStates:
        return cls(tuple(dict.fromkeys(hotwords)), rooms={r.name: r for r in rooms})

    def __getitem__(self, name: str) -> RoomState:
        room = self.rooms.get(name)
        return room if room is not None else RoomState(name)

    def __contains__(self, name: str) -> bool:
        return name in self.rooms

    def names(self) -> list[str]:
        return list(self.rooms)

    def hotwords_for(self, name: str) -> tuple[str, ...]:
        """The global hotwords and the room's, once each (for correction and the prompt)."""
        room = self.rooms.get(name)
        return tuple(dict.fromkeys((*self.hotwords, *(room.hotwords if room else ()))))

    def decoding_hotwords(self, name: str, latin_only: bool) -> tuple[str, ...]:
        """The hotwords a model can write, for its prompt and its decoding bias: for a model
        that writes only English (``latin_only``) those in Latin script (Chinese hotwords in
        its prompt made tiny.en write Chinese); text correction still gets them all."""
        words = self.hotwords_for(name)
        if latin_only:
            words = tuple(w for w in words if latin_script(w))
        if len(words) <= DECODING_HOTWORDS_MAX and sum(map(len, words)) <= DECODING_HOTWORDS_MAX_CHARS:
            return words
        # Too many for the prompt and the per-step boost: the room's own words first.
        room = self.rooms.get(name)
        own = set(room.hotwords) if room else set()
        chosen: list[str] = []
        chars = 0
        for word in sorted(words, key=lambda w: w not in own):  # stable: each group keeps its order
            if len(chosen) < DECODING_HOTWORDS_MAX and chars + len(word) <= DECODING_HOTWORDS_MAX_CHARS:
                chosen.append(word)
                chars += len(word)
        return tuple(chosen)

    def set_hotwords(self, name: str | None, words: Iterable[str]) -> tuple[str, ...]:
        """Replace the global hotwords (``name`` None) or a room's; returns them, deduplicated."""
        unique = tuple(dict.fromkeys(words))
        if name is None:
            self.hotwords = unique
        else:
            self.rooms[name].hotwords = unique
        return unique

    def remember(self, name: str, text: str, end_wall: float) -> None:
        """The room's latest text, for its next prompt; batch files come and go, so only the
        newest MAX_ROOMS_REMEMBERED rooms are kept."""
        self.previous.pop(name, None)
        self.previous[name] = (text, end_wall)
        if len(self.previous) > MAX_ROOMS_REMEMBERED:
            del self.previous[next(iter(self.previous))]
