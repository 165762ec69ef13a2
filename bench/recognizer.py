"""Our Whisper engine against faster-whisper, same weights, same audio, one run.

    python bench/recognizer.py [--json PATH] [--quick] [--modes ours-greedy,fw-beam1,...]
    python bench/recognizer.py --write-pack audio.npz      # the audio, for a machine without it
    python bench/recognizer.py --pack audio.npz --model DIR --device cuda


Audio: the espeak sentences and the recorded English clips <= 30 s in ../shared/data/speech
(skipped when absent). Each mode runs in its own subprocess, so load time and peak memory
are its own. Per mode: word error rate after Whisper's English normalizer (whisper-normalizer),
median and p95 latency per utterance at batch 1, real-time factor, throughput (audio seconds
per second) at batch 1 and, for our engine, at the best batch size, peak resident memory
(and peak GPU memory), load time. faster-whisper is a bench-only dependency:
pip install faster-whisper whisper-normalizer.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_results

BATCHES = (8, 16)
GPU_BATCHES = (8, 16, 32, 64)
MODES = {
    "ours-greedy": {"engine": "ours", "beam": 1},
    "ours-beam5": {"engine": "ours", "beam": 5},
    "ours-greedy-fp32": {"engine": "ours", "beam": 1, "dtype": "float32"},
    "ours-greedy-int8": {"engine": "ours", "beam": 1, "dtype": "float32", "quantize": "int8", "no_batch": True},
    "fw-beam1": {"engine": "fw", "beam": 1},
    "fw-beam5": {"engine": "fw", "beam": 5},
}
GPU_MODES = {
    "ours-greedy-fp16": {"engine": "ours", "beam": 1, "dtype": "float16"},
    "ours-greedy-fp32": {"engine": "ours", "beam": 1, "dtype": "float32"},
    "ours-greedy-bf16": {"engine": "ours", "beam": 1, "dtype": "bfloat16"},
    "ours-beam5-fp16": {"engine": "ours", "beam": 5, "dtype": "float16"},
    "fw-beam1-fp16": {"engine": "fw", "beam": 1, "dtype": "float16"},
    "fw-beam5-fp16": {"engine": "fw", "beam": 5, "dtype": "float16"},
    "fw-beam1-fp32": {"engine": "fw", "beam": 1, "dtype": "float32"},
}


def dataset(quick: bool, pack: Path | None = None) -> tuple[list[np.ndarray], list[str]]:
    if pack is not None:
        return read_pack(pack)
    # Imported here: a GPU machine given a pack has neither espeak-ng nor soundfile.
    from bench.accuracy import load_clip
    from tests.helpers import SENTENCES, SPEECH_DIR, speak

    audios = [speak(s) for s in SENTENCES]
    refs = list(SENTENCES)
    manifest = SPEECH_DIR / "manifest.jsonl"
    if manifest.is_file():
        entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        clips = sorted(
            (e for e in entries if e["language"] == "en" and e["duration_s"] <= 30), key=lambda e: e["audio"]
        )
        if quick:
            clips = clips[::4]
        audios += [load_clip(SPEECH_DIR / e["audio"]) for e in clips]
        refs += [e["text"] for e in clips]
    return audios, refs


def write_pack(path: Path, audios: list[np.ndarray], refs: list[str]) -> None:
    """The bench's audio as 16-bit samples in one file, so it can travel to a GPU machine."""
    samples = np.concatenate([np.clip(a, -1, 1) * 32767 for a in audios]).astype(np.int16)
    lengths = np.array([len(a) for a in audios], dtype=np.int64)
    np.savez_compressed(path, samples=samples, lengths=lengths, refs=np.array(json.dumps(refs)))


def read_pack(path: Path) -> tuple[list[np.ndarray], list[str]]:
    with np.load(path) as pack:
        samples = pack["samples"].astype(np.float32) / 32767
        bounds = np.cumsum(pack["lengths"])[:-1]
        refs: list[str] = json.loads(str(pack["refs"]))
    return list(np.split(samples, bounds)), refs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(mode: str, spec: dict[str, Any], args: argparse.Namespace, device: str) -> dict[str, Any]:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    audios, refs = dataset(args.quick, args.pack)
    normalize = EnglishTextNormalizer()
    audio_s = sum(len(a) for a in audios) / 16000
    # Ours at the daemon's default (auto: on a CPU with AMX tiles, a bfloat16 encoder), or
    # as the mode says; faster-whisper in float32 on a CPU, as its float16 weights load there.
    dtype = spec.get("dtype", "auto" if spec["engine"] == "ours" else "float32")
    started = time.perf_counter()
    if spec["engine"] == "ours":
        import torch

        from models.api import DecodingOptions
        from models.engines import load_recognizer

        recognizer = load_recognizer(
            args.model,
            device,
            dtype,
            DecodingOptions(beam_size=spec["beam"]),
            max(GPU_BATCHES),  # each call below is one batch: its list is never split
            spec.get("quantize", "none"),
        )

        def run(batch: list[np.ndarray]) -> list[str]:
            return [r.text for r in recognizer.recognize(batch)]

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
    else:
        from faster_whisper import WhisperModel

        from models.loading import resolve_model

        path = str(resolve_model(args.model).weights.parent)
        model = WhisperModel(
            path, device="cuda" if device.startswith("cuda") else "cpu", compute_type=dtype, cpu_threads=0
        )

        def run(batch: list[np.ndarray]) -> list[str]:
            out = []
            for audio in batch:
                segments, _ = model.transcribe(
                    audio,
                    beam_size=spec["beam"],
                    language="en",
                    without_timestamps=True,
                    vad_filter=False,
                    condition_on_previous_text=False,
                )
                out.append(" ".join(s.text.strip() for s in segments))
            return out

    load_s = time.perf_counter() - started
    run(audios[:1])  # warm-up
    if device.startswith("cuda"):
        # A long-running daemon sees each kernel and shape many times; the first use of
        # one costs a lazy module load and a cuBLAS heuristic lookup (measured: float16 at
        # 98x real time cold against 985x warm for float32 at batch 32). Time the steady state.
        run_batches(run, audios, GPU_BATCHES)
        for audio in audios:
            run([audio])
    latencies, texts = [], []
    for audio in audios:
        t = time.perf_counter()
        texts += run([audio])
        latencies.append(time.perf_counter() - t)
    total = sum(latencies)
    row: dict[str, Any] = {
        "mode": mode,
        "utterances": len(audios),
        "audio_s": round(audio_s, 1),
        "wer_pct": round(100 * jiwer.wer([normalize(r) for r in refs], [normalize(h) or "-" for h in texts]), 2),
        "median_ms": round(statistics.median(latencies) * 1000),
        "p95_ms": round(float(np.percentile(latencies, 95)) * 1000),
        "rtf": round(total / audio_s, 4),
        "throughput_b1": round(audio_s / total, 1),
        "load_s": round(load_s, 2),
    }
    if spec["engine"] == "ours" and not spec.get("no_batch"):
        best = (1, audio_s / total)
        for size in GPU_BATCHES if device.startswith("cuda") else BATCHES:
            t = time.perf_counter()
            run_batches(run, audios, (size,))
            best = max(best, (size, audio_s / (time.perf_counter() - t)), key=lambda b: b[1])
        row["best_batch"] = best[0]
        row["throughput_best"] = round(best[1], 1)
        row["batch_gain"] = round(best[1] / row["throughput_b1"], 2)
    row["peak_rss_mb"] = round(peak_rss_mb())
    if device.startswith("cuda"):
        import torch

        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20) if spec["engine"] == "ours" else None
    row["texts"] = texts
    return row


def run_batches(run: Any, audios: list[np.ndarray], sizes: tuple[int, ...]) -> None:
    """Every utterance, in batches of each size. Longest first, so batches hold utterances of
    similar length (as a queue of same-sized VAD segments would)."""
    order = sorted(range(len(audios)), key=lambda i: -len(audios[i]))
    for size in sizes:
        for i in range(0, len(order), size):
            run([audios[j] for j in order[i : i + size]])


def word_differences(a: list[str], b: list[str]) -> int:
    """Word edits between two modes' transcripts of the same utterances (raw text, not normalized)."""
    import jiwer

    out = jiwer.process_words([x or "-" for x in a], [y or "-" for y in b])
    return int(out.substitutions + out.deletions + out.insertions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="a quarter of the recorded clips")
    parser.add_argument("--modes", help="comma-separated subset of: " + ", ".join([*MODES, *GPU_MODES]))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="bundled:tiny.en", help="bundled:NAME or a CTranslate2 model directory")
    parser.add_argument("--pack", type=Path, help="read the audio from this file (see --write-pack)")
    parser.add_argument("--write-pack", type=Path, help="write the audio to this file and stop")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device if args.device != "auto" else ("cuda:0" if torch.cuda.is_available() else "cpu")
    table = GPU_MODES if device.startswith("cuda") else MODES
    if args.write_pack:
        write_pack(args.write_pack, *dataset(args.quick))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, {**MODES, **GPU_MODES}[args.worker], args, device)))
        return
    rows = []
    for mode in args.modes.split(",") if args.modes else table:
        command = [sys.executable, __file__, "--worker", mode, "--device", device, "--model", args.model]
        command += (["--quick"] if args.quick else []) + (["--pack", str(args.pack)] if args.pack else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{mode} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{mode}: done", file=sys.stderr, flush=True)
    by_mode = {r["mode"]: r for r in rows}
    texts = {r["mode"]: r.pop("texts") for r in rows}
    for mode, text in texts.items():
        # Reduced precision against float32 with the same engine and beam: how many words differ.
        base = mode.replace("-fp16", "-fp32").replace("-bf16", "-fp32")
        if base != mode and base in texts:
            row = by_mode[mode]
            row["word_diffs_vs_fp32"] = word_differences(texts[base], text)
    for row in rows:
        suffix = next((s for s in ("-fp16", "-fp32") if row["mode"].endswith(s)), "")
        peer = by_mode.get(("fw-beam5" if "beam5" in row["mode"] else "fw-beam1") + suffix)
        if peer and row["mode"].startswith("ours"):
            row["latency_vs_fw"] = round(row["median_ms"] / peer["median_ms"], 2)
            row["wer_vs_fw_pts"] = round(row["wer_pct"] - peer["wer_pct"], 2)
    path = write_results("recognizer", rows, {"quick": args.quick, "device": device})
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json} (and {path})")


if __name__ == "__main__":
    main()
