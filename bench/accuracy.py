"""Word error rate and speed of the recognizer on espeak sentences and the recorded clips.

    python bench/accuracy.py [--shared DIR] [--batch N]

Prints a table and writes bench/results/accuracy-<device>-<date>.json. The recorded clips
come from ../shared/data/speech (skipped when absent); English only (the default model is
English-only). Each clip is recognized whole, as one utterance (the long clips are cut into
<= 30 s pieces by the VAD-free fixed split below, as Whisper sees at most 30 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from tests.helpers import SENTENCES, SPEECH_DIR, normalize, speak

MAX_S = 30.0


def load_clip(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1).astype(np.float32)
    out = soxr.resample(mono, sr, 16000) if sr != 16000 else mono
    return np.asarray(out, dtype=np.float32)


def recognize_all(recognizer, audios: list[np.ndarray], batch: int) -> tuple[list[str], float]:  # type: ignore[no-untyped-def]
    texts: list[str] = []
    started = time.perf_counter()
    for i in range(0, len(audios), batch):
        texts += [r.text for r in recognizer.recognize(audios[i : i + batch])]
    return texts, time.perf_counter() - started


def split_long(audio: np.ndarray) -> list[np.ndarray]:
    step = int(MAX_S * 16000)
    return [audio[i : i + step] for i in range(0, len(audio), step)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=SPEECH_DIR)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    import jiwer

    from models.engines import load_recognizer

    recognizer = load_recognizer("bundled:tiny.en", args.device, args.dtype)
    rows = []
    details: dict[str, list[dict[str, str]]] = {}

    def score(name: str, refs: list[str], audios: list[list[np.ndarray]]) -> None:
        flat = [piece for pieces in audios for piece in pieces]
        texts, seconds = recognize_all(recognizer, flat, args.batch)
        hyps, pos = [], 0
        for pieces in audios:
            hyps.append(" ".join(texts[pos : pos + len(pieces)]))
            pos += len(pieces)
        audio_s = sum(len(p) for p in flat) / 16000
        error = jiwer.wer([normalize(r) for r in refs], [normalize(h) or "<empty>" for h in hyps])
        rows.append(
            {
                "set": name,
                "clips": len(refs),
                "audio_s": round(audio_s, 1),
                "wer_pct": round(100 * error, 2),
                "recognize_s": round(seconds, 2),
                "x_realtime": round(audio_s / seconds, 1),
                "device": recognizer.device,
                "dtype": recognizer.dtype,
                "batch": args.batch,
            }
        )
        details[name] = [{"ref": r, "hyp": h} for r, h in zip(refs, hyps, strict=True)]

    score("espeak sentences", SENTENCES, [[speak(s)] for s in SENTENCES])
    manifest = args.shared / "manifest.jsonl"
    if manifest.is_file():
        entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        english = [e for e in entries if e["language"] == "en"]
        short = [e for e in english if e["duration_s"] <= MAX_S]
        long = [e for e in english if e["duration_s"] > MAX_S]
        score(
            "recorded clips <= 30 s", [e["text"] for e in short], [[load_clip(args.shared / e["audio"])] for e in short]
        )
        score(
            "recorded clips > 30 s (split)",
            [e["text"] for e in long],
            [split_long(load_clip(args.shared / e["audio"])) for e in long],
        )
    else:
        print(f"no {manifest}: recorded clips skipped")
    write_results("accuracy", rows, {"details": details})


if __name__ == "__main__":
    main()
