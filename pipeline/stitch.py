"""Context stitcher: pieces of one sentence that a pause split are published as one utterance.

A VAD cuts at every pause longer than its hangover, so "turn on the ... kitchen lights"
arrives as two pieces. The stitcher holds each finished piece briefly and joins the next
piece from the same room to it when they read as one sentence:

- never across ``max_gap_ms`` of silence, never holding a piece past ``max_hold_ms``;
- the first piece's ending: a dangling word (the, and, to; 的, 和, 把) or no final mark asks
  for a continuation; "?" or "!" ends the sentence. A final period counts for little:
  Whisper puts one at the end of every piece;
- the next piece's start: lower case, a conjunction or continuation word (and, but, which;
  然后, 但是, 所以) says it continues;
- the pause: a short one favours joining, a long one counts against it.

A held piece is released as soon as it can no longer be continued: ``max_gap_ms`` after it
was cut with no new speech in its room, or ``complete_wait_ms`` when it looks complete (a
final mark, no dangling word), so a finished command is barely delayed. The joined text drops the spurious full stop and
uses the language's joiner (a space, or nothing for Chinese and Japanese); ``parts`` and the
pieces' raw texts go with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog

from pipeline.messages import SAMPLE_RATE, Transcript

JOIN_SCORE = 1.5
# The recognizer hearing both pieces as one stretch of audio (pipeline/recognize.py) is a
# second opinion: one sentence there adds JOINT_BONUS, a sentence end inside subtracts
# JOINT_PENALTY. It is asked for every pair within max_gap_ms that scores at least
# JOIN_SCORE - JOINT_BONUS from the texts, and ignored when it lost words (JOINT_MIN_WORDS of
# the pieces' words at least). Measured in bench/stitch.py (docs/architecture.md).
JOINT_BONUS = 1.0
JOINT_PENALTY = 0.5
JOINT_MIN_WORDS = 0.75

EN_DANGLING = set(
    "the a an and or but so to of in on at for with from by into onto about than as that which who whose "
    "my your his her its our their this these those is are was were be been am will would can could should "
    "if because while when where although though not no very more most some any every each our".split()
)
EN_CONTINUATION = set(
    "and or but so because which who whom whose that than then while when where although though unless "
    "until to of in on at for with from by into as if nor yet before after except almost about during "
    "without within since like including instead whether via across around through towards toward upon "
    "over under near behind beside between beyond".split()
)
# A piece that starts with one of these and is not a question continues a sentence ("... the
# meeting | was moved to Thursday").
EN_AUXILIARY = set("is are was were has have had will would can could should does did".split())
# "... | Where are my keys?": a question of its own, not "... where the keys are".
EN_QUESTION = set("where when which who whom whose".split())
# Words safe to write in lower case when they no longer start a sentence (never names).
EN_LOWER_OK = EN_DANGLING | EN_CONTINUATION | set("it there here we they he she you".split())
ZH_DANGLING = tuple(
    "的 地 得 和 跟 与 或 在 把 被 给 对 向 从 是 就 也 还 而 但 因为 所以 如果 但是 然后 而且 并且 或者 还有".split()
)
ZH_CONTINUATION = tuple(
    "然后 但是 所以 因为 而且 并且 或者 还有 可是 不过 而是 就是 "
    "的 地 得 了 吗 呢 吧 和 跟 与 就 也 还 才 而 并".split()
)
NO_SPACE_LANGUAGES = ("zh", "ja", "yue", "th", "lo", "my", "km")
FINAL_STRONG = ("?", "!", "？", "！")
FINAL_WEAK = (".", "。", "…")


def _base(language: str) -> str:
    return language.lower().replace("_", "-").split("-")[0]


def _first_word(text: str) -> str:
    match = re.match(r"\W*([\w']+)", text)
    return match.group(1) if match else ""


def _last_word(text: str) -> str:
    words = re.findall(r"[\w']+", text)
    return words[-1] if words else ""


def join_score(first: str, second: str, gap_s: float, language: str) -> float:
    """How strongly ``second`` reads as the continuation of ``first``; join at JOIN_SCORE."""
    first, second = first.strip(), second.strip()
    if not first or not second:
        return 0.0
    score = 0.0
    chinese = _base(language) in NO_SPACE_LANGUAGES
    body = first.rstrip("".join(FINAL_STRONG + FINAL_WEAK) + " ")
    if first.endswith(FINAL_STRONG):
        score -= 2.0
    elif not first.endswith(FINAL_WEAK):
        score += 1.0  # no final mark at all
    if chinese:
        if body.endswith(ZH_DANGLING):
            score += 2.0
        if second.startswith(ZH_CONTINUATION):
            score += 1.5
    else:
        if _last_word(body).lower() in EN_DANGLING:
            score += 2.0
        word = _first_word(second)
        if word[:1].islower():
            score += 2.0
        elif word.lower() in EN_CONTINUATION and not (word.lower() in EN_QUESTION and second.endswith("?")):
            score += 1.5
        elif word[:1].isdigit():
            score += 1.5  # "... set it to | 21 degrees": sentences seldom open with digits
        elif word.lower() in EN_AUXILIARY and not second.endswith("?"):
            score += 1.5
    if gap_s < 1.0:
        score += 0.5
    elif gap_s > 1.5:
        score -= 0.5
    return score


def ends_sentence_inside(text: str) -> bool:
    """A sentence end (a full stop, question or exclamation mark, Latin or Chinese, or an
    ellipsis; not a decimal point) before the last word: the recognizer heard two sentences.
    An ellipsis before a lower-case word is a pause inside one ("open the... garage door")."""
    body = text.strip().rstrip("".join(FINAL_STRONG + FINAL_WEAK) + " ")
    body = re.sub(r"(?:\.\.\.|…)\s*(?=[a-z])", " ", body)
    return bool(re.search(r"(?:[.?!…]\s|[。？！]|\.\.\.)", body))


def without_strong_final(text: str) -> str:
    """The piece with a final ? or ! read as a plain full stop: tiny models put them on
    fragments ("Can you remind me to call?" + "my sister tomorrow"); the joint decode says
    whether the mark belonged there."""
    text = text.rstrip()
    return text[:-1] + ("。" if text.endswith(("？", "！")) else ".") if text.endswith(FINAL_STRONG) else text


def moved_final(first: str, joint: str) -> bool:
    """The first piece ends with ? or ! and the joint decode ends with the same mark."""
    first, joint = first.rstrip(), joint.rstrip()
    return bool(first) and first.endswith(FINAL_STRONG) and joint.endswith(first[-1])


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def joint_opinion(first_text: str, second: Transcript) -> bool | None:
    """What the joint decode says: one sentence (True), two (False), or nothing usable (None:
    there was none, or it dropped words that the pieces have)."""
    joint = second.joint_text
    if not joint:
        return None
    if _words(joint) < JOINT_MIN_WORDS * (_words(first_text) + _words(second.text)):
        return None
    return not ends_sentence_inside(joint)


def looks_complete(text: str, language: str) -> bool:
    """Ends with a final mark (not an ellipsis) and no dangling word: only a next piece that
    itself starts like a continuation could still join it."""
    text = text.strip()
    if not text.endswith(FINAL_STRONG + FINAL_WEAK) or text.endswith(("...", "…")):
        return False
    body = text.rstrip("".join(FINAL_STRONG + FINAL_WEAK) + " ")
    if _base(language) in NO_SPACE_LANGUAGES:
        return not body.endswith(ZH_DANGLING)
    return _last_word(body).lower() not in EN_DANGLING


def join_texts(first: str, second: str, language: str) -> str:
    """One sentence from two pieces: the first piece's spurious full stop goes, the second's
    capital goes when its first word is a function word, and the language's joiner goes between."""
    first, second = first.strip(), second.strip()
    if not first or not second:
        return first or second
    # The full stop Whisper puts at the end of every piece, or the ellipsis it writes where
    # speech trailed off: both are wrong once the sentence goes on.
    first = re.sub(r"(?:\.\.\.|…|[.。])$", "", first).rstrip()
    if _base(language) in NO_SPACE_LANGUAGES:
        return first + second
    word = _first_word(second)
    if word and word[0].isupper() and word.lower() in EN_LOWER_OK and word != "I":
        start = second.index(word)
        second = second[:start] + word[0].lower() + second[start + 1 :]
    return f"{first} {second}"


def join(first: Transcript, second: Transcript) -> Transcript:
    a, b = first.utterance, second.utterance
    # The joined utterance's audio is both pieces with the pause between them as silence
    # (what a debug recording keeps, and what the times say).
    pause = np.zeros(max(0, round((b.start_s - a.end_s) * SAMPLE_RATE)), np.float32)
    span = dataclasses.replace(
        a,
        audio=np.concatenate([a.audio, pause, b.audio]),
        end_s=b.end_s,
        end_wall=b.end_wall,
        decided_at=b.decided_at,
        reason=b.reason,
    )
    duration_a, duration_b = max(a.end_s - a.start_s, 1e-3), max(b.end_s - b.start_s, 1e-3)
    confidence = (first.confidence * duration_a + second.confidence * duration_b) / (duration_a + duration_b)
    return dataclasses.replace(
        first,
        utterance=span,
        text=join_texts(first.text, second.text, first.language),
        raw_text=join_texts(first.raw_text, second.raw_text, first.language),
        confidence=round(confidence, 3),
        recognize_ms=first.recognize_ms + second.recognize_ms,
        parts=first.parts + second.parts,
        raw_parts=(*first.raw_parts, *second.raw_parts),
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
class _Held:
    transcript: Transcript
    arrived: float  # time.monotonic()
    last_id: str = ""  # the id of its last piece (the joint decode names it)


class StitchStage:
    """Holds at most one piece per room; joins or releases it as described above."""

    def __init__(
        self,
        settings: StitchSettings,
        inbox: asyncio.Queue[Transcript | None],
        outbox: asyncio.Queue[Transcript | None],
        speech_started_at: Callable[[str], float | None] = lambda room: None,
        rooms_enabled: dict[str, bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.inbox = inbox
        self.outbox = outbox
        self.speech_started_at = speech_started_at
        self.rooms_enabled = rooms_enabled or {}
        self.clock = clock
        self.held: dict[str, _Held] = {}
        self.joined = 0
        self.log = structlog.get_logger().bind(stage="stitch")

    def enabled(self, room: str) -> bool:
        return self.settings.enabled and self.rooms_enabled.get(room, True)

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
                for room in list(self.held):
                    await self._release(room)
                await self.outbox.put(None)
                return
            await self.accept(item)

    async def accept(self, item: Transcript) -> None:
        room = item.utterance.room
        if not item.raw_parts:
            item = dataclasses.replace(item, raw_parts=(item.raw_text,))
        if not self.enabled(room) or item.utterance.source is not None:  # batch work: segments as cut
            await self.outbox.put(item)
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
                self.joined += 1
                self.log.info(
                    "pieces joined", utterance_id=first.utterance.id, parts=joined.parts, gap_s=round(gap_s, 2)
                )
                held = _Held(joined, held.arrived, item.utterance.id)
            else:
                await self.outbox.put(first)
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
        started = self.speech_started_at(room)
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
        await self.outbox.put(held.transcript)
