"""Filler words out, punctuation and spacing tidied after (docs/itn.md, "Fillers")."""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_ZH = ("呃", "嗯", "额", "唔")
DEFAULT_EN = ("um", "umm", "uh", "uhh", "er", "erm", "ah", "hmm", "hmmm", "mm")

_ZH_PAUSE = "，、。！？；,.!?;…"
_EN_PUNCT = ",.;!?…"


# Interjections that are never part of a word; the others (额 in 金额, 唔 in 唔该) count as
# fillers only where they open a clause and a pause mark follows.
_ZH_ANYWHERE = {"呃", "嗯"}


def _zh_pattern(words: Sequence[str]) -> re.Pattern[str]:
    # 啊 and 那个 only when they open a clause (好啊 keeps its particle; 那个人 is a demonstrative).
    clause_start = r"(?:^|(?<=[，。！？；,.!?;\s]))"
    anywhere = [w for w in words if w in _ZH_ANYWHERE]
    standalone = [w for w in words if w not in _ZH_ANYWHERE]
    alternatives = [rf"{clause_start}啊+[{_ZH_PAUSE}]\s*", rf"{clause_start}那个(?:[，、]\s*|(?=那个))"]
    if anywhere:
        alternatives.append(rf"(?:{_alternation(anywhere)})+[{_ZH_PAUSE}]?\s*")
    if standalone:
        alternatives.append(rf"{clause_start}(?:{_alternation(standalone)})+[{_ZH_PAUSE}]\s*")
    return re.compile("|".join(alternatives))


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _en_pattern(words: Sequence[str]) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w'-])(?:{_alternation(words)})(?![\w'-])[{_EN_PUNCT}]*\s*", re.IGNORECASE)


def tidy(text: str) -> str:
    """What removal leaves behind: leading marks, doubled spaces and commas, space before a mark."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\s+([,.;!?，。、；！？])", r"\1", text)
    text = re.sub(r"([,，、])\s*[,，、]+", r"\1", text)
    text = re.sub(r"[,，、]\s*([.。!?！？])", r"\1", text)
    text = re.sub(r"^[\s,，、;；]+", "", text)
    return text.strip()


class FillerRemover:
    def __init__(self, zh: Sequence[str] = DEFAULT_ZH, en: Sequence[str] = DEFAULT_EN) -> None:
        self._patterns = {"zh": _zh_pattern(zh), "en": _en_pattern(en) if en else None}

    def __call__(self, text: str, language: str) -> str:
        pattern = self._patterns.get(language)
        if pattern is None:
            return text
        removed = text
        # Removing one filler can open a clause for another (那嗯个，-> 那个，): repeat until
        # nothing changes, so the result is stable (applying it again changes nothing).
        for _ in range(8):
            subbed = pattern.sub(self._keep_space if language == "en" else "", removed)
            if subbed == removed:
                break
            removed = tidy(subbed)
        if removed == text:
            return text
        out = removed
        # "Um, we should go." -> "We should go.": the sentence keeps its capital.
        if language == "en" and out and text.lstrip()[:1].isupper() and out[0].islower():
            out = out[0].upper() + out[1:]
        return out

    @staticmethod
    def _keep_space(match: re.Match[str]) -> str:
        # A filler between two words leaves one space; at the start or end, none.
        return " " if match.start() > 0 and match.end() < len(match.string) else ""
