"""The text stage's rules in order: fillers, ITN, dictionary; routed by language."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.text.dictionary import Dictionary
from pipeline.text.en_itn import en_itn
from pipeline.text.fillers import DEFAULT_EN, DEFAULT_ZH, FillerRemover
from pipeline.text.hotwords import DEFAULT_THRESHOLD, HotwordCorrector, corrector
from pipeline.text.script import Script, to_script
from pipeline.text.zh_itn import zh_itn

ITN = {"zh": zh_itn, "en": en_itn}


def route(language: str | None) -> str | None:
    """The rule set for a transcript's language: zh (also yue, zh-TW ...), en, or none."""
    if not language:
        return None
    base = language.lower().replace("_", "-").split("-")[0]
    if base in ("zh", "yue", "cmn"):
        return "zh"
    return "en" if base == "en" else None


@dataclass(frozen=True)
class TextSettings:
    itn: bool = True
    fillers: bool = True
    fillers_zh: Sequence[str] = DEFAULT_ZH
    fillers_en: Sequence[str] = DEFAULT_EN
    dictionary: Path | None = None
    hotword_correction: bool = True
    hotword_threshold: float = DEFAULT_THRESHOLD
    # Chinese output in one script; the rules themselves run on Simplified (their word lists are).
    zh_script: Script = "simplified"


@dataclass
class TextProcessor:
    settings: TextSettings = field(default_factory=TextSettings)

    def __post_init__(self) -> None:
        s = self.settings
        self.fillers = FillerRemover(s.fillers_zh, s.fillers_en)
        self.dictionary = Dictionary(s.dictionary)
        self._correctors: dict[tuple[str, ...], HotwordCorrector | None] = {}

    def __call__(
        self, text: str, language: str | None, hotwords: Sequence[str] = (), zh_script: Script | None = None
    ) -> str:
        """Written form of ``text``. Rules only touch their own script, so English words in a
        Chinese sentence (or the reverse) are left as they are. Chinese goes through the rules
        in Simplified (their word lists are), then into ``zh_script`` (else the settings').
        Near misses of ``hotwords`` are corrected after ITN; the dictionary comes last and has
        the final word."""
        lang = route(language)
        script = zh_script or self.settings.zh_script
        if lang == "zh" and script != "as-is":
            text = to_script(text, "simplified")
        if lang is not None:
            if self.settings.fillers:
                text = self.fillers(text, lang)
            if self.settings.itn:
                text = ITN[lang](text)
        if hotwords and self.settings.hotword_correction:
            fix = self._corrector(tuple(hotwords))
            if fix is not None:
                text = fix(text)
        if lang == "zh" and script == "traditional":
            text = to_script(text, "traditional")
        return self.dictionary.apply(text)

    def _corrector(self, words: tuple[str, ...]) -> HotwordCorrector | None:
        if words not in self._correctors:
            if len(self._correctors) > 256:
                self._correctors.clear()
            self._correctors[words] = corrector(words, self.settings.hotword_threshold)
        return self._correctors[words]
