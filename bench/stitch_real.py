"""bench/stitch.py on real speakers: the shared English recordings, cut and paired by rule.

    python bench/stitch_real.py [--seed 19]

bench/stitch.py speaks its pool with espeak-ng, whose intonation is not a person's; this
bench asks the same questions of human speech (../shared/data/speech; skipped without it).
Each English clip of 2.5-20 s at 16 kHz whose reference is one sentence (where the reference
is punctuated: LibriSpeech, Hi-Fi TTS and others are not, so a cut there can fall between two
of its sentences) is used twice: once split, cut at the quietest 200 ms of its middle
30-70% (a pause of the speaker's own, with the speaker's own continuation) with 0.5-1.6 s of
silence put in; and once in a pair with another clip, 0.6-3 s apart. The draw is seeded,
the samples are split in two halves the same way; the tuning grid and the report are
bench/stitch.py's. Writes bench/results/stitch_real-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stitch import Sample, tune_and_report
from pipeline.messages import SAMPLE_RATE
from tests.helpers import SPEECH_DIR

QUIET_WINDOW_S = 0.2


@dataclass
class RealSample(Sample):
    """A sample of recorded speech: ``voice`` names the clip or clips, ``texts`` are their
    references (a split clip has one, and ""), the audio is given, not spoken."""

    recorded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)

    @property
    def audio(self) -> np.ndarray:  # given, not a cached espeak-ng call
        return self.recorded


def clips(speech_dir: Path) -> list[tuple[str, str, np.ndarray]]:
    """(file, reference, audio) of the clips the rule takes, in manifest order."""
    import soundfile as sf

    manifest = speech_dir / "manifest.jsonl"
    if not manifest.exists():
        sys.exit(f"no shared recordings at {speech_dir}: nothing to measure")
    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line) if line.strip() else None
        if not entry or entry["language"] != "en" or not 2.5 <= entry["duration_s"] <= 20:
            continue
        inner = entry["text"].strip().rstrip(".?!")
        if any(mark in inner for mark in (". ", "? ", "! ")):
            continue  # several sentences: the cut might end one
        audio, rate = sf.read(speech_dir / entry["audio"], dtype="float32")
        if rate == SAMPLE_RATE:
            out.append((entry["audio"], entry["text"], audio.mean(axis=1) if audio.ndim > 1 else audio))
    return out


def quietest_cut(audio: np.ndarray) -> int:
    """The middle of the quietest 200 ms in the clip's middle 30-70%: a pause of its own."""
    window = int(QUIET_WINDOW_S * SAMPLE_RATE)
    hop = SAMPLE_RATE // 100
    energy = np.convolve(audio.astype(np.float64) ** 2, np.ones(window) / window, mode="same")[::hop]
    low, high = int(0.3 * len(energy)), int(0.7 * len(energy))
    return (low + int(np.argmin(energy[low:high]))) * hop


def samples(seed: int) -> list[Sample]:
    rng = random.Random(seed)
    pool = clips(SPEECH_DIR)
    lead = np.zeros(int(0.5 * SAMPLE_RATE), np.float32)
    tail = np.zeros(int(2.5 * SAMPLE_RATE), np.float32)
    out: list[Sample] = []
    for name, text, audio in pool:
        pause = round(rng.uniform(0.5, 1.6), 2)
        cut = quietest_cut(audio)
        gap = np.zeros(int(pause * SAMPLE_RATE), np.float32)
        body = np.concatenate([lead, audio[:cut], gap, audio[cut:], tail])
        out.append(RealSample("split", (text, ""), pause, name, 0, body))
    order = list(range(len(pool)))
    rng.shuffle(order)
    for i in range(len(order) // 2):
        (name_a, text_a, a), (name_b, text_b, b) = pool[order[2 * i]], pool[order[2 * i + 1]]
        pause = round(rng.uniform(0.6, 3.0), 2)
        gap = np.zeros(int(pause * SAMPLE_RATE), np.float32)
        body = np.concatenate([lead, a, gap, b, tail])
        out.append(RealSample("pair", (text_a, text_b), pause, f"{name_a} + {name_b}", 0, body))
    rng.shuffle(out)
    return out


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    tune_and_report("stitch_real", samples(args.seed), {"seed": args.seed})


if __name__ == "__main__":
    main()
