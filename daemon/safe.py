"""Text from outside (commands, file names, hotwords, device names) made safe to encode."""

from __future__ import annotations

import re

SURROGATES = re.compile("[\ud800-\udfff]")


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8: lone surrogates (from JSON escapes like ``"\\ud800"``, or
    file names that were not UTF-8) become U+FFFD."""
    return SURROGATES.sub("\ufffd", text)
