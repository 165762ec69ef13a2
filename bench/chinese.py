"""Chinese through the real paths: the shared Mandarin clips, bundled:base, side by side.

    python bench/chinese.py [--device cpu|cuda] [--dtype auto|float32|float16] [--modes a,b] [--repeat N]

Every clip of ../shared/data/speech with language zh. Per mode, in its own process (so time
and peak memory are its own): our recognizer on each whole clip, ``roomscribe transcribe``
(the daemon's stages at their default settings for zh: beam 5 by recognizer.language_beams,
and with that turned off, greedy) and faster-whisper with the
same weights (a bench-only copy of model.bin in a temporary folder: faster-whisper reads a
folder), greedy and beam 5. Character error rate after the text is put in Simplified
(OpenCC, as text.zh_script does) and punctuation and spaces are removed, per clip and
overall; whole-process wall time (load included) and peak resident memory.
Writes bench/results/chinese-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from tests.helpers import REPO, SPEECH_DIR

MODES = ["ours-clip-greedy", "ours-clip-beam5", "transcribe-greedy", "transcribe-default", "fw-greedy", "fw-beam5"]


def clips() -> list[dict[str, Any]]:
    manifest = SPEECH_DIR / "manifest.jsonl"
    entries = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted((e for e in entries if e["language"] == "zh"), key=lambda e: e["audio"])


def plain(text: str) -> str:
    """Simplified, no punctuation or spaces: what CER is counted on."""
    from pipeline.text.script import to_script

    text = to_script(text, "simplified")
    return "".join(c for c in text if not unicodedata.category(c).startswith(("P", "Z", "S")) and not c.isspace())


def cer(ref: str, hyp: str) -> tuple[int, int]:
    """(edits, reference characters)."""
    import jiwer

    r, h = plain(ref), plain(hyp)
    if not r:
        return len(h), 0
    return round(jiwer.cer(r, h) * len(r)), len(r)


def fw_folder(tmp: Path) -> Path:
    from models.loading import resolve_model

    files = resolve_model("bundled:base")
    folder = tmp / "whisper-base-ct2"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (folder / name).symlink_to(files.weights.parent / name)
    with (folder / "model.bin").open("wb") as out:
        for part in files.parts:
            out.write(part.read_bytes())
    return folder


def worker(mode: str, device: str, dtype: str, fw_path: str) -> dict[str, Any]:
    from bench.accuracy import load_clip

    entries = clips()
    texts: list[str]
    if mode.startswith("ours-clip"):
        from models.api import DecodingOptions
        from models.engines import load_recognizer

        beam = 5 if mode.endswith("beam5") else 1
        options = DecodingOptions(beam_size=beam, language_beams=())
        recognizer = load_recognizer("bundled:base", device, dtype, options)
        texts = [recognizer.recognize([load_clip(SPEECH_DIR / e["audio"])], language="zh")[0].text for e in entries]
    else:
        from faster_whisper import WhisperModel

        # faster-whisper has no mixed precision: float32 on a CPU, float16 on a GPU for auto.
        compute = dtype if dtype != "auto" else ("float16" if device.startswith("cuda") else "float32")
        model = WhisperModel(fw_path, device=device, compute_type=compute)
        beam = 5 if mode.endswith("beam5") else 1
        texts = []
        for e in entries:
            segments, _ = model.transcribe(load_clip(SPEECH_DIR / e["audio"]), language="zh", beam_size=beam)
            texts.append("".join(s.text for s in segments))
    # No wall time here: run_mode times this whole process.
    return {"texts": texts, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def transcribe_mode(mode: str, tmp: Path, device: str, dtype: str) -> dict[str, Any]:
    entries = clips()
    config = tmp / f"{mode}.toml"
    # The default decodes Chinese with beam 5 (recognizer.language_beams); greedy turns that off.
    beam = "language_beams = {}\n" if mode.endswith("greedy") else ""
    config.write_text(f'[recognizer]\nmodel = "bundled:base"\ndevice = "{device}"\ndtype = "{dtype}"\n{beam}')
    inputs = tmp / "zh"
    if not inputs.exists():
        inputs.mkdir()
        for e in entries:
            (inputs / e["audio"]).symlink_to(SPEECH_DIR / e["audio"])
    started = time.perf_counter()
    command = [sys.executable, "-m", "daemon", "transcribe", str(inputs), "--format", "jsonl"]
    done = subprocess.run(
        [*command, "--language", "zh", "--config", str(config)], capture_output=True, text=True, cwd=REPO
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    by_file: dict[str, list[tuple[float, str]]] = {}
    for line in done.stdout.splitlines():
        record = json.loads(line)
        by_file.setdefault(Path(record["file"]).name, []).append((record["start"], record["text"]))
    texts = ["".join(t for _, t in sorted(by_file.get(e["audio"], []))) for e in entries]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"texts": texts, "wall_s": wall, "rss_mb": usage}


def run_mode(mode: str, args: argparse.Namespace, tmp: Path, fw_path: str) -> dict[str, Any]:
    """One mode in a fresh process (its peak memory is its own; transcribe's is its child's)."""
    command = [sys.executable, __file__, "--worker", mode, "--device", args.device, "--dtype", args.dtype]
    started = time.perf_counter()
    done = subprocess.run([*command, "--fw", fw_path, "--tmp", str(tmp)], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    # The whole worker process, as `roomscribe transcribe` is timed around its own process
    # (transcribe modes bring that wall): the interpreter and imports count for every
    # engine (until 2026-12-03 they were left out for ours-clip and faster-whisper).
    result.setdefault("wall_s", wall)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--worker")
    parser.add_argument("--fw", default="")
    parser.add_argument("--tmp", type=Path)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + " ".join(MODES))
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode, interleaved; the median time is kept")
    args = parser.parse_args()
    if args.worker:
        if args.worker.startswith("transcribe"):
            result = transcribe_mode(args.worker, args.tmp, args.device, args.dtype)
        else:
            result = worker(args.worker, args.device, args.dtype, args.fw)
        print(json.dumps(result, ensure_ascii=False))
        return
    entries = clips()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        fw_path = str(fw_folder(tmp))
        # Interleaved rounds, so that the box's drift falls on every mode alike.
        modes = args.modes.split(",")
        walls: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for mode in modes:
                results[mode] = run_mode(mode, args, tmp, fw_path)
                walls[mode].append(results[mode]["wall_s"])
                print(f"{mode}: {results[mode]['wall_s']:.1f} s", flush=True)
    for mode, times in walls.items():
        results[mode]["wall_s"] = statistics.median(times)
        results[mode]["walls_s"] = [round(t, 2) for t in times]
    rows = []
    fw_wall = {beam: results[f"fw-{beam}"]["wall_s"] for beam in ("greedy", "beam5") if f"fw-{beam}" in results}
    for mode, result in results.items():
        pairs = [cer(e["text"], t) for e, t in zip(entries, result["texts"], strict=True)]
        edits, chars = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        beam = "greedy" if mode.endswith("greedy") else "beam5"
        rows.append({
            "mode": mode, "clips": len(entries), "cer_pct": round(100 * edits / chars, 1),
            "wall_s": round(result["wall_s"], 2), "walls_s": result["walls_s"],
            "wall_vs_fw_same_beam": round(result["wall_s"] / fw_wall[beam], 2) if beam in fw_wall else None,
            "peak_rss_mb": round(result["rss_mb"]),
        })  # fmt: skip
    per_clip = {
        e["audio"]: {m: {"text": r["texts"][i], "cer": cer(e["text"], r["texts"][i])} for m, r in results.items()}
        for i, e in enumerate(entries)
    }
    write_results("chinese", rows, {"per_clip": per_clip, "references": {e["audio"]: e["text"] for e in entries}})


if __name__ == "__main__":
    main()
