"""The stitcher on speech its tuning never saw: split sentences whole, separate ones apart.

    python bench/stitch.py [--seed 19] [--split 320] [--pairs 160]

Sentences come from a broad pool by rule (bench/stitch_pool.py: Home Assistant's own
command and question sentences, and the shared recordings' prose references), each split at
a phrase boundary by a rule and spoken by espeak-ng with a voice and speed drawn per sample,
with a pause of 0.5-1.6 s inside (an SSML break, so the sentence keeps its intonation); and
pairs of separate sentences 0.6-3 s apart. The draw is seeded; the samples are split in two
halves: ``stitch.end_threshold`` is tuned on the first, and only the second is reported.

Each sample goes through what the daemon does to a room (its own stages: Silero VAD with the
room's endpointing, the recognize stage with prompts, sentence-end evidence and joint
decodes, the text stage, the stitcher). Tuning replays the stitcher's rules on the recorded
pieces for each threshold (every pair of pieces decoded jointly, at any gap the grid tries);
the report runs the stages again at the chosen one, and at the shipped defaults beside it
when they differ. Word error rates compare stitching on with stitching off (vad.hangover_ms,
every piece published). Writes bench/results/stitch-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from bench.stitch_pool import draw
from daemon.config import Config
from daemon.wiring import pipeline_from_config, room_states
from pipeline.messages import FRAME_MS, SAMPLE_RATE, Transcript, Utterance
from pipeline.stitch_rules import ends_sentence, join, joint_opinion
from pipeline.vad import UtteranceAssembler
from tests.helpers import SPEECH_DIR, _espeak

VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us+f3", "en-gb+m3", "en-us+f2"]
SPEEDS = (135, 185)
END_THRESHOLDS = [round(0.3 + 0.05 * i, 2) for i in range(14)]  # 0.30 .. 0.95
JOINT_THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 19)]  # 0.05 .. 0.90
MAX_GAPS_MS = list(range(200, 2001, 100))  # silence between pieces' audio joined (pause less 0.5 s)


def frame_arrival(t_s: float) -> float:
    """When a live room has the frame holding stream time ``t_s``: audio arrives in 500 ms
    frames, so the VAD cuts a piece when the frame holding the cut arrives."""
    frame_s = FRAME_MS / 1000
    return math.ceil(t_s / frame_s - 1e-9) * frame_s


@dataclass
class Sample:
    kind: str  # split | pair
    texts: tuple[str, str]
    pause_s: float
    voice: str
    speed: int

    @functools.cached_property
    def audio(self) -> np.ndarray:
        lead = np.zeros(int(0.5 * SAMPLE_RATE), np.float32)
        options = ["-v", self.voice, "-s", str(self.speed)]
        if self.kind == "split":
            first, second = self.texts
            markup = f'<speak>{first} <break time="{round(self.pause_s * 1000)}ms"/> {second}</speak>'
            body = _espeak(["-m", *options], markup, SAMPLE_RATE)
        else:
            gap = np.zeros(int(self.pause_s * SAMPLE_RATE), np.float32)
            first, second = (_espeak(options, t, SAMPLE_RATE) for t in self.texts)
            body = np.concatenate([first, gap, second])
        return np.concatenate([lead, body, lead, lead, lead, lead, lead])

    @property
    def reference(self) -> str:
        return " ".join(t for t in self.texts if t)


def samples(seed: int, n_split: int, n_pairs: int) -> list[Sample]:
    rng = random.Random(seed)
    splits, pairs = draw(SPEECH_DIR, seed, n_split, n_pairs)
    out = []
    for kind, texts, pause in [("split", t, (0.5, 1.6)) for t in splits] + [("pair", t, (0.6, 3.0)) for t in pairs]:
        out.append(Sample(kind, texts, round(rng.uniform(*pause), 2), rng.choice(VOICES), rng.randint(*SPEEDS)))
    rng.shuffle(out)
    return out


class Harness:
    """One room of the daemon, offline: the room's VAD, then the daemon's stages."""

    def __init__(self, stitch: dict[str, Any]) -> None:
        from models.engines import load_recognizer
        from models.vad import SileroVad

        self.vad = SileroVad()
        self.recognizer = load_recognizer("bundled:tiny.en", "cpu")  # dtype auto, as the daemon
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.configure(stitch)

    def configure(self, stitch: dict[str, Any]) -> None:
        # One configured room (never started: the harness feeds its VAD), so that the stages
        # keep its state (the last piece for a joint decode, when speech began).
        room = {"name": "bench", "source": {"type": "file", "path": "unused.wav"}}
        self.config = Config.model_validate({"recognizer": {"max_batch": 1}, "stitch": stitch, "rooms": [room]})
        self.params = self.config.room_vad_params(self.config.rooms[0])

    def run(self, audio: np.ndarray, stitched: bool = True) -> list[Transcript]:
        """The published utterances (``stitched`` False: the pieces before the stitcher)."""
        self.vad.reset()
        assembler = UtteranceAssembler(self.params, self.vad)
        segments = assembler.push(audio) + assembler.flush()
        return asyncio.run(self._stages(segments, stitched))

    async def _stages(self, segments: list[Any], stitched: bool) -> list[Transcript]:
        pipeline = pipeline_from_config(
            self.config, Path.cwd() / "config.toml", self.recognizer, self.executor, room_states(self.config)
        )
        stitch = pipeline.stitch
        assert stitch is not None
        stages = list(pipeline.stages) if stitched else [s for s in pipeline.stages if s is not stitch]
        out_queue = pipeline.transcripts if stitched else stitch.inbox
        # Stream time stands in for the clock: each piece reaches the stitcher when the VAD
        # decided it (recognition time left out), both as a live room's frames allow.
        now = {"t": 0.0}
        stitch.clock = lambda: now["t"]
        handle = stitch.handle

        room = pipeline.rooms["bench"]
        pre_roll_s = self.params.pre_roll_ms / 1000

        async def timed_handle(item: Transcript) -> None:
            # What the room's VAD had heard by the time the piece reached the stitcher: the
            # pieces cut by then (their starts), and every frame up to then.
            now["t"] = item.utterance.decided_at
            room.piece_starts.clear()
            room.heard([u.start_wall for u in cut if u.decided_at <= now["t"]], None, now["t"] - pre_roll_s)
            await handle(item)

        stitch.handle = timed_handle  # type: ignore[method-assign]
        wait_s = (self.params.hangover_ms - self.params.post_roll_ms) / 1000

        cut = []
        for n, seg in enumerate(segments):
            start, end = seg.start / SAMPLE_RATE, seg.end / SAMPLE_RATE
            decided = frame_arrival(end + wait_s)
            cut.append(Utterance("bench", f"b-{n}", seg.audio, start, end, start, end, seg.reason, decided))

        async def feed() -> None:
            for utt in cut:
                await pipeline.utterances.put(utt)
            await pipeline.utterances.put(None)

        await asyncio.gather(feed(), *(stage.run() for stage in stages))
        out = []
        while (item := out_queue.get_nowait()) is not None:
            out.append(item)
        return out


def replay(pieces: list[Transcript], threshold: float, joint_threshold: float, max_gap_ms: int) -> int:
    """How many utterances the stitcher's rules publish from ``pieces`` at these thresholds."""
    published, held, last_id = 0, None, ""
    for t in pieces:
        if held is not None:
            gap_s = t.utterance.start_wall - held.utterance.end_wall
            paired = t.joint_with == last_id and held.parts == 1
            joint = joint_opinion(held.text, t, joint_threshold) if paired else None
            # As the live stitcher: the held piece waits until its room heard max_gap of
            # silence after it, so it meets every piece that starts within max_gap.
            if gap_s * 1000 <= max_gap_ms and joint is not False:
                held = join(held, t)
            else:
                published, held = published + 1, t
        else:
            held = t
        last_id = t.utterance.id
        if ends_sentence(held, threshold):
            published, held = published + 1, None
    return published + (held is not None)


def rates(rows: list[tuple[Sample, int]]) -> tuple[float, float, int, int]:
    """(% of split sentences published as one utterance, % of pairs published as one, counts)."""
    split = [c for s, c in rows if s.kind == "split"]
    pairs = [c for s, c in rows if s.kind == "pair"]
    whole = 100 * sum(c == 1 for c in split) / max(len(split), 1)
    joined = 100 * sum(c == 1 for c in pairs) / max(len(pairs), 1)
    return round(whole, 1), round(joined, 1), len(split), len(pairs)


def tune(harness: Harness, tuning: list[Sample]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """end_threshold, joint_threshold and max_gap_ms, on the tuning half only: where at most
    3% of pairs join and at least 90% of split sentences arrive whole, the lowest
    end_threshold (the most sentences published at once), then the shortest gap (the
    shortest wait); where none does, the most whole sentences with at most 3% joined (or the
    fewest joined), ties to the lower end_threshold and the shorter gap."""
    # Every pair of pieces gets its joint decode, at every gap the grid tries: recorded at
    # the default max_gap_ms (until 2026-12-07), pieces further apart had none, and the
    # replay joined them on the gap alone, so longer gaps looked worse than they are.
    harness.configure({"end_threshold": 1.0, "max_gap_ms": max(MAX_GAPS_MS)})
    recorded = [(s, harness.run(s.audio, stitched=False)) for s in tuning]
    table = []
    for et in END_THRESHOLDS:
        for jt in JOINT_THRESHOLDS:
            for gap in MAX_GAPS_MS:
                whole, joined, _, _ = rates([(s, replay(p, et, jt, gap)) for s, p in recorded])
                table.append(
                    {"end_threshold": et, "joint_threshold": jt, "max_gap_ms": gap, "whole_pct": whole,
                     "joined_pct": joined}
                )  # fmt: skip
    both = [r for r in table if r["joined_pct"] <= 3.0 and r["whole_pct"] >= 90.0]
    if both:
        best = min(both, key=lambda r: (r["end_threshold"], r["max_gap_ms"], -r["whole_pct"], r["joined_pct"]))
    else:
        fitting = [r for r in table if r["joined_pct"] <= 3.0] or sorted(table, key=lambda r: r["joined_pct"])[:1]
        best = max(fitting, key=lambda r: (r["whole_pct"], -r["joined_pct"], -r["end_threshold"], -r["max_gap_ms"]))
    chosen = {k: best[k] for k in ("end_threshold", "joint_threshold", "max_gap_ms")}
    return chosen, table


def at_once(outputs: list[tuple[Sample, list[Transcript]]], threshold: float) -> float:
    """% of finished sentences (each pair's first) published at once, not held: the latency."""
    firsts = [out[0] for s, out in outputs if s.kind == "pair" and out]
    return round(100 * sum(ends_sentence(t, threshold) for t in firsts) / max(len(firsts), 1), 1)


def wer(pairs: list[tuple[str, str]]) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    refs, hyps = [norm(r) for r, _ in pairs], [norm(h) for _, h in pairs]
    return round(100 * jiwer.wer(refs, hyps), 2)


def report(
    harness: Harness, held_out: list[Sample], chosen: dict[str, float], with_wer: bool = True
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The held-out half at ``chosen``: whole, joined, at once, and (``with_wer``) the word
    error rates with stitching on and off (a second pass with the stitcher off)."""
    details: list[dict[str, Any]] = []
    on: list[tuple[Sample, int]] = []
    outputs: list[tuple[Sample, list[Transcript]]] = []
    texts_on, texts_off = [], []
    harness.configure(chosen)
    for s in held_out:
        out = harness.run(s.audio)
        on.append((s, len(out)))
        outputs.append((s, out))
        texts_on.append((s.reference, " ".join(t.text for t in out)))
        details.append({"kind": s.kind, "pause_s": s.pause_s, "voice": s.voice, "speed": s.speed,
                        "texts": list(s.texts), "published": [t.text for t in out],
                        "sentence_end": [t.sentence_end for t in out], "parts": [t.parts for t in out]})  # fmt: skip
    whole, joined, n_split, n_pairs = rates(on)
    rows = [
        {"set": "held-out split sentences (pause 0.5-1.6 s)", "samples": n_split, "whole_pct": whole,
         "target": ">= 90%"},
        {"set": "held-out separate pairs (0.6-3 s apart)", "samples": n_pairs, "joined_pct": joined,
         "target": "<= 3%"},
        {"set": "held-out finished sentences published at once", "samples": n_pairs,
         "at_once_pct": at_once(outputs, chosen["end_threshold"])},
    ]  # fmt: skip
    if with_wer:
        harness.configure({"enabled": False})
        for s in held_out:
            texts_off.append((s.reference, " ".join(t.text for t in harness.run(s.audio))))
        rows += [
            {"set": "held-out WER, stitching on", "samples": len(held_out), "wer_pct": wer(texts_on)},
            {"set": "held-out WER, stitching off", "samples": len(held_out), "wer_pct": wer(texts_off)},
        ]
    return rows, details


def tune_and_report(name: str, drawn: list[Sample], extra: dict[str, Any]) -> None:
    """Tune on one half of ``drawn`` (every other sample), report the other at the chosen
    point and, beside it, at the shipped defaults; write bench/results/<name>-....json."""
    tuning, held_out = drawn[0::2], drawn[1::2]
    harness = Harness({})
    shipped = {k: getattr(harness.config.stitch, k) for k in ("end_threshold", "joint_threshold", "max_gap_ms")}
    chosen, table = tune(harness, tuning)
    print(f"tuned on {len(tuning)} samples: {chosen}", flush=True)
    rows, details = report(harness, held_out, chosen)
    rows.append({"set": "chosen on the tuning half", "samples": len(tuning), **chosen})
    if chosen != shipped:
        shipped_rows, _ = report(harness, held_out, shipped, with_wer=False)
        rows += [{**r, "set": r["set"] + " (shipped defaults)"} for r in shipped_rows]
        rows.append({"set": "shipped defaults", **shipped})
    extra = {**extra, "endpoint_ms": harness.config.stitch.endpoint_ms, "tuning": table, "details": details}
    write_results(name, rows, extra)


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--split", type=int, default=320, help="split sentences drawn (half are held out)")
    parser.add_argument("--pairs", type=int, default=160, help="pairs of separate sentences drawn")
    args = parser.parse_args()
    tune_and_report("stitch", samples(args.seed, args.split, args.pairs), {"seed": args.seed})


if __name__ == "__main__":
    main()
