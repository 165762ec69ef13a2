"""The sentence pool of bench/stitch.py, drawn by rules from sources not written for it.

- Commands and questions: Home Assistant's own English intent sentences (the
  ``home-assistant-intents`` package, expanded by ``hassil``, its template engine), with a
  few room and device names for the slots it leaves to the user's home.
- Prose: the references of the shared English recordings (../shared/data/speech; LibriVox,
  LibriSpeech, LJ Speech and other read speech), when that folder is there.

A sentence is split at a phrase boundary by a rule: before a function word (a preposition,
conjunction, article or relative pronoun) in the middle 30-70% of its words, the one nearest
the middle; with none there, before the middle word.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

# Names for the slots that Home Assistant fills from the user's own home.
AREAS = ["kitchen", "living room", "bedroom", "garage", "office", "hallway", "bathroom", "garden"]
NAMES = ["ceiling light", "desk lamp", "front door", "fan", "heater", "television", "porch light", "blinds"]
FLOORS = ["ground floor", "upstairs", "basement"]
BOUNDARY = set(
    "the a an and or but so because which who that when where while if to of in on at for with from by "
    "into after before until about than as my your his her our their this".split()
)


def commands(limit_per_intent: int = 400) -> list[str]:
    """Home Assistant's English sentences, one list per intent, slots filled."""
    from hassil.intents import Intents, TextSlotList
    from hassil.sample import sample_intents
    from home_assistant_intents import get_intents

    data = get_intents("en")
    assert data is not None
    intents = Intents.from_dict(data)
    lists = {
        "area": TextSlotList.from_strings(AREAS),
        "name": TextSlotList.from_strings(NAMES),
        "floor": TextSlotList.from_strings(FLOORS),
    }
    out: list[str] = []
    seen: set[str] = set()
    for _, text in sample_intents(intents, lists, max_sentences_per_intent=limit_per_intent, language="en"):
        text = " ".join(text.split())
        # One sentence per shape: the range slots would make thousands that differ by a number.
        shape = re.sub(r"\d+", "#", text.lower())
        if shape not in seen and len(text.split()) >= 4:
            seen.add(shape)
            out.append(text)
    return out


def prose(speech_dir: Path) -> list[str]:
    """The English references of the shared recordings, as sentences of 5-30 words."""
    manifest = speech_dir / "manifest.jsonl"
    if not manifest.exists():
        return []
    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line) if line.strip() else None
        if not entry or entry["language"] != "en":
            continue
        for sentence in re.split(r"(?<=[.?!])\s+", entry["text"]):
            words = re.findall(r"[A-Za-z']+", sentence)
            if 5 <= len(words) <= 30:
                out.append(" ".join(words).lower())
    return out


def split_point(words: list[str]) -> int:
    """Where the rule splits ``words`` (the index of the second piece's first word)."""
    n = len(words)
    low, high = max(1, round(0.3 * n)), min(n - 1, round(0.7 * n))
    candidates = [i for i in range(low, high + 1) if words[i].lower() in BOUNDARY]
    if not candidates:
        return max(1, n // 2)
    return min(candidates, key=lambda i: abs(i - n / 2))


def draw(
    speech_dir: Path, seed: int, n_split: int, n_pairs: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(split sentences as (first piece, second piece), pairs of separate sentences), drawn
    with ``seed`` from commands and prose alike (at most half from either when both have enough)."""
    rng = random.Random(seed)
    pools = [p for p in (commands(), prose(speech_dir)) if p]
    for pool in pools:
        rng.shuffle(pool)
    need = n_split + 2 * n_pairs
    mixed: list[str] = []
    share = [min(len(p), need // len(pools) + 1) for p in pools]
    if len(pools) > 1 and share[1] < need // 2:
        share[0] = need - share[1]
    for pool, count in zip(pools, share, strict=True):
        mixed += pool[:count]
    rng.shuffle(mixed)
    splits = []
    for text in mixed[:n_split]:
        words = text.split()
        cut = split_point(words)
        splits.append((" ".join(words[:cut]), " ".join(words[cut:])))
    rest = mixed[n_split:]
    pairs = [(rest[2 * i], rest[2 * i + 1]) for i in range(min(n_pairs, len(rest) // 2))]
    return splits, pairs
