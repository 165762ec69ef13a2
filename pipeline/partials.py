"""Interim results while someone speaks: the text so far and the part of it that is stable."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


def _key(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def common_prefix(previous: str, current: str) -> str:
    """The words ``current`` starts with that ``previous`` started with too (as ``current``
    writes them; case and punctuation do not count). Chinese, written without spaces, is
    compared character by character."""
    if " " not in current.strip() and re.search(r"[\u3400-\u9fff]", current):
        n = 0
        while n < min(len(previous), len(current)) and previous[n] == current[n]:
            n += 1
        return current[:n]
    a, b = previous.split(), current.split()
    n = 0
    while n < min(len(a), len(b)) and _key(a[n]) == _key(b[n]):
        n += 1
    return " ".join(b[:n])


@dataclass
class PartialTracker:
    """Per room: the utterance being spoken, its last hypothesis and its stable prefix.

    ``stable_text`` is what two consecutive hypotheses agree on; it never shrinks while the
    same utterance goes on (a later disagreement keeps what was agreed before)."""

    _rooms: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # room -> (id, text, stable)

    def update(self, room: str, utterance_id: str, text: str) -> str:
        previous = self._rooms.get(room)
        if previous is None or previous[0] != utterance_id:
            stable = ""
        else:
            agreed = common_prefix(previous[1], text)
            stable = agreed if len(agreed) >= len(previous[2]) else previous[2]
        self._rooms[room] = (utterance_id, text, stable)
        return stable
