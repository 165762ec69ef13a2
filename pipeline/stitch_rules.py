"""The stitcher's rules: does a piece end its sentence, and how to join two pieces.

The stage that applies them is pipeline/stitch.py; the recognize stage asks
``joint_partner`` which pieces to decode once more together with the room's previous one.

In a room the stitcher serves, the VAD cuts a piece after ``stitch.endpoint_ms`` of silence
(short, so a finished command goes out at once). Whether the sentence ended there is the
recognizer's call, not a word list's: ``Transcript.sentence_end`` is its probability of a
sentence-final mark where the text stops (models/sentence_end.py), which follows what it
heard (a voice that trails off mid-sentence gets a comma or an ellipsis, a finished one a
full stop). At ``end_threshold`` or above the piece is published; below it the piece waits
up to ``max_gap_ms`` for its continuation, and the next piece of the room within that gap is
joined to it, unless the two pieces recognized as one stretch of audio read as two
sentences (``joint_opinion``). Measured in bench/stitch.py (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from pipeline.chunks import spoken_words
from pipeline.journal import pieces
from pipeline.messages import SAMPLE_RATE, Transcript, Utterance

# A piece whose sentence_end is at least this is published at once; a held piece and the
# next stay apart when the joint decode's P(sentence ends) between them is at least
# JOINT_THRESHOLD. bench/stitch.py tunes both (and stitch.max_gap_ms) on one half of its
# draw (2026-12-04: 0.95, 0.75, 500 ms; docs/architecture.md has the held-out figures).
END_THRESHOLD = 0.95
JOINT_THRESHOLD = 0.75
# The joint decode is ignored when it lost words: it must have this share of the pieces'.
JOINT_MIN_WORDS = 0.75
# ... and at least this share of the second piece's own words (it may correct a word or two).
JOINT_SHARED_WORDS = 0.5
# Whisper sees 30 s at once; the joint audio is the two pieces with JOINT_PAUSE_S between
# (a long pause inside audio makes Whisper end its decode there). With the pieces' post- and
# pre-roll that is about 0.8 s between the voices; 0 s gave the same tuned points (2026-12-07).
JOINT_MAX_S = 30.0
JOINT_PAUSE_S = 0.3
NO_SPACE_LANGUAGES = ("zh", "ja", "yue", "th", "lo", "my", "km")
FINAL_STRONG = ("?", "!", "？", "！")
FINAL_WEAK = (".", "。", "…")
# Function words whose capital goes when a joined piece no longer starts a sentence
# (formatting only; never names). The decision to join is not made from words.
EN_LOWER_OK = set(
    "the a an and or but so to of in on at for with from by into as that which who is are was were "
    "be will would can could should if because while when where then it there here we they he she you my "
    "your his her its our their this these those".split()
)


def _base(language: str) -> str:
    return language.lower().replace("_", "-").split("-")[0]


def _first_word(text: str) -> str:
    match = re.match(r"\W*([\w']+)", text)
    return match.group(1) if match else ""


def ends_sentence(t: Transcript, threshold: float = END_THRESHOLD) -> bool:
    """The piece ends its sentence: by the recognizer's probability, or, from a recognizer
    that gives none, by a final mark that is not an ellipsis."""
    if t.sentence_end is not None:
        return t.sentence_end >= threshold
    text = t.text.strip()
    return text.endswith(FINAL_STRONG + FINAL_WEAK) and not text.endswith(("...", "…"))


def ends_sentence_inside(text: str) -> bool:
    """A sentence end (a full stop, question or exclamation mark, Latin or Chinese, or an
    ellipsis; not a decimal point) before the last word: the recognizer heard two sentences.
    An ellipsis before a lower-case word is a pause inside one ("open the... garage door")."""
    body = text.strip().rstrip("".join(FINAL_STRONG + FINAL_WEAK) + " ")
    body = re.sub(r"(?:\.\.\.|…)\s*(?=[a-z])", " ", body)
    return bool(re.search(r"(?:[.?!…]\s|[。？！]|\.\.\.)", body))


def joint_opinion(first_text: str, second: Transcript, threshold: float = JOINT_THRESHOLD) -> bool | None:
    """What the joint decode says: one sentence (True), two (False), or nothing usable (None:
    there was none, or it dropped words that the pieces have; Chinese counted as spoken words,
    pipeline/chunks.spoken_words). Two when its P(sentence ends) after the first piece's
    words reaches ``threshold``; without that figure, when its text has a sentence end inside."""
    joint = second.joint_text
    if not joint:
        return None
    if second.joint_end is not None and second.joint_end >= threshold:
        return False  # the model heard two sentences, whatever its text says
    if spoken_words(joint) < JOINT_MIN_WORDS * (spoken_words(first_text) + spoken_words(second.text)):
        return None
    # Whisper may end a decode at the pause and write a stock phrase for the rest ("Thank
    # you for watching!"): the joint text must keep most of the second piece's words.
    if _shared_words(second.text, joint) < JOINT_SHARED_WORDS:
        return None
    return second.joint_end is not None or not ends_sentence_inside(joint)


def _tokens(text: str) -> list[str]:
    """Lower-case words, or single characters of unspaced scripts."""
    return [w for w in re.findall(r"[^\W\d_]+|\d+", text.lower()) for w in ([w] if w.isascii() else list(w))]


def _shared_words(piece: str, joint: str) -> float:
    """The share of ``piece``'s words (or characters, unspaced) that ``joint`` has too."""
    words, have = _tokens(piece), set(_tokens(joint))
    return sum(w in have for w in words) / len(words) if words else 1.0


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
        sentence_end=second.sentence_end,
        audio_events=tuple(dict.fromkeys((*first.audio_events, *second.audio_events))),
        emotion=second.emotion or first.emotion,  # how the sentence ended
    )


def joint_partner(
    previous: tuple[Utterance, Transcript] | None, piece: Transcript, max_gap_s: float, threshold: float
) -> Utterance | None:
    """The room's previous piece when ``piece`` should be recognized once more together with
    it (the previous one did not end its sentence, the pause is short enough), else None.
    The joint decode's words replace the pieces' when they join: they were heard with context
    both ways."""
    if previous is None or max_gap_s <= 0:
        return None
    first, first_t = previous
    u = piece.utterance
    gap_s = u.start_wall - first.end_wall
    if not 0 <= gap_s <= max_gap_s or ends_sentence(first_t, threshold):
        return None
    if first.duration_s + JOINT_PAUSE_S + u.duration_s > JOINT_MAX_S:
        return None
    return first
