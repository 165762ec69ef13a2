"""The recognize stage's settings (from config) and counters (into stats)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pipeline.stitch_rules import END_THRESHOLD


@dataclass(frozen=True)
class RecognizeSettings:
    max_batch: int = 16
    max_wait_ms: int = 10
    prompt_previous: bool = True
    prompt_max_gap_s: float = 60.0
    idle_release_s: float = 30.0
    # Stitching (pipeline/stitch_rules): pieces of a room at most this far apart may be
    # joined; 0: no stitching, so no sentence-end evidence and no joint decodes.
    stitch_max_gap_s: float = 0.0
    end_threshold: float = END_THRESHOLD  # stitch.end_threshold
    joint_decode: bool = True  # a piece after one that did not end its sentence is decoded with it


@dataclass
class RecognizeCounters:
    batches: int = 0
    utterances: int = 0
    audio_seconds: float = 0.0
    empty: int = 0
    failed: int = 0
    releases: int = 0
    partials: int = 0
    partials_skipped: int = 0
    joint: int = 0
    speculative: int = 0  # live pieces recognized ahead of their endpoint
    speculative_used: int = 0  # ... whose text stood for the finished piece
    speculative_wasted: int = 0  # ... in vain: speech went on (a recognition spent, no message changed)
    gaps_filled: int = 0  # speech spans of batch chunks recognized again on their own
    model_seconds: float = 0.0  # time spent in model calls (the rest of a batch job's wall time went elsewhere)
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=100))  # the latest ones
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))  # per model call, the latest
