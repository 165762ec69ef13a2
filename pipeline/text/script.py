"""One script for Chinese text: Whisper writes Simplified and Traditional characters mixed
(廣州市 next to 换一首歌), whatever the speaker said. OpenCC converts character and phrase
by phrase (its t2s / s2t tables), so text that is already in the wanted script, and any
Latin letters or digits, pass unchanged."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Literal

Script = Literal["simplified", "traditional", "as-is"]
SCRIPTS: tuple[Script, ...] = ("simplified", "traditional", "as-is")
_OPENCC_CONFIG = {"simplified": "t2s", "traditional": "s2t"}


@cache
def _converter(script: Script) -> Callable[[str], str]:
    import opencc

    return opencc.OpenCC(_OPENCC_CONFIG[script]).convert


def to_script(text: str, script: Script) -> str:
    """Chinese ``text`` in ``script`` ("as-is": untouched). Lone surrogates (bytes that were
    not UTF-8, kept by the itn filter) pass through; OpenCC could not encode them."""
    if script == "as-is" or not text or text.isascii():
        return text
    convert = _converter(script)
    if not _SURROGATE.search(text):
        return convert(text)
    return "".join(part if _SURROGATE.fullmatch(part) else convert(part) for part in _SURROGATE.split(text) if part)


_SURROGATE = re.compile("([\ud800-\udfff]+)")
