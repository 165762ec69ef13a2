"""Soak: an hour (or more) of speech and silence through the daemon, watching for leaks.

    python bench/soak.py [--hours 1.0] [--interval 2.0]

Builds a FLAC of espeak-ng sentences (and the recorded clips in ../shared/data/speech/ when
present) separated by 1-6 s of silence, then runs `roomscribe run` as a subprocess with that
file as a room read as fast as the pipeline takes it, a real Mosquitto, and the recognizer's
idle release as configured. Every --interval seconds it samples the daemon's resident memory,
open file descriptors and threads from outside (psutil), and CUDA memory from the stats topic
when the model is on a GPU. Prints the growth between the first and the last tenth of the run
(target: memory under 5%, no fd or thread growth), writes bench/results/soak-<device>-<date>.json
and a PNG plot of memory over time beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.batch import SENTENCES
from bench.common import RESULTS, write_results
from tests.helpers import Daemon, Mosquitto, Subscriber, speak, write_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
RATE = 16000


def build_audio(path: Path, hours: float, seed: int = 3) -> tuple[float, int]:
    """Speech and silence, written block by block (an hour is 230 MB as float32)."""
    rng = random.Random(seed)
    clips = [speak(s) for s in SENTENCES]
    if SHARED.is_dir():
        for wav in sorted(SHARED.glob("*.wav"))[:20]:
            audio, rate = sf.read(wav, dtype="float32", always_2d=True)
            if rate == RATE and len(audio) < 25 * RATE:
                clips.append(audio.mean(axis=1))
    total = int(hours * 3600 * RATE)
    written = speech = 0
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16", format="FLAC") as out:
        while written < total:
            clip = clips[rng.randrange(len(clips))]
            gap = np.zeros(int(rng.uniform(1.0, 6.0) * RATE), np.float32)
            out.write(np.concatenate([clip, gap]))
            written += len(clip) + len(gap)
            speech += 1
    return written / RATE, speech


def tenth_growth(values: list[float]) -> tuple[float, float, float]:
    n = max(1, len(values) // 10)
    first, last = float(np.mean(values[:n])), float(np.mean(values[-n:]))
    return first, last, 100 * (last - first) / first if first else 0.0


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [s["rss_bytes"] / 2**20 for s in samples], label="resident memory (MiB)")
    if any(s.get("gpu_allocated_bytes") for s in samples):
        ax.plot(t, [(s.get("gpu_allocated_bytes") or 0) / 2**20 for s in samples], label="CUDA allocated (MiB)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(
        t, [s["audio_seconds"] / 60 for s in samples], color="grey", linestyle=":", label="speech recognized (min)"
    )
    ax2.set_ylabel("minutes of speech recognized")
    fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.88))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        audio = tmp / "soak.flac"
        audio_s, clips = build_audio(audio, args.hours)
        print(f"audio: {audio_s / 3600:.2f} h, {clips} clips", flush=True)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        prefix = f"soak-{uuid.uuid4().hex[:6]}"
        room = f'[[rooms]]\nname = "soak"\nsource = {{ type = "file", path = "{audio}", realtime = false }}\n'
        extra = f'[recognizer]\ndevice = "{args.device}"\n'
        config = write_config(tmp / "c.toml", broker.port, prefix, room, extra=extra)
        config.write_text(config.read_text().replace("[daemon]\n", "[daemon]\nstats_interval_s = 2\n"))
        sub = Subscriber(broker.port, f"{prefix}/#", "soak-viewer")
        daemon = Daemon(config)
        samples: list[dict[str, Any]] = []
        latest: dict[str, Any] = {}
        try:
            daemon.wait_log("ready", timeout_s=300)
            process = psutil.Process(daemon.proc.pid)
            started = time.monotonic()
            while True:
                with process.oneshot():
                    sample = {
                        "t": round(time.monotonic() - started, 1),
                        "rss_bytes": process.memory_info().rss,
                        "open_fds": process.num_fds(),
                        "threads": process.num_threads(),
                    }
                stats = [json.loads(p) for t, p, _ in sub.messages[-50:] if t.endswith("/stats")]
                latest = stats[-1] if stats else latest  # none among the last 50 messages: the previous
                sample["audio_seconds"] = latest.get("audio_seconds", 0.0)
                sample["utterances"] = latest.get("utterances", 0)
                sample["gpu_allocated_bytes"] = (latest.get("gpu") or {}).get("allocated_bytes")
                samples.append(sample)
                if latest.get("rooms", {}).get("soak", {}).get("state") == "idle" and not any(
                    latest["queues"].values()
                ):
                    break
                if len(samples) % 30 == 0:
                    print(f"{sample['t']:7.0f} s  rss {sample['rss_bytes'] / 2**20:6.0f} MiB  "
                          f"fds {sample['open_fds']}  threads {sample['threads']}  "
                          f"speech {sample['audio_seconds'] / 60:.1f} min", flush=True)  # fmt: skip
                time.sleep(args.interval)
            final = latest
            assert daemon.terminate() == 0
        finally:
            daemon.kill()
            sub.close()
            broker.stop()
    wall = samples[-1]["t"]
    rows = []
    for key, unit in (("rss_bytes", "MiB"), ("open_fds", ""), ("threads", "")):
        values = [float(s[key]) for s in samples]
        scale = 2**20 if unit else 1
        first, last, growth = tenth_growth(values)
        target = "< 5%" if key == "rss_bytes" else "no growth"
        rows.append({"measure": key.replace("_bytes", " (MiB)"), "first_tenth": round(first / scale, 1),
                     "last_tenth": round(last / scale, 1), "max": round(max(values) / scale, 1),
                     "growth_pct": round(growth, 2), "target": target})  # fmt: skip
    stamp = time.strftime("%Y-%m-%d")
    where = "cpu" if args.device == "cpu" else args.device
    png = RESULTS / f"soak-{where}-{stamp}.png"
    RESULTS.mkdir(exist_ok=True)
    title = f"roomscribe soak: {audio_s / 3600:.2f} h of audio in {wall / 60:.1f} min ({args.device})"
    plot(samples, png, title)
    extra = {
        "audio_hours": round(audio_s / 3600, 3),
        "wall_s": wall,
        "utterances": final.get("utterances"),
        "speech_minutes": round(final.get("audio_seconds", 0) / 60, 1),
        "dropped_frames": final.get("dropped_frames"),
        "published": final.get("published"),
        "plot": png.name,
        "samples": samples,
    }
    write_results("soak", rows, extra)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
