"""The encoder outputs of the latest audios, so the same audio is not encoded twice.

A short file in a batch job is recognized whole and once more with timestamps, to check
that the whole decode did not stop at a pause (pipeline/batch.py); both calls get the same
array, so the second reuses the first one's encoder pass: on a CPU that pass is most of a
short file's cost (285 ms for tiny.en's 30 s window on this project's 2-core CPU).
Entries are keyed by the audio's bytes (a BLAKE2 digest: about 1 ms for 30 s), kept for
the latest ``size`` audios, and dropped when the recognizer releases its memory.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

# Enough for one recognize-stage batch (recognizer.max_batch, 16) and its timestamped twins.
ENCODED_KEPT = 16


def audio_key(audio: np.ndarray) -> bytes:
    data = np.ascontiguousarray(audio, dtype=np.float32)
    return hashlib.blake2b(data.tobytes(), digest_size=16).digest()


class EncodedCache:
    def __init__(self, size: int = ENCODED_KEPT) -> None:
        self.size = size
        self._kept: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = 0

    def encode(self, audios: list[np.ndarray], encode: Callable[[list[np.ndarray]], torch.Tensor]) -> torch.Tensor:
        """Encoder outputs [batch, frames, width] for ``audios``: those seen lately from the
        cache, the others from ``encode`` (called once, for them only)."""
        keys = [audio_key(a) for a in audios]
        missing = list(dict.fromkeys(k for k in keys if k not in self._kept))
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            first = {k: keys.index(k) for k in missing}
            encoded = encode([audios[first[k]] for k in missing])
            fresh = {k: encoded[j] for j, k in enumerate(missing)}
        self.hits += sum(k not in fresh for k in keys)
        out = torch.stack([fresh[k] if k in fresh else self._kept[k] for k in keys])
        for k in keys:
            if k in fresh:
                self._kept[k] = fresh[k].clone()  # not a view that would keep the batch alive
            self._kept.move_to_end(k)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return out

    def clear(self) -> None:
        self._kept.clear()
