"""The stitcher on generated speech: split sentences delivered whole, separate ones kept apart.

    python bench/stitch.py [--seeds 7 11] [--no-joint]

espeak-ng speaks 40 sentences with a pause of 0.6-1.5 s inside each (an SSML break, so the
sentence keeps its intonation; where people pause: after an article or preposition, before
a conjunction, between phrases) and 40 pairs of
separate sentences with 0.6-3 s between them. Each sample goes through what the daemon does
to a room: Silero VAD with the default settings, the recognizer with the previous piece as
prompt, joint decoding as configured, the text stage, and the stitcher with the default
settings. Pauses are drawn once per seed (default: 7 and 11, so 80 sentences and 80 pairs).
Targets: 90% or more of the split sentences arrive as one utterance; 5% or fewer of the pairs
arrive joined. ``--no-joint`` measures the texts alone. Prints a table and writes
bench/results/stitch-<device>-<date>.json (stitch-textonly-... with --no-joint).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from daemon.config import Config
from daemon.wiring import pipeline_from_config, room_states
from pipeline.messages import SAMPLE_RATE, Transcript, Utterance
from pipeline.vad import UtteranceAssembler
from tests.helpers import speak

SPLIT = [
    ("Please turn on the", "kitchen lights"), ("I would like to book a table", "for two people tonight"),
    ("Can you remind me to call", "my sister tomorrow"), ("The train to London leaves", "at nine in the morning"),
    ("I went to the store", "and bought some milk"), ("We need to finish the report", "before Friday afternoon"),
    ("Set the thermostat to", "twenty one degrees"), ("My favourite colour is", "dark green"),
    ("She said that the meeting", "was moved to Thursday"), ("Turn off the music in", "the living room"),
    ("The weather today is", "cloudy with some rain"), ("I think we should", "leave a little earlier"),
    ("Could you open the", "garage door please"), ("He forgot his keys", "because he was in a hurry"),
    ("The children are playing", "in the garden"), ("Add eggs and butter", "to the shopping list"),
    ("Lock the front door", "when you leave"), ("I can not find my", "reading glasses anywhere"),
    ("Our flight was delayed", "by almost two hours"), ("Please send the invoice", "to the finance team"),
    ("The dog needs to go", "for a walk now"), ("We are having pasta", "with tomato sauce tonight"),
    ("Start the dishwasher", "after dinner"), ("The new office is", "next to the train station"),
    ("Tell me a joke", "about computers"), ("I have been waiting", "for more than an hour"),
    ("The package should arrive", "on Monday or Tuesday"), ("Close the blinds in", "the bedroom"),
    ("Let us meet at the", "coffee shop on the corner"), ("The battery is almost", "empty again"),
    ("Play some quiet music", "while I read"), ("Water the plants on", "the balcony please"),
    ("The doctor said I should", "rest for a few days"), ("Turn the heating down", "a little bit"),
    ("My brother lives in", "a small village"), ("We watched a film", "and then went to bed"),
    ("Remind me to take", "my medicine at eight"), ("The printer on the second floor", "is out of paper"),
    ("Switch off all the lights", "except the one in the hall"), ("I will call you back", "in ten minutes"),
]  # fmt: skip
SEPARATE = [
    "The meeting starts at noon.", "Please bring your laptop.", "What time is it?", "The garage door is open.",
    "I love this song.", "Dinner is ready.", "Where are my keys?", "It is raining outside.",
    "Turn off the lights.", "The coffee is too hot.", "Open the window please.", "My phone is charging.",
    "The bus is late again.", "How was your day?", "Lock the back door.", "We are out of milk.",
    "The baby is sleeping.", "Call me when you arrive.", "This room is very cold.", "I need a new umbrella.",
    "Good morning everyone.", "The oven is still on.", "Is the shop open today?", "Please feed the cat.",
    "My computer is very slow.", "The game starts at seven.", "Thank you very much.", "Where is the remote?",
    "The garden looks lovely.", "I am going to bed now.", "Did you hear that noise?", "The water is boiling.",
    "Put the kettle on.", "The car needs petrol.", "It is my birthday today.", "Let the dog out.",
    "The soup needs more salt.", "We leave in five minutes.", "Nobody answered the door.", "Set an alarm for six.",
]  # fmt: skip


class Pipeline:
    """What the daemon does to one room, offline, with the daemon's own stages: VAD, the
    recognize stage (previous piece as prompt, joint decoding as configured), the text stage
    and the stitcher. Pieces go to the recognizer one at a time, in order, as they would
    arrive in a room."""

    def __init__(self, joint_decode: bool = True) -> None:
        from models.recognizer import load_recognizer
        from models.vad import SileroVad

        self.vad = SileroVad()
        self.recognizer = load_recognizer("bundled:tiny.en", "cpu", "float32")
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        # The daemon's default config; pieces go to the recognizer one at a time.
        self.config = Config.model_validate({"recognizer": {"max_batch": 1}, "stitch": {"joint_decode": joint_decode}})
        self.joint_decodes = 0

    def run(self, audio: np.ndarray) -> list[Transcript]:
        self.vad.reset()
        assembler = UtteranceAssembler(self.config.vad.params(), self.vad)
        segments = assembler.push(audio) + assembler.flush()
        return asyncio.run(self._stages(segments))

    async def _stages(self, segments: list[Any]) -> list[Transcript]:
        # The daemon's graph (daemon/wiring.py) with a clock that stands still: pieces are
        # released by the join decision, never by time.
        pipeline = pipeline_from_config(
            self.config, Path.cwd() / "config.toml", self.recognizer, self.executor, room_states(self.config)
        )
        assert pipeline.stitch is not None
        pipeline.stitch.clock = lambda: 0.0

        async def feed() -> None:
            for n, seg in enumerate(segments):
                start, end = seg.start / SAMPLE_RATE, seg.end / SAMPLE_RATE
                utt = Utterance("bench", f"bench-{n}", seg.audio, start, end, start, end, seg.reason, 1e9)
                await pipeline.utterances.put(utt)
            await pipeline.utterances.put(None)

        await asyncio.gather(feed(), *(stage.run() for stage in pipeline.stages))
        self.joint_decodes += pipeline.recognize.counters.joint
        out = []
        while (item := pipeline.transcripts.get_nowait()) is not None:
            out.append(item)
        return out


def split_sample(first: str, second: str, pause_s: float) -> np.ndarray:
    """One sentence with a pause inside: espeak-ng keeps its intonation across an SSML break,
    as a person who pauses mid-sentence does (two separate syntheses would each end falling)."""
    lead = np.zeros(int(0.5 * SAMPLE_RATE), np.float32)
    markup = f'<speak>{first} <break time="{round(pause_s * 1000)}ms"/> {second}.</speak>'
    return np.concatenate([lead, speak(markup, ssml=True), lead, lead, lead])


def pair_sample(first: str, second: str, pause_s: float) -> np.ndarray:
    lead = np.zeros(int(0.5 * SAMPLE_RATE), np.float32)
    gap = np.zeros(int(pause_s * SAMPLE_RATE), np.float32)
    return np.concatenate([lead, speak(first), gap, speak(second), lead, lead, lead])


def run_seed(pipeline: Pipeline, seed: int, details: list[dict[str, Any]]) -> tuple[int, int, int]:
    """One draw of pauses: (split sentences delivered whole, cut by the VAD, pairs joined)."""
    rng = random.Random(seed)
    whole = split_by_vad = joined = 0
    for first, second in SPLIT:
        pause = rng.uniform(0.6, 1.5)
        out = pipeline.run(split_sample(first, second, pause))
        pieces = sum(t.parts for t in out)
        split_by_vad += pieces > 1
        whole += len(out) == 1
        texts = [t.text for t in out]
        details.append({"seed": seed, "kind": "split", "pause_s": round(pause, 2), "texts": texts, "parts": pieces})
    for i, first in enumerate(SEPARATE):
        second = SEPARATE[(i + 1) % len(SEPARATE)]
        pause = rng.uniform(0.6, 3.0)
        out = pipeline.run(pair_sample(first, second, pause))
        joined += len(out) == 1
        parts = sum(t.parts for t in out)
        texts = [t.text for t in out]
        details.append({"seed": seed, "kind": "separate", "pause_s": round(pause, 2), "texts": texts, "parts": parts})
    return whole, split_by_vad, joined


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11], help="one draw of pauses per seed")
    parser.add_argument("--no-joint", action="store_true", help="stitch by the texts alone (joint_decode = false)")
    args = parser.parse_args()
    pipeline = Pipeline(joint_decode=not args.no_joint)
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    totals = [0, 0, 0]
    for seed in args.seeds:
        whole, cut, joined = run_seed(pipeline, seed, details)
        totals = [totals[0] + whole, totals[1] + cut, totals[2] + joined]
        rows.append({"set": f"split sentences, seed {seed}", "samples": len(SPLIT), "cut_by_vad": cut,
                     "delivered_whole_pct": round(100 * whole / len(SPLIT), 1), "target": ">= 90%"})  # fmt: skip
        rows.append({"set": f"separate sentences, seed {seed}", "samples": len(SEPARATE),
                     "wrongly_joined_pct": round(100 * joined / len(SEPARATE), 1), "target": "<= 5%"})  # fmt: skip
    n = len(args.seeds)
    rows.append({"set": "split sentences (pause 0.6-1.5 s), all", "samples": n * len(SPLIT), "cut_by_vad": totals[1],
                 "delivered_whole_pct": round(100 * totals[0] / (n * len(SPLIT)), 1), "target": ">= 90%"})  # fmt: skip
    rows.append({"set": "separate sentences (pause 0.6-3 s), all", "samples": n * len(SEPARATE),
                 "wrongly_joined_pct": round(100 * totals[2] / (n * len(SEPARATE)), 1), "target": "<= 5%"})  # fmt: skip
    # The cost of joint decoding: second recognitions per pair of consecutive pieces.
    pairs = sum(max(d["parts"] - 1, 0) for d in details)
    joint_row = {"set": "joint decodes (extra recognitions)", "samples": pairs, "joint_decodes": pipeline.joint_decodes}
    rows.append(joint_row)
    extra = {"seeds": args.seeds, "joint_decode": not args.no_joint, "details": details}
    write_results("stitch" if not args.no_joint else "stitch-textonly", rows, extra)


if __name__ == "__main__":
    main()
