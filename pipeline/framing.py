"""Cuts a stream of arbitrary-length chunks into fixed 500 ms frames."""

from __future__ import annotations

import numpy as np

from pipeline.messages import FRAME_SAMPLES


class Framer:
    """Accumulates 16 kHz mono chunks and returns whole frames, keeping the remainder."""

    def __init__(self, frame_samples: int = FRAME_SAMPLES) -> None:
        self.frame_samples = frame_samples
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self.offset = 0  # stream index of the first pending sample

    def push(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add a chunk; return (offset, frame) for every frame now complete."""
        if len(chunk):
            self._pending.append(np.asarray(chunk, dtype=np.float32))
            self._pending_len += len(chunk)
        frames: list[tuple[int, np.ndarray]] = []
        if self._pending_len < self.frame_samples:
            return frames
        data = np.concatenate(self._pending)
        n_whole = len(data) // self.frame_samples
        for i in range(n_whole):
            frames.append((self.offset, data[i * self.frame_samples : (i + 1) * self.frame_samples]))
            self.offset += self.frame_samples
        rest = data[n_whole * self.frame_samples :]
        self._pending = [rest] if len(rest) else []
        self._pending_len = len(rest)
        return frames

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """Return the last, shorter frame (if any) at the end of a stream."""
        if not self._pending_len:
            return []
        data = np.concatenate(self._pending)
        frame = (self.offset, data)
        self.offset += len(data)
        self._pending, self._pending_len = [], 0
        return [frame]
