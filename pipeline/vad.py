"""Utterance assembly from per-window speech probabilities.

The assembler is a pure state machine over 512-sample windows: tests drive it with made-up
probabilities, the pipeline with Silero's. Sample offsets are counted from the start of the
room's stream, so utterances carry exact positions. A model that can classify many windows
in one call (``probs``, as SileroVad) gets each pushed block's windows at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.messages import SAMPLE_RATE

WINDOW = 512
# Silero's recommended hysteresis: speech ends when the probability drops this far below
# the start threshold, so a wavering probability does not chop words.
NEG_THRESHOLD_GAP = 0.15


@runtime_checkable
class BatchSpeechProb(Protocol):
    def probs(self, windows: np.ndarray) -> np.ndarray:
        """P(speech) for consecutive windows [n, WINDOW], in order, state carried over."""
        ...


@dataclass(frozen=True)
class VadParams:
    threshold: float = 0.5
    min_speech_ms: int = 250
    pre_roll_ms: int = 300
    hangover_ms: int = 700
    post_roll_ms: int = 200
    min_utterance_ms: int = 400
    max_utterance_ms: int = 20000
    cut_search_ms: int = 4000
    # After this much silence (less than hangover_ms) the utterance so far goes out once as a
    # speculation, so that its text can be ready when the endpoint is decided. 0: never.
    speculate_ms: int = 0


@dataclass(frozen=True)
class Segment:
    start: int  # sample offsets in the stream, end exclusive
    end: int
    audio: np.ndarray
    reason: str  # silence | max_length | end_of_stream | shutdown | ... | speculative
    # A finished segment whose speech ended where its speculation ended (no speech came
    # since): that speculation's end offset, so its text stands for this segment. -1: none.
    speculated_end: int = -1

    @property
    def speculative(self) -> bool:
        return self.reason == SPECULATIVE


SPECULATIVE = "speculative"


def _ms(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


class UtteranceAssembler:
    """Feeds audio in, gets finished speech segments out."""

    def __init__(self, params: VadParams, speech_prob: Callable[[np.ndarray], float]) -> None:
        self.p = params
        self.speech_prob = speech_prob
        # Decided once: a model that takes many windows per call gets each block at once.
        self._probs = speech_prob.probs if isinstance(speech_prob, BatchSpeechProb) else None
        self.neg_threshold = max(0.01, params.threshold - NEG_THRESHOLD_GAP)
        self._leftover = np.zeros(0, dtype=np.float32)
        self._buf: list[np.ndarray] = []  # audio from _buf_start up to _pos
        self._buf_start = 0
        self._pos = 0  # stream offset of the next window to classify
        self._run = 0  # consecutive speech windows while idle
        self._run_start = 0
        self._in_speech = False
        self._in_silence = False
        self._utt_start = 0
        self._speech_start = 0
        self._last_speech_end = 0
        self._energy: list[tuple[int, float]] = []  # (window start, rms) inside the utterance
        self._speculated = -1  # end offset of the speculation that stands for this silence
        self.discarded = 0  # speech too short to be an utterance

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def in_progress(self) -> tuple[int, np.ndarray] | None:
        """Stream offset and audio of the utterance being spoken, for a partial result."""
        if not self._in_speech:
            return None
        return self._utt_start, self._audio(self._utt_start, self._pos)

    @property
    def position(self) -> int:
        return self._pos + len(self._leftover)

    @property
    def pending_start(self) -> int | None:
        """Stream offset where the piece being spoken would start (speech under way, or a run
        of speech windows not yet min_speech_ms long, which may come to nothing); None in
        silence."""
        if self._in_speech:
            return self._utt_start
        if self._run:
            return self._piece_start(self._run_start)
        return None

    def _piece_start(self, run_start: int) -> int:
        """Where a piece whose speech begins at ``run_start`` starts: its pre-roll before."""
        return max(self._buf_start, run_start - _ms(self.p.pre_roll_ms))

    @property
    def settled(self) -> int:
        """No piece that is not under way (``pending_start``) can start before this offset: a
        piece starts pre_roll_ms before its first speech window, and every window up to here
        was heard."""
        return self._pos - _ms(self.p.pre_roll_ms)

    def push(self, samples: np.ndarray) -> list[Segment]:
        data = np.concatenate([self._leftover, np.asarray(samples, dtype=np.float32)])
        n = len(data) // WINDOW * WINDOW
        self._leftover = data[n:]
        windows = data[:n].reshape(-1, WINDOW)
        if self._probs is not None:
            probs = [float(p) for p in self._probs(windows)]
        else:
            probs = [self.speech_prob(w) for w in windows]
        out: list[Segment] = []
        for window, prob in zip(windows, probs, strict=True):
            out.extend(self._window(window, prob))
        # A speculation that its own finished segment follows in the same block gains nothing.
        finished = {seg.start for seg in out if not seg.speculative}
        return [seg for seg in out if not (seg.speculative and seg.start in finished)]

    def flush(self, reason: str = "end_of_stream") -> list[Segment]:
        """End of stream: the utterance in progress (if any) is finished as it stands."""
        if len(self._leftover):
            self._append(self._leftover)
            self._pos += len(self._leftover)
            self._leftover = np.zeros(0, dtype=np.float32)
        out: list[Segment] = []
        if self._in_speech:
            end = min(self._pos, self._last_speech_end + _ms(self.p.post_roll_ms))
            out.extend(self._emit(end, reason))
        self._reset_idle()
        return out

    def _append(self, window: np.ndarray) -> None:
        self._buf.append(window)

    def _audio(self, start: int, end: int) -> np.ndarray:
        data = np.concatenate(self._buf) if self._buf else np.zeros(0, dtype=np.float32)
        return data[start - self._buf_start : end - self._buf_start]

    def _trim(self, keep_from: int) -> None:
        if keep_from <= self._buf_start:
            return
        data = np.concatenate(self._buf) if self._buf else np.zeros(0, dtype=np.float32)
        data = data[keep_from - self._buf_start :]
        self._buf = [data] if len(data) else []
        self._buf_start = keep_from

    def _reset_idle(self) -> None:
        self._in_speech = False
        self._in_silence = False
        self._run = 0
        self._energy = []
        self._speculated = -1

    def _window(self, window: np.ndarray, prob: float) -> list[Segment]:
        start = self._pos
        self._append(window)
        self._pos += WINDOW
        if not self._in_speech:
            return self._idle_window(start, prob)
        self._energy.append((start, float(np.sqrt(np.mean(window * window)))))
        if prob >= self.p.threshold or (prob >= self.neg_threshold and not self._in_silence):
            self._last_speech_end = self._pos
            self._in_silence = False
            self._speculated = -1  # speech again: any speculation is void
        elif prob < self.neg_threshold:
            self._in_silence = True
        silence = self._pos - self._last_speech_end
        if silence >= _ms(self.p.hangover_ms):
            end = min(self._pos, self._last_speech_end + _ms(self.p.post_roll_ms))
            out = self._emit(end, "silence")
            self._reset_idle()
            return out
        if self._pos - self._utt_start >= _ms(self.p.max_utterance_ms):
            return self._cut_long()
        if self.p.speculate_ms and self._speculated < 0 and silence >= _ms(self.p.speculate_ms):
            return self._speculate()
        return []

    def _speculate(self) -> list[Segment]:
        """The utterance so far, once per silence: recognized while the endpoint is still
        open. Nothing is trimmed; the utterance goes on as if this had not happened."""
        start = self._utt_start
        if not self._long_enough(start):
            return []
        self._speculated = self._pos
        return [Segment(start, self._pos, self._audio(start, self._pos).copy(), SPECULATIVE)]

    def _long_enough(self, start: int) -> bool:
        """The speech from ``start`` on lasts min_utterance_ms: an utterance, not a noise."""
        return self._last_speech_end - max(start, self._speech_start) >= _ms(self.p.min_utterance_ms)

    def _idle_window(self, start: int, prob: float) -> list[Segment]:
        if prob >= self.p.threshold:
            if self._run == 0:
                self._run_start = start
            self._run += 1
        elif prob < self.neg_threshold:
            self._run = 0
        if self._run and self._run * WINDOW >= _ms(self.p.min_speech_ms):
            self._in_speech = True
            self._in_silence = False
            self._speech_start = self._run_start
            self._utt_start = self._piece_start(self._run_start)
            self._last_speech_end = self._pos
            self._energy = []
        elif not self._run:
            # Keep only what a pre-roll could need.
            self._trim(max(0, self._pos - _ms(self.p.pre_roll_ms) - _ms(self.p.min_speech_ms)))
        return []

    def _cut_long(self) -> list[Segment]:
        """Cut at the quietest window of the last ``cut_search_ms``, not mid-word."""
        earliest = max(self._utt_start + _ms(self.p.min_utterance_ms), self._pos - _ms(self.p.cut_search_ms))
        candidates = [(rms, s) for s, rms in self._energy if s >= earliest]
        cut = min(candidates)[1] + WINDOW // 2 if candidates else self._pos
        self._speculated = -1  # a speculation covered up to where the silence began, not the cut
        out = self._emit(cut, "max_length")
        self._utt_start = self._speech_start = cut
        self._energy = [(s, r) for s, r in self._energy if s >= cut]
        self._last_speech_end = max(self._last_speech_end, cut)
        return out

    def _emit(self, end: int, reason: str) -> list[Segment]:
        start = self._utt_start
        out: list[Segment] = []
        if reason == "max_length" or self._long_enough(start):
            out.append(Segment(start, end, self._audio(start, end).copy(), reason, self._speculated))
        else:
            self.discarded += 1
        self._trim(end)
        return out
