"""Batch transcription speed: our job queue vs our serial loop vs a serial faster-whisper loop.

    python bench/batch.py [--clips 50] [--jobs N] [--repeat N]
    python bench/batch.py --pack audio.npz --model DIR   # a GPU machine without espeak-ng

50 clips of 5-60 s, each a run of recorded English clips from ../shared/data/speech/ (when
present) and espeak-ng sentences with 0.8-2.5 s pauses between them. Three runs over the same
folder, one after the other on this machine: `roomscribe transcribe` with the default queue
(several files in flight, segments of different files in one recognizer batch), the same with
--jobs 1 (the plain serial loop: one file at a time, one segment per call), and faster-whisper
(same CTranslate2 weights, greedy, its own Silero VAD filter) over the files one by one; with
--repeat N the queue and faster-whisper alternate N times and each reports its median wall. Wall
times include loading the model (printed for faster-whisper; about the same for ours). WER
against the clips' texts checks that speed was not bought with accuracy. Targets: the queue at
least 2x our serial loop on a CPU (3x on a GPU) and faster than serial faster-whisper.
With ``--pack`` (bench/recognizer.py --write-pack) the clips are built from that file's
utterances instead; faster-whisper is left out where it is not installed (it says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from tests.helpers import REPO, speak, wer

SHARED = REPO.parent / "shared" / "data" / "speech"
SENTENCES = [
    "Please turn on the kitchen lights.", "What is the weather like today?", "Open the garage door please.",
    "Set a timer for ten minutes.", "Close the curtains in the bedroom.", "Remind me to call my sister tomorrow.",
    "The meeting has been moved to Thursday afternoon.", "Play some quiet music while I read.",
    "Turn the heating down a little bit.", "We need to finish the report before Friday.",
    "The package should arrive on Monday or Tuesday.", "Switch off all the lights except the one in the hall.",
]  # fmt: skip
RATE = 16000


def pieces(pack: Path | None = None) -> list[tuple[np.ndarray, str]]:
    if pack is not None:
        from bench.recognizer import read_pack

        audios, refs = read_pack(pack)
        return [(a, r) for a, r in zip(audios, refs, strict=True) if len(a) < 20 * RATE]
    out = [(speak(s), s) for s in SENTENCES]
    manifest = SHARED / "manifest.jsonl"
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("language") != "en":
                continue
            audio, rate = sf.read(SHARED / entry["audio"], dtype="float32", always_2d=True)
            if rate == RATE and len(audio) < 20 * RATE:
                out.append((audio.mean(axis=1), entry["text"]))
    return out


def build(folder: Path, clips: int, seed: int = 5, pack: Path | None = None) -> dict[str, str]:
    rng = random.Random(seed)
    source = pieces(pack)
    references = {}
    for n in range(clips):
        target = rng.uniform(5, 60) * RATE
        parts, texts, length = [], [], 0
        while length < target:
            audio, text = source[rng.randrange(len(source))]
            gap = np.zeros(int(rng.uniform(0.8, 2.5) * RATE), np.float32)
            parts += [gap, audio]
            texts.append(text)
            length += len(gap) + len(audio)
        parts.append(np.zeros(RATE, np.float32))
        name = f"clip{n:02d}.flac"
        sf.write(folder / name, np.concatenate(parts), RATE)
        references[name] = " ".join(texts)
    return references


def ours(folder: Path, jobs: int | None, config: Path | None) -> tuple[float, dict[str, str], dict[str, Any]]:
    """Wall time, texts by file, and the run's own account of where the time went."""
    args = [sys.executable, "-m", "daemon", "transcribe", str(folder), "--format", "jsonl", "--verbose"]
    args += ["--jobs", str(jobs)] if jobs else []
    args += ["--config", str(config)] if config else []
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, check=True)
    wall = time.perf_counter() - started
    texts: dict[str, list[tuple[float, str]]] = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        texts.setdefault(Path(record["file"]).name, []).append((record["start"], record["text"]))
    summary: dict[str, Any] = {}
    for line in result.stderr.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "transcribe done":
                summary = {k: record[k] for k in ("load_s", "model_s", "vad_s", "model_calls", "gaps_filled")}
                # Interpreter start and imports (torch, CUDA) come before the run's own clock.
                summary["start_s"] = round(wall - record["wall_s"], 2)
    return wall, {name: " ".join(t for _, t in sorted(found)) for name, found in texts.items()}, summary


def faster_whisper(folder: Path) -> tuple[float, float, dict[str, str]]:
    from faster_whisper import WhisperModel

    from models.loading import resolve_model

    started = time.perf_counter()
    model = WhisperModel(str(resolve_model("bundled:tiny.en").weights.parent), device="cpu", compute_type="float32")
    load = time.perf_counter() - started
    texts = {}
    for path in sorted(folder.glob("*.flac")):
        segments, _ = model.transcribe(str(path), beam_size=1, language="en", vad_filter=True)
        texts[path.name] = " ".join(s.text.strip() for s in segments)
    return time.perf_counter() - started, load, texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--jobs", type=int, help="files in flight for the queue run (default: roomscribe's)")
    parser.add_argument("--pack", type=Path, help="build the clips from this audio pack (bench/recognizer.py)")
    parser.add_argument("--model", help="recognizer.model for our runs (default: the bundled tiny.en)")
    parser.add_argument("--device", default="auto", help="recognizer.device for our runs")
    parser.add_argument("--repeat", type=int, default=1, help="queue and faster-whisper runs, alternating (median)")
    args = parser.parse_args()
    fw_load: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        folder.mkdir()
        config = Path(tmp) / "config.toml"
        config.write_text(f"[recognizer]\nmodel = {json.dumps(args.model or 'bundled:tiny.en')}\n"
                          f"device = {json.dumps(args.device)}\n")  # fmt: skip
        references = build(folder, args.clips, pack=args.pack)
        audio_s = sum(sf.info(folder / name).duration for name in references)
        print(f"{len(references)} clips, {audio_s / 60:.1f} min of audio", flush=True)
        runs: dict[str, tuple[float, dict[str, str], dict[str, Any]]] = {}
        walls: dict[str, list[float]] = {}

        def record(label: str, run: tuple[float, dict[str, str], dict[str, Any]]) -> None:
            walls.setdefault(label, []).append(round(run[0], 1))
            # The median run's wall stands for the label; texts and details are the last run's.
            runs[label] = (statistics.median(walls[label]), run[1], {**run[2], "walls_s": walls[label]})
            print(f"{label}: {run[0]:.1f} s {run[2]}", flush=True)

        record("roomscribe serial (--jobs 1)", ours(folder, 1, config))
        # The queue and faster-whisper alternate: their walls on a shared machine drift by
        # 10% from run to run, and the ratio between the two is the close one.
        for _ in range(args.repeat):
            record("roomscribe queue", ours(folder, args.jobs, config))
            try:
                fw_wall, fw_load, fw_texts = faster_whisper(folder)
            except ImportError:
                print("faster-whisper is not installed here: left out", flush=True)
                continue
            record("faster-whisper serial", (fw_wall, fw_texts, {"load_s": round(fw_load, 2)}))
    names = sorted(references)
    serial_wall = runs["roomscribe serial (--jobs 1)"][0]
    fw = runs["faster-whisper serial"][0] if "faster-whisper serial" in runs else None
    rows: list[dict[str, Any]] = []
    for label in ("roomscribe queue", "roomscribe serial (--jobs 1)", "faster-whisper serial"):
        if label not in runs:
            continue
        wall, texts, where = runs[label]
        rows.append(
            {
                "run": label,
                "wall_s": round(wall, 1),
                "x_real_time": round(audio_s / wall, 1),
                "vs_our_serial": round(serial_wall / wall, 2),
                "vs_faster_whisper": round(fw / wall, 2) if fw else None,
                "wer_pct": round(100 * wer([references[n] for n in names], [texts.get(n, "") for n in names]), 2),
                **where,
            }
        )
    extra = {"clips": len(names), "audio_s": round(audio_s, 1), "audio": "pack" if args.pack else "espeak+clips",
             "faster_whisper_load_s": round(fw_load, 2) if fw_load is not None else None,
             "targets": {"queue_vs_serial": ">= 2 (CPU), >= 3 (GPU)", "queue_vs_faster_whisper": "> 1"}}  # fmt: skip
    write_results("batch", rows, extra)


if __name__ == "__main__":
    main()
