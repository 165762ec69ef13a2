"""Mixed rooms for a long stretch: dropped frames, and how fast a lost device comes back.

    python bench/rooms.py [--minutes 60] [--loss-every 10] [--loss-s 20]

Three live rooms on one recognizer, in real time, as long as asked: a microphone room on a
PulseAudio server of its own (PortAudio's ``pulse`` device recording a null sink's monitor,
speech played into the sink with paplay, 48 kHz stereo), a network stream room (ffmpeg
serving speech over HTTP, 44.1 kHz), and a file room paced like a microphone (16 kHz). All
three speak with pauses the whole time. Every --loss-every minutes the microphone's sink is
unloaded for --loss-s seconds and loaded again: the time from its return to the room
listening again is the recovery time. Reads the daemon's per-room counters from the stats
topic at the end. Targets: 0 dropped frames; recovery within the reconnect backoff (1 s
here) plus opening the device.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.batch import SENTENCES
from bench.common import write_results
from tests.helpers import (
    Daemon,
    HttpAudioServer,
    Mosquitto,
    PulseServer,
    Subscriber,
    free_port,
    speak,
    write_config,
)


def speech_file(path: Path, minutes: float, rate: int, channels: int, seed: int) -> Path:
    """Sentences with 2-8 s pauses, at the rate and channel count of the device it imitates."""
    rng = random.Random(seed)
    clips = [speak(s) for s in SENTENCES]
    parts: list[np.ndarray] = []
    length = 0
    while length < minutes * 60 * 16000:
        clip = clips[rng.randrange(len(clips))]
        gap = np.zeros(int(rng.uniform(2.0, 8.0) * 16000), np.float32)
        parts += [clip, gap]
        length += len(clip) + len(gap)
    audio = np.concatenate(parts)
    if rate != 16000:
        audio = soxr.resample(audio, 16000, rate).astype(np.float32)
    sf.write(path, np.repeat(audio[:, None], channels, axis=1) if channels > 1 else audio, rate)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--loss-every", type=float, default=10.0, help="minutes between microphone losses")
    parser.add_argument("--loss-s", type=float, default=20.0, help="how long the microphone stays away")
    args = parser.parse_args()
    if not PulseServer.available():
        sys.exit("bench/rooms.py needs pulseaudio and pulseaudio-utils (make setup installs them)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        mic_audio = speech_file(tmp / "mic.wav", 10, 48000, 2, seed=1)  # looped by the player
        stream_audio = speech_file(tmp / "stream.wav", 10, 44100, 1, seed=2)  # looped by ffmpeg
        file_audio = speech_file(tmp / "file.wav", 10, 16000, 1, seed=3)  # looped by the room
        broker = Mosquitto(tmp / "broker")
        broker.start()
        pulse = PulseServer(tmp / "pulse")
        pulse.start()
        server = HttpAudioServer(stream_audio, free_port())
        server.start()
        prefix = f"rooms-{uuid.uuid4().hex[:6]}"
        rooms = f"""
[[rooms]]
name = "lounge"
source = {{ type = "mic", device = "pulse", retry_max_s = 1.0 }}
[[rooms]]
name = "porch"
source = {{ type = "stream", url = "{server.url}", retry_max_s = 1.0 }}
[[rooms]]
name = "kitchen"
source = {{ type = "file", path = "{file_audio}", realtime = true, loop = true }}
"""
        config = write_config(tmp / "c.toml", broker.port, prefix, rooms)
        config.write_text(config.read_text().replace("[daemon]\n", "[daemon]\nstats_interval_s = 5\n"))
        sub = Subscriber(broker.port, f"{prefix}/#", "rooms-viewer")
        daemon = Daemon(config, env={**pulse.env, "PULSE_SOURCE": f"{pulse.sink}.monitor"})
        playing = threading.Event()
        playing.set()
        finished = threading.Event()

        def player() -> None:  # the microphone room's speaker, whenever its sink exists
            while not finished.is_set():
                if playing.is_set():
                    try:
                        pulse.play(mic_audio)
                    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):  # the sink went away mid-play
                        time.sleep(0.5)
                else:
                    time.sleep(0.2)

        def states() -> list[dict[str, Any]]:
            return [json.loads(p) for p in sub.payloads("/lounge/state")]

        recoveries: list[float] = []
        try:
            daemon.wait_log("ready", timeout_s=300)
            thread = threading.Thread(target=player, daemon=True)
            thread.start()
            started = time.monotonic()
            next_loss = started + args.loss_every * 60
            while (now := time.monotonic()) - started < args.minutes * 60:
                if now >= next_loss:
                    playing.clear()
                    pulse.unload_sink()
                    time.sleep(args.loss_s)
                    seen = len(states())
                    back = time.monotonic()
                    pulse.load_sink()
                    playing.set()
                    while not any(s.get("state") == "listening" for s in states()[seen:]):
                        if time.monotonic() - back > 120:
                            raise RuntimeError("the microphone room did not come back")
                        time.sleep(0.05)
                    recoveries.append(time.monotonic() - back)
                    print(f"{(now - started) / 60:5.1f} min  microphone back after {recoveries[-1]:.2f} s", flush=True)
                    next_loss = time.monotonic() + args.loss_every * 60
                time.sleep(1)
            wall = time.monotonic() - started
            stats = [json.loads(p) for t, p, _ in sub.messages if t.endswith("/stats")]
            final = stats[-1]
            finished.set()
            assert daemon.terminate() == 0
        finally:
            finished.set()
            daemon.kill()
            sub.close()
            server.stop()
            pulse.stop()
            broker.stop()
    rows = []
    for name, room in final["rooms"].items():
        rows.append({"room": name, "minutes": round(wall / 60, 1), "utterances": room["utterances"],
                     "dropped_frames": room["dropped_frames"], "source_losses": room["source_losses"],
                     "overflows": room["overflows"]})  # fmt: skip
    extra = {
        "recovery_s": [round(r, 2) for r in recoveries],
        "recovery_median_s": round(statistics.median(recoveries), 2) if recoveries else None,
        "recovery_max_s": round(max(recoveries), 2) if recoveries else None,
        "loss_every_min": args.loss_every,
        "loss_s": args.loss_s,
        "rss_bytes": final["rss_bytes"],
        "targets": {"dropped_frames": 0},
    }
    write_results("rooms", rows, extra)


if __name__ == "__main__":
    main()
