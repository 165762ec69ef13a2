from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.framing import Framer
from pipeline.messages import FRAME_SAMPLES
from pipeline.queues import DropOldestQueue


def test_frames_are_500_ms_with_contiguous_offsets() -> None:
    assert FRAME_SAMPLES == 8000
    framer = Framer()
    audio = np.arange(20500, dtype=np.float32)
    frames = []
    for start in range(0, len(audio), 3333):  # chunks that do not line up with frames
        frames += framer.push(audio[start : start + 3333])
    frames += framer.flush()
    assert [len(f) for _, f in frames] == [8000, 8000, 4500]
    assert [o for o, _ in frames] == [0, 8000, 16000]
    np.testing.assert_array_equal(np.concatenate([f for _, f in frames]), audio)


def test_flush_with_nothing_pending() -> None:
    framer = Framer()
    assert framer.push(np.zeros(8000, dtype=np.float32))[0][0] == 0
    assert framer.flush() == []


def test_drop_oldest_queue_counts_and_keeps_newest() -> None:
    async def scenario() -> tuple[list[int], int]:
        queue: DropOldestQueue[int] = DropOldestQueue(3)
        results = [queue.put_dropping_oldest(i) for i in range(5)]
        assert results == [True, True, True, False, False]
        return [queue.get_nowait() for _ in range(3)], queue.dropped

    items, dropped = asyncio.run(scenario())
    assert items == [2, 3, 4]
    assert dropped == 2


def test_drop_oldest_queue_needs_a_bound() -> None:
    with pytest.raises(ValueError):
        DropOldestQueue(0)
