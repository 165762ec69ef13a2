"""Batch transcription: our job queue vs our serial loop vs faster-whisper, on two sets.

    python bench/batch.py [--clips 50] [--short 40] [--jobs N] [--repeat N]
    python bench/batch.py --pack audio.npz --model DIR   # a GPU machine without espeak-ng

"long": 50 clips of 5-60 s, each a run of recorded English clips from ../shared/data/speech/
(when present) and espeak-ng sentences with 0.8-2.5 s pauses between them (seed 5). "short":
40 recorded English clips of at most 30 s from ../shared/data/speech, drawn at random (seed
24) from all 91 of them, each transcribed as its own file. Per set, one after the other on
this machine: `roomscribe transcribe` with the default queue (several files in flight; a
file of at most 30 s whole, longer ones in timestamped chunks), the same with --jobs 1 (the
plain serial loop: one file at a time, one VAD segment per call), and faster-whisper (same
CTranslate2 weights, greedy) over the files one by one: its serial loop with its Silero VAD
filter, and its BatchedInferencePipeline at batch 8 and 16. With --repeat N the queue and
faster-whisper alternate N times and each reports its median wall. Every run is a process of
its own, timed whole: the interpreter, imports and loading the model included (until
2026-12-03 faster-whisper ran inside the bench, its imports already paid). WER against the
clips' texts checks that speed was not bought with accuracy; ``diffs`` in the JSON lists,
per set, every file where the queue's words differ from the serial loop's. Nothing here is
tuned on these sets (the 30 s rule is Whisper's window). With ``--pack``
(bench/recognizer.py --write-pack) the long clips are built from that file's utterances
instead; faster-whisper is left out where it is not installed.
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


def build(
    folder: Path,
    clips: int,
    seed: int = 5,
    pack: Path | None = None,
    *,
    seconds: tuple[float, float] = (5.0, 60.0),
    at_most_s: float | None = None,
    pieces_under_s: float | None = None,
    name: str = "clip",
    tail_s: float = 1.0,
) -> dict[str, str]:
    """``clips`` files of a length drawn from ``seconds``, each a run of pieces (recorded clips
    and espeak sentences, of less than ``pieces_under_s`` when given) with 0.8-2.5 s pauses,
    never past ``at_most_s`` when given, then ``tail_s`` of silence; references by file name."""
    rng = random.Random(seed)
    source = [p for p in pieces(pack) if pieces_under_s is None or len(p[0]) < pieces_under_s * RATE]
    references = {}
    for n in range(clips):
        target = rng.uniform(*seconds) * RATE
        parts, texts, length = [], [], 0
        while length < target:
            audio, text = source[rng.randrange(len(source))]
            gap = np.zeros(int(rng.uniform(0.8, 2.5) * RATE), np.float32)
            if at_most_s is not None and length and length + len(gap) + len(audio) > at_most_s * RATE:
                break
            parts += [gap, audio]
            texts.append(text)
            length += len(gap) + len(audio)
        parts.append(np.zeros(int(tail_s * RATE), np.float32))
        file = f"{name}{n:02d}.flac"
        sf.write(folder / file, np.concatenate(parts), RATE)
        references[file] = " ".join(texts)
    return references


def transcribe(folder: Path, options: list[str]) -> tuple[float, dict[str, str], list[dict[str, Any]]]:
    """``roomscribe transcribe --verbose`` over ``folder`` in its own process: its wall time,
    the text of each file, and its JSON log records."""
    args = [sys.executable, "-m", "daemon", "transcribe", str(folder), "--format", "jsonl", "--verbose", *options]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, check=True)
    wall = time.perf_counter() - started
    texts: dict[str, list[tuple[float, str]]] = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        texts.setdefault(Path(record["file"]).name, []).append((record["start"], record["text"]))
    records = []
    for line in result.stderr.splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return wall, {name: " ".join(t for _, t in sorted(found)) for name, found in texts.items()}, records


def ours(folder: Path, jobs: int | None, config: Path | None) -> tuple[float, dict[str, str], dict[str, Any]]:
    """Wall time, texts by file, and the run's own account of where the time went."""
    options = ["--jobs", str(jobs)] if jobs else []
    options += ["--config", str(config)] if config else []
    wall, texts, records = transcribe(folder, options)
    summary: dict[str, Any] = {}
    for record in records:
        if record.get("event") == "transcribe done":
            summary = {k: record[k] for k in ("load_s", "model_s", "vad_s", "model_calls", "gaps_filled")}
            # Interpreter start and imports (torch, CUDA) come before the run's own clock.
            summary["start_s"] = round(wall - record["wall_s"], 2)
    return wall, texts, summary


def faster_whisper(folder: Path, batch: int = 0) -> tuple[float, float, dict[str, str]]:
    """faster-whisper over the folder in a process of its own, timed whole like ours (the
    interpreter, its imports and the model load included): (wall, load, texts)."""
    from models.loading import resolve_model

    # The parent finds the folder: models.loading imports torch, which faster-whisper does not need.
    model = resolve_model("bundled:tiny.en").weights.parent
    command = [sys.executable, __file__, "--fw-worker", str(folder), "--fw-batch", str(batch), "--fw-model", str(model)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        if "No module named 'faster_whisper'" in done.stderr:
            raise ImportError("faster_whisper")
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, float(result["load_s"]), dict(result["texts"])


def fw_worker(folder: Path, batch: int, model_dir: Path) -> None:
    """Serial faster-whisper (its VAD filter), or with ``batch`` its BatchedInferencePipeline
    (VAD segments of a file decoded ``batch`` at a time, without timestamps)."""
    started = time.perf_counter()
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="float32")
    load = time.perf_counter() - started
    texts = {}
    for path in sorted(folder.glob("*.*")):
        if batch:
            pipeline = BatchedInferencePipeline(model)
            segments, _ = pipeline.transcribe(str(path), beam_size=1, language="en", batch_size=batch)
        else:
            segments, _ = model.transcribe(str(path), beam_size=1, language="en", vad_filter=True)
        texts[path.name] = " ".join(s.text.strip() for s in segments)
    print(json.dumps({"load_s": round(load, 2), "texts": texts}))


def short_clips(folder: Path, count: int, seed: int = 24) -> dict[str, str]:
    """``count`` recorded English clips of at most 30 s from ../shared/data/speech, drawn at
    random (fixed seed) from all of them: files a user would transcribe one by one."""
    manifest = SHARED / "manifest.jsonl"
    if not manifest.exists():
        return {}
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    pool = sorted((e for e in entries if e["language"] == "en" and e["duration_s"] <= 30), key=lambda e: e["audio"])
    references = {}
    for entry in random.Random(seed).sample(pool, min(count, len(pool))):
        (folder / entry["audio"]).symlink_to(SHARED / entry["audio"])
        references[entry["audio"]] = entry["text"]
    return references


RUNS = ["roomscribe queue", "roomscribe serial (--jobs 1)", "faster-whisper serial", "faster-whisper batched 8",
        "faster-whisper batched 16"]  # fmt: skip


def run_set(name: str, folder: Path, config: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every run over one folder: our serial loop once, then the queue and faster-whisper
    (serial, batched 8 and 16) alternating ``--repeat`` times (medians)."""
    runs: dict[str, tuple[float, dict[str, str], dict[str, Any]]] = {}
    walls: dict[str, list[float]] = {}

    def record(label: str, run: tuple[float, dict[str, str], dict[str, Any]]) -> None:
        walls.setdefault(label, []).append(round(run[0], 1))
        # The median run's wall stands for the label; texts and details are the last run's.
        runs[label] = (statistics.median(walls[label]), run[1], {**run[2], "walls_s": walls[label]})
        print(f"{name} / {label}: {run[0]:.1f} s {run[2]}", flush=True)

    record("roomscribe serial (--jobs 1)", ours(folder, 1, config))
    # The queue and faster-whisper alternate: their walls on a shared machine drift by
    # 10% from run to run, and the ratios between them are the close ones.
    for _ in range(args.repeat):
        record("roomscribe queue", ours(folder, args.jobs, config))
        try:
            for batch in (0, 8, 16):
                fw_wall, fw_load, fw_texts = faster_whisper(folder, batch)
                label = f"faster-whisper batched {batch}" if batch else "faster-whisper serial"
                record(label, (fw_wall, fw_texts, {"load_s": round(fw_load, 2)}))
        except ImportError:
            print("faster-whisper is not installed here: left out", flush=True)
    return runs


def rows_of(name: str, runs: dict[str, Any], references: dict[str, str], audio_s: float) -> list[dict[str, Any]]:
    names = sorted(references)
    serial_wall = runs["roomscribe serial (--jobs 1)"][0]
    peers = {label: runs[label][0] for label in RUNS[2:] if label in runs}
    rows = []
    for label in (r for r in RUNS if r in runs):
        wall, texts, where = runs[label]
        rows.append({
            "set": name, "run": label, "wall_s": round(wall, 1), "x_real_time": round(audio_s / wall, 1),
            "vs_our_serial": round(serial_wall / wall, 2),
            **{f"vs_{peer.replace('faster-whisper ', 'fw_').replace(' ', '')}": round(w / wall, 2)
               for peer, w in peers.items()},
            "wer_pct": round(100 * wer([references[n] for n in names], [texts.get(n, "") for n in names]), 2),
            **where,
        })  # fmt: skip
    return rows


def file_diffs(runs: dict[str, Any], references: dict[str, str]) -> list[dict[str, Any]]:
    """Files where the queue's words differ from the serial loop's, worst for the queue first:
    where the default path loses (or wins) words."""
    queue, serial = runs["roomscribe queue"][1], runs["roomscribe serial (--jobs 1)"][1]
    out = []
    for n in sorted(references):
        q, s = wer([references[n]], [queue.get(n, "")]), wer([references[n]], [serial.get(n, "")])
        if q != s:
            out.append({"file": n, "queue_wer": round(q, 3), "serial_wer": round(s, 3), "reference": references[n],
                        "queue": queue.get(n, ""), "serial": serial.get(n, "")})  # fmt: skip
    return sorted(out, key=lambda d: d["serial_wer"] - d["queue_wer"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--short", type=int, default=40, help="short recorded clips (0: leave that set out)")
    parser.add_argument("--jobs", type=int, help="files in flight for the queue run (default: roomscribe's)")
    parser.add_argument("--pack", type=Path, help="build the clips from this audio pack (bench/recognizer.py)")
    parser.add_argument("--model", help="recognizer.model for our runs (default: the bundled tiny.en)")
    parser.add_argument("--device", default="auto", help="recognizer.device for our runs")
    parser.add_argument("--repeat", type=int, default=1, help="queue and faster-whisper runs, alternating (median)")
    parser.add_argument("--fw-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fw-batch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--fw-model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fw_worker:
        fw_worker(args.fw_worker, args.fw_batch, args.fw_model)
        return
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"diffs": {}, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(f"[recognizer]\nmodel = {json.dumps(args.model or 'bundled:tiny.en')}\n"
                          f"device = {json.dumps(args.device)}\n")  # fmt: skip
        sets = {"long": Path(tmp) / "long", "short": Path(tmp) / "short"}
        for folder in sets.values():
            folder.mkdir()
        built = {
            "long": build(sets["long"], args.clips, pack=args.pack),
            "short": short_clips(sets["short"], args.short),
        }
        for name, references in built.items():
            if not references:
                continue
            audio_s = sum(sf.info(sets[name] / n).duration for n in references)
            print(f"{name}: {len(references)} clips, {audio_s / 60:.1f} min of audio", flush=True)
            runs = run_set(name, sets[name], config, args)
            rows += rows_of(name, runs, references, audio_s)
            extra["diffs"][name] = file_diffs(runs, references)
            extra["sets"][name] = {"clips": len(references), "audio_s": round(audio_s, 1)}
    extra |= {"audio": "pack" if args.pack else "espeak+clips",
              "targets": {"queue_vs_serial": ">= 2 on long (CPU)", "queue_wer": "within 0.3 points of serial and fw",
                          "queue_vs_fw_batched": "> 1 on long", "queue_vs_fw_serial": "> 1 on short"}}  # fmt: skip
    write_results("batch", rows, extra)


if __name__ == "__main__":
    main()
