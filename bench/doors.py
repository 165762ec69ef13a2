"""The other doors, timed against what a user would run instead, side by side in one run.

    python bench/doors.py [--utterances 20] [--seed 21] [--peer /tmp/wfw/bin/wyoming-faster-whisper]

1. Wyoming: a 3.0 s utterance (a sentence drawn with ``seed`` from bench/stitch_pool.py's
   pool, Home Assistant's commands, spoken by espeak-ng and padded with silence to 3.0 s)
   sent as Home Assistant sends it; timed from ``audio-stop`` to ``transcript``. The peer is
   wyoming-faster-whisper (Home Assistant's own add-on) on the same tiny.en weights, greedy,
   float32, 2 CPU threads, in its own venv (``--peer``; skipped when missing). The two are
   asked in turn, utterance by utterance, so drift on this shared machine hits both alike.
2. The OpenAI-compatible API: a 60 s file (sentences from the same pool with pauses) posted
   with the ``openai`` client to the running daemon, against ``roomscribe transcribe`` on
   the same file (a new process: what a user who has no daemon runs), three times each.

Needs mosquitto and espeak-ng. Writes bench/results/doors-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from bench.stitch_pool import commands
from tests.helpers import (
    REPO,
    Daemon,
    Mosquitto,
    free_port,
    normalize,
    speak,
    speech_with_pauses,
    wait_for_port,
    wer,
    write_config,
)

RATE = 16000
UTTERANCE_S = 3.0
FILE_S = 60.0


def three_second_utterances(n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """The first ``n`` sentences of the shuffled pool whose speech fits 2.0-2.8 s, padded to 3.0 s."""
    pool = commands()
    random.Random(seed).shuffle(pool)
    out = []
    for text in pool:
        audio = speak(text)
        if 2.0 * RATE <= len(audio) <= 2.8 * RATE:
            lead = np.zeros(int(0.1 * RATE), np.float32)
            tail = np.zeros(int(UTTERANCE_S * RATE) - len(audio) - len(lead), np.float32)
            out.append((text, np.concatenate([lead, audio, tail])))
        if len(out) == n:
            return out
    raise RuntimeError("the pool has too few sentences of that length")


async def wyoming_once(port: int, audio: np.ndarray) -> tuple[float, str]:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        for start in range(0, len(pcm), 2048):  # Home Assistant sends 1024-sample chunks
            await client.write_event(
                AudioChunk(rate=RATE, width=2, channels=1, audio=pcm[start : start + 2048]).event()
            )
        await client.write_event(AudioStop().event())
        sent = time.perf_counter()
        while (event := await asyncio.wait_for(client.read_event(), 120)) is not None:
            if Transcript.is_type(event.type):
                return time.perf_counter() - sent, Transcript.from_event(event).text
    raise RuntimeError("no transcript")


def start_peer(peer: Path, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    from models.loading import resolve_model

    port = free_port()
    weights = resolve_model("bundled:tiny.en").weights.parent
    args = [str(peer), "--uri", f"tcp://127.0.0.1:{port}", "--model", str(weights), "--data-dir", str(folder),
            "--local-files-only", "--language", "en", "--beam-size", "1", "--compute-type", "float32",
            "--cpu-threads", "2", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, timeout_s=120)
    return proc, port


def wyoming_rows(ours: int, theirs: int | None, clips: list[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    times: dict[str, list[float]] = {"roomscribe": [], "wyoming-faster-whisper": []}
    texts: dict[str, list[str]] = {k: [] for k in times}
    ports = {"roomscribe": ours, "wyoming-faster-whisper": theirs}
    for port in ports.values():  # one warm-up each: the first decode builds caches
        if port is not None:
            asyncio.run(wyoming_once(port, clips[0][1]))
    for i, (_, audio) in enumerate(clips):
        order = list(ports.items()) if i % 2 == 0 else list(reversed(ports.items()))
        for name, port in order:
            if port is not None:
                took, text = asyncio.run(wyoming_once(port, audio))
                times[name].append(took)
                texts[name].append(text)
    refs = [normalize(t) for t, _ in clips]
    rows = []
    for name, seconds in times.items():
        if seconds:
            rows.append({"door": "wyoming 3 s", "server": name, "n": len(seconds),
                         "median_ms": round(statistics.median(seconds) * 1000),
                         "p95_ms": round(sorted(seconds)[int(0.95 * (len(seconds) - 1))] * 1000),
                         "wer_pct": round(100 * wer(refs, [normalize(t) for t in texts[name]]), 1)})  # fmt: skip
    if len(rows) == 2:
        rows[0]["ratio_to_peer"] = round(rows[0]["median_ms"] / rows[1]["median_ms"], 2)
    return rows


def sixty_second_file(folder: Path, seed: int) -> tuple[Path, str]:
    pool = commands()
    random.Random(seed + 1).shuffle(pool)
    texts: list[str] = []
    while not texts or speech_with_pauses(texts, pause_s=1.0)[0].size < FILE_S * RATE:
        texts.append(pool[len(texts)])
    audio, _ = speech_with_pauses(texts, pause_s=1.0)
    path = folder / "sixty.wav"
    sf.write(path, audio[: int(FILE_S * RATE)], RATE)
    return path, " ".join(texts)


def api_rows(http_port: int, wav: Path, reference: str, out: Path) -> list[dict[str, Any]]:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="none", max_retries=0, timeout=300)
    api, cli, texts = [], [], {"api": "", "cli": ""}
    try:
        for _ in range(3):
            started = time.perf_counter()
            with wav.open("rb") as f:
                texts["api"] = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
            api.append(time.perf_counter() - started)
            started = time.perf_counter()
            command = [sys.executable, "-m", "daemon", "transcribe", str(wav), "--out", str(out), "--format", "txt"]
            subprocess.run([*command, "--force"], check=True, capture_output=True, cwd=REPO)
            cli.append(time.perf_counter() - started)
            texts["cli"] = (out / "sixty.txt").read_text()
    finally:
        client.close()
    ref = normalize(reference)
    sides = (("openai API -> daemon", "api", api), ("roomscribe transcribe", "cli", cli))
    rows = [{"door": "60 s file", "server": name, "n": 3, "median_ms": round(statistics.median(s) * 1000),
             "wer_pct": round(100 * wer([ref], [normalize(texts[key])]), 1)} for name, key, s in sides]  # fmt: skip
    rows[0]["ratio_to_peer"] = round(rows[0]["median_ms"] / rows[1]["median_ms"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--peer", type=Path, default=Path("/tmp/wfw/bin/wyoming-faster-whisper"))
    args = parser.parse_args()
    clips = three_second_utterances(args.utterances, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wav, reference = sixty_second_file(folder, args.seed)
        broker = Mosquitto(folder / "broker")
        broker.start()
        wy, http = free_port(), free_port()
        extra = f"[wyoming]\nenabled = true\nport = {wy}\n[http]\nenabled = true\nport = {http}\n"
        daemon = Daemon(write_config(folder / "c.toml", broker.port, f"rs-{uuid.uuid4().hex[:8]}", "", extra))
        peer = start_peer(args.peer, folder) if args.peer.exists() else None
        try:
            daemon.wait_log("model loaded", timeout_s=120)
            rows = wyoming_rows(wy, peer[1] if peer else None, clips)
            if peer is not None:
                peer[0].terminate()
                peer[0].wait()
            rows += api_rows(http, wav, reference, folder / "out")
            assert daemon.terminate() == 0
        finally:
            daemon.kill()
            broker.stop()
            if peer is not None and peer[0].poll() is None:
                peer[0].kill()
    write_results("doors", rows, {"seed": args.seed, "utterance_s": UTTERANCE_S, "file_s": FILE_S})


if __name__ == "__main__":
    main()
