"""The user dictionary: ``wrong => right`` lines, applied after ITN (docs/itn.md).

Entries with Latin letters or digits match whole words, ignoring case ("cooper netties =>
Kubernetes"); entries in Chinese (or any script without word spaces) match as exact
substrings. All entries go into one regex, longest first, so one replacement never feeds
another. The file is re-read when it changes (checked at most once a second) or on demand;
a broken file keeps the previous entries and reports the line that is wrong.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

CHECK_EVERY_S = 1.0


class DictionaryError(ValueError):
    """A dictionary file that cannot be used; the message names the file and the line."""


def parse(text: str, source: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        wrong, arrow, right = line.partition("=>")
        if not arrow or not wrong.strip():
            raise DictionaryError(f"{source}:{number}: expected 'wrong => right', got {line[:80]!r}")
        entries[wrong.strip()] = right.strip()
    return entries


def _is_word_like(entry: str) -> bool:
    return bool(re.search(r"[A-Za-z0-9]", entry))


def compile_entries(entries: dict[str, str]) -> re.Pattern[str] | None:
    if not entries:
        return None
    parts = []
    for wrong in sorted(entries, key=len, reverse=True):
        escaped = re.escape(wrong)
        parts.append(rf"(?<!\w){escaped}(?!\w)" if _is_word_like(wrong) else escaped)
    return re.compile("|".join(parts), re.IGNORECASE)


@dataclass
class Dictionary:
    path: Path | None = None
    entries: dict[str, str] = field(default_factory=dict)
    check_every_s: float = CHECK_EVERY_S
    _lookup: dict[str, str] = field(default_factory=dict, init=False)
    _pattern: re.Pattern[str] | None = field(default=None, init=False)
    _stamp: tuple[float, int] | None = field(default=None, init=False)
    _checked_at: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.reload()
        else:
            self._set(self.entries)

    def _set(self, entries: dict[str, str]) -> None:
        self.entries = entries
        self._lookup = {k.lower(): v for k, v in entries.items()}
        self._pattern = compile_entries(entries)

    def reload(self) -> int:
        """Read the file again; raises DictionaryError (keeping the old entries) when it is bad."""
        if self.path is None:
            return len(self.entries)
        try:
            stat = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DictionaryError(f"{self.path}: cannot read: {exc}") from exc
        self._set(parse(text, str(self.path)))
        self._stamp = (stat.st_mtime, stat.st_size)
        return len(self.entries)

    def reload_if_changed(self) -> bool:
        """Re-read the file when its time or size changed; True when it was re-read."""
        now = time.monotonic()
        if self.path is None or now - self._checked_at < self.check_every_s:
            return False
        self._checked_at = now
        try:
            stat = os.stat(self.path)
        except OSError:
            return False  # gone for a moment (an editor replacing it): keep what we have
        if (stat.st_mtime, stat.st_size) == self._stamp:
            return False
        self.reload()
        return True

    def apply(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._lookup.get(m.group(0).lower(), m.group(0)), text)
