"""Hotword correction: near misses of the room's hotwords rewritten to the hotword.

The recognizer is biased towards hotwords already (prompt and log-probability boost); this
catches what it still gets slightly wrong, "Cooper Netties" for "Kubernetes", "张小梅" for
"张晓梅". English compares a spelling-independent sound key and the letters of every run of
one to three words (rapidfuzz's normalized Indel similarity); Chinese compares the pinyin with
tones (pypinyin) of every run of as many characters as the hotword: homophones, or one
syllable a letter off. A run is rewritten only
when its similarity reaches ``threshold``, it is not the hotword already, and, for English,
one of its words is rare (wordfreq), so ordinary sentences stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz.distance import Indel

DEFAULT_THRESHOLD = 0.8
SPELLING_FLOOR = 0.55
_HAN = re.compile(r"[\u3400-\u9fff]")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
# A run of words is a candidate only if one of its words is rare (Zipf frequency below this,
# from wordfreq): a misheard name leaves an odd word behind ("Netties"), while a sentence of
# ordinary words ("the room sure", "one thousand") is what was said.
RARE_ZIPF = 3.5
# Words this frequent (the, on, to, and) never begin or end a multi-word run.
FUNCTION_ZIPF = 5.5


@lru_cache(maxsize=65536)
def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word, "en"))


def _common(word: str) -> bool:
    return _zipf(word) >= RARE_ZIPF


def _function_word(word: str) -> bool:
    return _zipf(word) >= FUNCTION_ZIPF


def sound_key(word: str) -> str:
    """A rough English sound key: spellings that sound alike map close together."""
    w = re.sub(r"[^a-z]", "", word.lower())
    for a, b in (("ph", "f"), ("ck", "k"), ("qu", "kw"), ("x", "ks"), ("c", "k"), ("z", "s"), ("v", "f")):
        w = w.replace(a, b)
    w = re.sub(r"(.)\1+", r"\1", w)  # doubled letters
    return w[:1] + re.sub(r"[aeiouyhw]", "", w[1:])  # vowels carry little of a name's identity


def _inflections(word: str) -> set[str]:
    return {word + "s", word + "es", word + "ed", word + "ing", word + "er", word + "ers"}


def _similarity(a: str, b: str) -> float:
    return float(Indel.normalized_similarity(a, b))


@lru_cache(maxsize=4096)
def _pinyin(text: str) -> tuple[str, ...]:
    from pypinyin import Style, lazy_pinyin

    # With tones: 黎明 (li2 ming2) is not the name 李明 (li3 ming2).
    return tuple(lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True))


@dataclass(frozen=True)
class HotwordCorrector:
    words: tuple[str, ...]
    threshold: float = DEFAULT_THRESHOLD

    def __call__(self, text: str) -> str:
        for word in sorted(self.words, key=len, reverse=True):
            if not word.strip():
                continue
            text = self._chinese(text, word) if _HAN.search(word) else self._english(text, word)
        return text

    def _english(self, text: str, hotword: str) -> str:
        target = hotword.split()
        spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        key, letters = sound_key(hotword), re.sub(r"[^a-z]", "", hotword.lower())
        if len(letters) < 4:
            return text  # too short to match safely
        best: tuple[float, int, int] | None = None
        for size in range(max(1, len(target) - 1), len(target) + 3):
            for i in range(len(spans) - size + 1):
                start, end = spans[i][0], spans[i + size - 1][1]
                run = text[start:end]
                words = _WORD.findall(run.lower())
                if hotword.lower() in run.lower() or all(_common(w) for w in words):
                    continue  # already there ("lives in PostgreSQL" is not a miss), or ordinary words
                if size > 1 and (_function_word(words[0]) or _function_word(words[-1])):
                    continue  # "on Cooper Netties": the run starts at the name, not before it
                run_letters = re.sub(r"[^a-z]", "", run.lower())
                if run_letters in _inflections(letters):
                    continue  # "matters" is not a miss of the hotword "Matter"
                sound, spelling = _similarity(sound_key(run), key), _similarity(run_letters, letters)
                # Alike in sound and not unlike in spelling ("Cooper Netties"), or alike in
                # spelling alone ("mosquito"); sound alone matches too much ("music").
                if not ((sound >= self.threshold and spelling >= SPELLING_FLOOR) or spelling >= self.threshold + 0.05):
                    continue
                score = sound + spelling
                if best is None or score > best[0]:
                    best = (score, start, end)
        if best is None:
            return text
        _, start, end = best
        return text[:start] + hotword + text[end:]

    def _chinese(self, text: str, hotword: str) -> str:
        target = _pinyin(hotword)
        n = len(hotword)
        out, i = [], 0
        while i < len(text):
            window = text[i : i + n]
            if len(window) == n and window != hotword and all(_HAN.match(c) for c in window):
                # Homophones (小/晓) are the usual miss: the same pinyin and tones, or one
                # syllable a letter off (zi3/zhi3); 张小明 is not 张晓梅.
                pinyin = _pinyin(window)
                differing = [_similarity(a, b) for a, b in zip(pinyin, target, strict=True) if a != b]
                if len(differing) <= 1 and all(score >= self.threshold - 0.05 for score in differing):
                    out.append(hotword)
                    i += n
                    continue
            out.append(text[i])
            i += 1
        return "".join(out)


def corrector(words: Sequence[str], threshold: float = DEFAULT_THRESHOLD) -> HotwordCorrector | None:
    cleaned = tuple(dict.fromkeys(w.strip() for w in words if w.strip()))
    return HotwordCorrector(cleaned, threshold) if cleaned else None
