"""The daemon end to end: accuracy, latency to the broker's acknowledgement, memory, start-up.

    python bench/daemon_e2e.py [--minutes 3] [--clips 20] [--partials]

Runs ``roomscribe run`` as a subprocess against a Mosquitto broker started here, with a file
room paced in real time (like a microphone):

1. espeak sentences (2-4 s each, 1.5 s pauses), looped for ``--minutes``;
2. recorded English clips from ../shared/data/speech (skipped when absent), played once.

Reports, per run: word error rate (over the whole stream, so VAD splits do not matter),
the time from the VAD's end-of-utterance decision to the broker's PUBACK (median, p95,
worst; from the daemon's ``utterance published`` log lines), resident memory at the end,
and the time from process start to the retained ``online`` status at a subscriber. With
``--partials`` the room publishes partials (every 1000 ms) and the run also reports the partial
lag: from the start of speech (the utterance's start plus the VAD's 300 ms pre-roll) to the
arrival at the subscriber of the first partial with text, median and p95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import load_clip
from bench.common import write_results
from tests.helpers import (
    SENTENCES,
    SPEECH_DIR,
    Daemon,
    Mosquitto,
    Subscriber,
    epoch,
    normalize,
    speech_with_pauses,
    write_config,
)

PRE_ROLL_S = 0.3  # vad.pre_roll_ms: the utterance starts this long before the speech


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def partial_lags(sub: Subscriber, records: list[dict[str, Any]]) -> list[float]:
    first: dict[str, float] = {}
    for (topic, payload, _), arrived in zip(sub.messages, sub.arrivals, strict=True):
        if topic.endswith("/partial"):
            message = json.loads(payload)
            if message["text"].strip():
                first.setdefault(message["id"], arrived)
    lags = []
    for r in records:
        if r["id"] in first:
            start = epoch(r["start"])
            lags.append(first[r["id"]] - (start + PRE_ROLL_S))
    return lags


def run_once(
    name: str, audio: np.ndarray, refs: list[str], loop_s: float | None, work: Path, partials: bool = False
) -> dict[str, object]:
    import jiwer

    wav = work / f"{name}.wav"
    sf.write(wav, audio, 16000)
    loop = "true" if loop_s else "false"
    room = f'[[rooms]]\nname = "bench"\nsource = {{ type = "file", path = "{wav}", realtime = true, loop = {loop} }}\n'
    if partials:
        room += "partials = true\n"
    broker = Mosquitto(work / f"broker-{name}")
    broker.start()
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    sub = Subscriber(broker.port, f"{prefix}/#", f"bench-{name}")
    sub.connected.wait(10)
    config = write_config(work / f"{name}.toml", broker.port, prefix, room)
    started = time.monotonic()
    daemon = Daemon(config)
    try:
        sub.wait_for("/status", 1, timeout_s=120)
        to_online = time.monotonic() - started
        if loop_s:
            deadline = started + loop_s
            while time.monotonic() < deadline:
                daemon.wait_log("utterance published", len(daemon.events("utterance published")) + 1, 120)
        else:
            daemon.wait_log("room idle", timeout_s=len(audio) / 16000 + 120)
            # Every piece cut is published, unless it had no speech or was joined onto another
            # (both are logged before what follows them is published): wait for one more
            # until none is missing.
            cut = len(daemon.events("utterance cut"))
            while (published := len(daemon.events("utterance published"))) < (
                cut - len(daemon.events("no speech recognized")) - len(daemon.events("pieces joined"))
            ):
                daemon.wait_log("utterance published", published + 1, 120)
        rss = rss_mb(daemon.proc.pid)
        uptime = time.monotonic() - started
        code = daemon.terminate()
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    records = sorted((json.loads(p) for p in sub.payloads("/bench/utterance")), key=lambda r: r["start"])
    hyp = normalize(" ".join(str(r["text"]) for r in records))
    passes = max(1, round(len(records) / max(1, len(refs)))) if loop_s else 1
    if loop_s:
        # Score whole passes only: the last pass may have been cut short by the stop.
        complete = (len(records) // len(refs)) * len(refs)
        hyp = normalize(" ".join(str(r["text"]) for r in records[:complete]))
        passes = complete // len(refs)
    ref = normalize(" ".join(refs * passes))
    latencies = [float(e["end_to_ack_ms"]) for e in daemon.events("utterance published")]  # type: ignore[arg-type]
    recognize = [float(r["latency_ms"]["recognize"]) for r in records]
    row: dict[str, object] = {
        "run": name + (" + partials" if partials else ""),
        "utterances": len(records),
        "wer_pct": round(100 * jiwer.wer(ref, hyp), 2),
        "end_to_ack_median_ms": round(statistics.median(latencies)),
        "end_to_ack_p95_ms": round(float(np.percentile(latencies, 95))),
        "end_to_ack_max_ms": round(max(latencies)),
        "recognize_median_ms": round(statistics.median(recognize)),
        "rss_mb": round(rss),
        "uptime_s": round(uptime),
        "start_to_online_s": round(to_online, 2),
        "exit_code": code,
    }
    if partials:
        lags = partial_lags(sub, records)
        row["partial_lag_median_ms"] = round(1000 * statistics.median(lags)) if lags else None
        row["partial_lag_p95_ms"] = round(1000 * float(np.percentile(lags, 95))) if lags else None
        row["utterances_with_partials"] = len(lags)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to loop the espeak sentences")
    parser.add_argument("--clips", type=int, default=20, help="recorded clips to play (0: none)")
    parser.add_argument("--partials", action="store_true", help="rooms publish partials; report their lag")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio, _ = speech_with_pauses(SENTENCES)
        rows.append(run_once("espeak", audio, SENTENCES, args.minutes * 60, work, args.partials))
        manifest = SPEECH_DIR / "manifest.jsonl"
        if args.clips and manifest.is_file():
            entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
            chosen = sorted(
                (e for e in entries if e["language"] == "en" and e["duration_s"] <= 16), key=lambda e: e["audio"]
            )
            step = max(1, len(chosen) // args.clips)
            chosen = chosen[::step][: args.clips]
            gap = np.zeros(int(1.5 * 16000), dtype=np.float32)
            parts = [gap]
            for entry in chosen:
                parts += [load_clip(SPEECH_DIR / entry["audio"]), gap]
            audio = np.concatenate(parts)
            rows.append(run_once("recorded", audio, [e["text"] for e in chosen], None, work, args.partials))
    write_results("daemon_e2e", rows)


if __name__ == "__main__":
    main()
