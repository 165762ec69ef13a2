"""The stitcher's rules: do two pieces of a room read as one sentence, and how to join them.

The stage that applies them is pipeline/stitch.py; the recognize stage asks
``joint_partner`` which pieces to decode once more together with the room's previous one.

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

import dataclasses
import re

import numpy as np

from pipeline.journal import pieces
from pipeline.messages import SAMPLE_RATE, Transcript, Utterance

JOIN_SCORE = 1.5
# The recognizer hearing both pieces as one stretch of audio (pipeline/recognize.py) is a
# second opinion: one sentence there adds JOINT_BONUS, a sentence end inside subtracts
# JOINT_PENALTY. It is asked for every pair within max_gap_ms that scores at least
# JOIN_SCORE - JOINT_BONUS from the texts, and ignored when it lost words (JOINT_MIN_WORDS of
# the pieces' words at least). Measured in bench/stitch.py (docs/architecture.md).
JOINT_BONUS = 1.0
JOINT_PENALTY = 0.5
JOINT_MIN_WORDS = 0.75
# Whisper sees 30 s at once; the joint audio is the two pieces with JOINT_PAUSE_S between.
JOINT_MAX_S = 30.0
JOINT_PAUSE_S = 0.3

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
        pieces=(*pieces(first), *pieces(second)),
    )


def joint_partner(previous: tuple[Utterance, str] | None, piece: Transcript, max_gap_s: float) -> Utterance | None:
    """The room's previous piece when ``piece`` should be recognized once more together with
    it, else None.

    The texts of two pieces say a lot ("turn on the | kitchen lights") but tiny models
    punctuate fragments as sentences; the recognizer hearing both pieces as one stretch is a
    second opinion: one sentence, or a full stop between them (``joint_opinion``,
    JOINT_BONUS). Pairs whose texts cannot reach a join even with it cost nothing."""
    if previous is None or max_gap_s <= 0:
        return None
    first, first_text = previous
    u = piece.utterance
    gap_s = u.start_wall - first.end_wall
    if not 0 <= gap_s <= max_gap_s:
        return None
    if first.duration_s + JOINT_PAUSE_S + u.duration_s > JOINT_MAX_S:
        return None
    # As the stitcher will score it if the joint decode hears one sentence.
    score = join_score(without_strong_final(first_text), piece.raw_text, gap_s, piece.language)
    return first if score >= JOIN_SCORE - JOINT_BONUS else None
