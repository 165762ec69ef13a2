"""From the last word to the subscriber, through the real capture path.

    python bench/latency.py [--sentences 20] [--seed 5] [--speech espeak|real]

Complete sentences (drawn with ``seed`` from bench/stitch_pool.py's pool: Home Assistant's
command sentences) are spoken by espeak-ng and played one at a time into a PulseAudio null
sink; the daemon's microphone room records its monitor through PortAudio's ``pulse`` device,
publishes to a real Mosquitto, and a subscriber stamps each arrival. The last voiced sample
is placed from when ``paplay`` returned (it drains the stream) less the trailing silence
after that sample. Reported: median and p95 of last voiced sample -> arrival, and that time
split in five (``split``): the endpoint wait, framing, recognition, stitching and publishing.
Runs the default config and, side by side, without speculation
(``stitch.speculate_ms = 0``) and with stitching off (the VAD's 700 ms hangover, every piece
published). Needs pulseaudio, pulseaudio-utils and mosquitto.

``--speech real`` plays people instead: single-sentence English clips of the shared
recordings (bench/stitch_real.py's rule, drawn with ``seed``), the last voiced sample found
as the last 10 ms whose level is a tenth of the clip's loudest; a clip the daemon publishes
in several utterances counts until the one that ends with it. It runs the defaults, the
point bench/stitch_real.py tuned on real speech, and stitching off.
Writes bench/results/latency-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from bench.stitch_pool import commands
from daemon.config import StitchSettingsSection, VadSettings
from pipeline.messages import FRAME_MS
from tests.helpers import Daemon, Mosquitto, PulseServer, Subscriber, epoch, speak, write_config

RATE = 16000
TRAILING_S = 3.0
# The defaults every configuration here keeps: the silence a piece keeps after its speech,
# and the silence that cuts it with the stitcher on (its endpoint) and off (the hangover).
POST_ROLL_S = VadSettings().post_roll_ms / 1000
STITCHED_ENDPOINT_S = StitchSettingsSection().endpoint_ms / 1000
HANGOVER_S = VadSettings().hangover_ms / 1000
FRAME_S = FRAME_MS / 1000


def sentences(n: int, seed: int) -> list[str]:
    import random

    pool = commands()
    random.Random(seed).shuffle(pool)
    return pool[:n]


def real_clips(n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    import random

    from bench.stitch_real import clips
    from tests.helpers import SPEECH_DIR

    pool = [(text, audio) for _, text, audio in clips(SPEECH_DIR)]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def make_wav(folder: Path, i: int, speech: np.ndarray) -> tuple[Path, float]:
    """The speech with 0.5 s before and TRAILING_S after; and the seconds from its last
    voiced sample to the file's end (the last 10 ms at a tenth of the loudest's level)."""
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), speech, np.zeros(int(TRAILING_S * RATE), np.float32)])
    hop = RATE // 100
    level = np.sqrt(np.mean(audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2, axis=1))
    last = int(np.flatnonzero(level > 0.1 * level.max())[-1]) * hop + hop
    path = folder / f"s{i}.wav"
    sf.write(path, audio, RATE)
    return path, (len(audio) - last) / RATE


def split(
    daemon: Daemon, payload: dict[str, Any], last_voiced: float, arrival: float, endpoint_s: float
) -> dict[str, float]:
    """Where the time from the last voiced sample to the arrival went, in five parts that
    add up to it:

    - endpoint wait: to where the VAD's endpoint silence was complete, and the capture's own
      delay (what is left of the time to the cut once the framing is taken out);
    - framing: from the endpoint to the end of the 500 ms frame that holds it, in the
      stream's own time (the piece's end in the "utterance cut" log line keeps
      ``POST_ROLL_S`` of the silence; frames start at multiples of 500 ms);
    - recognition: from the cut (its log line) to the piece's text (its "utterance
      recognized" line; at once when a speculation stood);
    - stitching: from the text to the publish call (the stitcher's hold, the text stage; the
      payload's ``end_to_publish`` counts from the cut);
    - publishing: from the publish call to the arrival (the outbox's write, the broker).

    A joined utterance's cut and text are its last piece's: the last of each before it went
    out (one sentence is played at a time). The daemon's log times, ``last_voiced`` and
    ``arrival`` are this machine's wall clock; the stream's wall times are not used (the
    room anchors them to frame arrivals, which PortAudio delivers in bursts)."""
    cuts = [(t, e) for e in daemon.events("utterance cut") if (t := epoch(e["timestamp"])) <= arrival]
    cut, cut_entry = max(cuts, key=lambda te: te[0])
    stream_end = float(cut_entry["start_s"]) + float(cut_entry["duration_s"])  # type: ignore[arg-type]
    endpoint = stream_end - POST_ROLL_S + endpoint_s
    framing = math.ceil(endpoint / FRAME_S - 1e-9) * FRAME_S - endpoint
    published = cut + payload["latency_ms"]["end_to_publish"] / 1000
    recognized = [epoch(e["timestamp"]) for e in daemon.events("utterance recognized")]
    ready = max([cut, *(t for t in recognized if t <= published)])
    parts = {
        "endpoint_wait_s": cut - last_voiced - framing,
        "framing_s": framing,
        "recognition_s": ready - cut,
        "stitching_s": published - ready,
        "publishing_s": arrival - published,
    }
    return {k: round(v, 3) for k, v in parts.items()}


PARTS = ("endpoint_wait_s", "framing_s", "recognition_s", "stitching_s", "publishing_s")


def speculated(daemon: Daemon) -> set[object]:
    """Ids of the pieces whose text was recognized ahead of their endpoint."""
    return {e.get("utterance_id") for e in daemon.events("utterance recognized") if e.get("speculated")}


def warm_up(folder: Path, sub: Subscriber, pulse: PulseServer) -> None:
    """One sentence, not measured, until its utterance arrives: the capture stream flows.
    (PortAudio's pulse device sometimes delivers nothing for its first 2 s, and the room
    reopens it: a sentence played meanwhile is never heard.)"""
    wav, _ = make_wav(folder, -1, speak("Good evening."))
    for _ in range(3):
        pulse.play(wav)
        try:
            sub.wait_for("/utterance", 1, timeout_s=15)
            return
        except TimeoutError:
            continue
    raise RuntimeError("the room heard nothing of three warm-up sentences")


def ending_utterance(sub: Subscriber, daemon: Daemon, seen: int, last_voiced: float) -> tuple[dict[str, Any], int]:
    """The payload of the utterance that ends with the speech played after the first
    ``seen``, and how many utterances the speech arrived in."""
    count = 1
    while True:
        try:
            got = sub.wait_for("/utterance", seen + count, timeout_s=30)
        except TimeoutError:
            print("".join(daemon.raw[-40:]), file=sys.stderr)  # what the daemon did instead
            raise
        payload: dict[str, Any] = json.loads(got[seen + count - 1])
        if epoch(payload["end"]) >= last_voiced - 0.5:
            return payload, count
        count += 1


def run_config(
    folder: Path,
    broker: Mosquitto,
    pulse: PulseServer,
    texts: list[tuple[str, np.ndarray]],
    extra: str,
    several: bool,
) -> list[dict[str, Any]]:
    """``several``: a recording may arrive in several utterances (real speech with pauses);
    an espeak-ng command may not."""
    stitched = tomllib.loads(extra).get("stitch", {}).get("enabled", True)
    endpoint_s = STITCHED_ENDPOINT_S if stitched else HANGOVER_S
    prefix = f"lat-{uuid.uuid4().hex[:6]}"
    room = '[[rooms]]\nname = "lounge"\nsource = { type = "mic", device = "pulse" }\n'
    config = write_config(folder / f"{prefix}.toml", broker.port, prefix, room, extra)
    sub = Subscriber(broker.port, f"{prefix}/lounge/utterance", f"{prefix}-viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config, env={**pulse.env, "PULSE_SOURCE": f"{pulse.sink}.monitor"})
    rows = []
    try:
        daemon.wait_log("room listening", timeout_s=120)
        warm_up(folder, sub, pulse)
        for i, (text, speech) in enumerate(texts):
            wav, after_voice = make_wav(folder, i, speech)
            seen = len(sub.payloads("/utterance"))
            pulse.play(wav)
            last_voiced = time.time() - after_voice
            payload, count = ending_utterance(sub, daemon, seen, last_voiced)
            if count > 1 and not several:
                raise RuntimeError(f"one sentence, several utterances: {sub.payloads('/utterance')[seen:]}")
            arrival = sub.arrivals[seen + count - 1]
            latency = payload["latency_ms"]
            rows.append({
                "text": text, "heard": payload["text"], "parts": payload["parts"], "utterances": count,
                "total_s": round(arrival - last_voiced, 3),
                **split(daemon, payload, last_voiced, arrival, endpoint_s),
                "recognize_s": latency["recognize"] / 1000,
                "decided_to_publish_s": latency.get("end_to_publish", 0) / 1000,
                "voice_to_end_s": round(epoch(payload["end"]) - last_voiced, 3),
                "speculated": payload["id"] in speculated(daemon),
            })  # fmt: skip
            if len(sub.payloads("/utterance")) > seen + count:
                raise RuntimeError(f"utterances after the speech ended: {sub.payloads('/utterance')[seen:]}")
        daemon.terminate()
    finally:
        daemon.kill()
        sub.close()
    return rows


def summary(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals = sorted(r["total_s"] for r in rows)
    p95 = totals[min(len(totals) - 1, round(0.95 * (len(totals) - 1)))]
    med = statistics.median
    return {
        "config": name, "sentences": len(rows), "median_s": round(med(totals), 3), "p95_s": round(p95, 3),
        "worst_s": totals[-1],
        # Where the time goes (split): the median of each part (medians need not add up to
        # the median total); the model time of each recognition, whether or not it was done
        # ahead, and how many texts were ready at the endpoint (speculated).
        **{part: round(med(r[part] for r in rows), 3) for part in PARTS},
        "recognize_s": round(med(r["recognize_s"] for r in rows), 3),
        "speculated_pct": round(100 * sum(r["speculated"] for r in rows) / max(len(rows), 1), 1),
        "target": "median <= 1.0 s, p95 <= 1.4 s" if name == "default" else "",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--speech", choices=("espeak", "real"), default="espeak")
    args = parser.parse_args()
    configs = {"default": ""}
    if args.speech == "real":
        texts = real_clips(args.sentences, args.seed)
        # bench/stitch_real.py's choice on its tuning half (2026-12-07).
        configs["tuned on real speech"] = "[stitch]\nend_threshold = 0.8\njoint_threshold = 0.25\nmax_gap_ms = 1000\n"
    else:
        texts = [(text, speak(text)) for text in sentences(args.sentences, args.seed)]
        configs["no speculation"] = "[stitch]\nspeculate_ms = 0\n"
    configs["stitching off"] = "[stitch]\nenabled = false\n"
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker")
        pulse = PulseServer(folder / "pulse")
        broker.start()
        pulse.start()
        try:
            for name, extra in configs.items():
                results[name] = run_config(folder, broker, pulse, texts, extra, several=args.speech == "real")
                print(f"{name}: done", flush=True)
        finally:
            pulse.stop()
            broker.stop()
    rows = [summary(name, r) for name, r in results.items()]
    name = "latency" if args.speech == "espeak" else "latency_real"
    write_results(name, rows, {"seed": args.seed, "speech": args.speech, "per_sentence": results})


if __name__ == "__main__":
    main()
