"""The recognizer encodes an audio it saw lately only once (models/encoded.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from models.encoded import EncodedCache
from tests.helpers import speak

if TYPE_CHECKING:
    from models.recognizer import WhisperRecognizer


def test_the_cache_encodes_only_what_it_has_not_seen_and_keeps_the_latest() -> None:
    calls: list[int] = []

    def encode(audios: list[np.ndarray]) -> torch.Tensor:
        calls.append(len(audios))
        return torch.stack([torch.full((3, 2), float(a[0])) for a in audios])

    cache = EncodedCache(size=2)
    a, b, c = (np.full(16, v, np.float32) for v in (1.0, 2.0, 3.0))
    first = cache.encode([a, b, a], encode)
    assert calls == [2]  # a once, b once
    assert first[:, 0, 0].tolist() == [1.0, 2.0, 1.0]
    again = cache.encode([b, a], encode)
    assert calls == [2] and cache.hits == 2 and again[:, 0, 0].tolist() == [2.0, 1.0]
    cache.encode([c], encode)  # evicts the least recently used (b)
    cache.encode([b], encode)
    assert calls == [2, 1, 1]
    cache.clear()
    cache.encode([a], encode)
    assert calls == [2, 1, 1, 1]


def test_a_timestamped_second_look_at_the_same_audio_reuses_the_encoder_pass(recognizer: WhisperRecognizer) -> None:
    audio = np.concatenate([speak("Please turn on the kitchen lights."), np.zeros(8000, np.float32)])
    recognizer.release_memory()  # an empty cache
    hits = recognizer._encoded.hits
    whole = recognizer.recognize([audio])[0]
    timed = recognizer.recognize([audio], timestamps=True)[0]
    assert recognizer._encoded.hits == hits + 1
    recognizer.release_memory()
    fresh = recognizer.recognize([audio], timestamps=True)[0]  # encoded anew
    assert recognizer._encoded.hits == hits + 1
    assert timed.text == fresh.text and timed.segments == fresh.segments
    assert "kitchen" in whole.text.lower()
