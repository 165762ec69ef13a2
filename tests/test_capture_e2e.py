"""Audio in, end to end: a real PulseAudio server and PortAudio device, a real HTTP stream
from ffmpeg, several rooms at once; the daemon as a subprocess, a real Mosquitto broker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import (
    REPO,
    Daemon,
    HttpAudioServer,
    Mosquitto,
    PulseServer,
    Subscriber,
    check_schema,
    free_port,
    normalize,
    speak,
    speech_with_pauses,
    wer,
    write_config,
)

pytestmark = pytest.mark.slow

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[PulseServer]:
    if not PulseServer.available():
        pytest.skip("PulseAudio (pulseaudio, pulseaudio-utils) is not installed; make setup installs it")
    server = PulseServer(tmp_path / "pulse-runtime")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sentence_wav(path: Path, text: str, rate: int = 48000, channels: int = 2) -> Path:
    """espeak speech with silence after it, at a rate and channel count that are not ours."""
    import soxr

    audio = speak(text)
    audio = np.concatenate([np.zeros(8000, np.float32), audio, np.zeros(24000, np.float32)])
    audio = soxr.resample(audio, 16000, rate).astype(np.float32)
    sf.write(path, np.repeat(audio[:, None], channels, axis=1), rate)
    return path


def states(sub: Subscriber, room: str) -> list[dict[str, object]]:
    return [json.loads(p) for p in sub.payloads(f"/{room}/state")]


def wait_state(sub: Subscriber, room: str, state: str, after: int = 0, timeout_s: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for payload in states(sub, room)[after:]:
            if payload.get("state") == state:
                return payload
        time.sleep(0.05)
    raise TimeoutError(f"{room} never {state}: {states(sub, room)}")


def texts(sub: Subscriber, room: str) -> list[str]:
    return [str(json.loads(p)["text"]) for p in sub.payloads(f"/{room}/utterance")]


def test_devices_lists_the_pulse_device_with_its_rates(pulse: PulseServer) -> None:
    import os

    done = subprocess.run(
        [sys.executable, "-m", "daemon", "devices"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **pulse.env}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    line = next(line for line in done.stdout.splitlines() if " pulse " in f" {line} ")
    assert "48000" in line and "16000" in line
    # PortAudio's ALSA and JACK probing noise stays out of the output.
    assert "ALSA lib" not in done.stdout + done.stderr and "jack" not in (done.stdout + done.stderr).lower()


def test_microphone_room_hears_pulseaudio_survives_losing_the_device_and_recovers(
    tmp_path: Path, broker: Mosquitto, pulse: PulseServer
) -> None:
    first = sentence_wav(tmp_path / "first.wav", "Please turn on the kitchen lights.")
    second = sentence_wav(tmp_path / "second.wav", "Open the garage door please.")
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    room = '[[rooms]]\nname = "lounge"\nsource = { type = "mic", device = "pulse", retry_max_s = 1.0 }\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, room)
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config, env={**pulse.env, "PULSE_SOURCE": "room.monitor"})
    try:
        wait_state(sub, "lounge", "listening", timeout_s=90)
        pulse.play(first)
        got = sub.wait_for("/lounge/utterance", 1, timeout_s=60)
        assert wer(["Please turn on the kitchen lights."], [json.loads(got[0])["text"]]) <= 0.2

        seen = len(states(sub, "lounge"))
        pulse.unload_sink()  # the capture device goes away
        gone = wait_state(sub, "lounge", "unavailable", after=seen)
        check_schema("state", gone)
        assert gone["listening"] is False and gone["error"]
        assert daemon.proc.poll() is None

        seen = len(states(sub, "lounge"))
        back_at = time.monotonic()
        pulse.load_sink()  # and comes back
        wait_state(sub, "lounge", "listening", after=seen)
        recovered_s = time.monotonic() - back_at
        assert recovered_s < 10  # backoff capped at 1 s, plus opening the device
        pulse.play(second)
        got = sub.wait_for("/lounge/utterance", 2, timeout_s=60)
        assert wer(["Open the garage door please."], [json.loads(got[1])["text"]]) <= 0.2
        assert daemon.events("capture available")[-1]["after_s"] is not None
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
    noise = [line for line in daemon.raw if "ALSA lib" in line or "jack" in line.lower()]
    assert not noise, noise[:3]


@needs_ffmpeg
def test_stream_room_transcribes_and_resumes_after_the_stream_drops(tmp_path: Path, broker: Mosquitto) -> None:
    wav = sentence_wav(tmp_path / "loop.wav", "Set a timer for ten minutes.", rate=44100, channels=1)
    server = HttpAudioServer(wav, free_port())
    server.start()
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    source = f'{{ type = "stream", url = "{server.url}", stall_s = 3, retry_max_s = 1.0 }}'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, f'[[rooms]]\nname = "porch"\nsource = {source}\n')
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        sub.wait_for("/porch/utterance", 1, timeout_s=90)
        assert "timer" in normalize(texts(sub, "porch")[0])
        seen = len(states(sub, "porch"))
        server.stop()  # the camera's stream drops
        gone = wait_state(sub, "porch", "unavailable", after=seen)
        assert "porch" not in str(gone["error"]) and "stream http://127.0.0.1" in str(gone["error"])
        heard = len(sub.payloads("/porch/utterance"))
        seen = len(states(sub, "porch"))
        server.start()
        wait_state(sub, "porch", "listening", after=seen)
        sub.wait_for("/porch/utterance", heard + 1, timeout_s=60)
        assert "timer" in normalize(texts(sub, "porch")[-1])
        lost = daemon.events("capture unavailable")
        assert lost and all(entry["room"] == "porch" for entry in lost)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        server.stop()
        sub.close()


@needs_ffmpeg
def test_three_rooms_with_their_own_settings_one_broken(tmp_path: Path, broker: Mosquitto) -> None:
    kitchen_texts = ["Please turn on the kitchen lights.", "What is the weather like today?"]
    audio, _ = speech_with_pauses(kitchen_texts)
    sf.write(tmp_path / "kitchen.wav", audio, 16000)
    server = HttpAudioServer(sentence_wav(tmp_path / "office.wav", "Close the curtains in the bedroom."), free_port())
    server.start()
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = f"""
[[rooms]]
name = "kitchen"
language = "en"
vad = {{ threshold = 0.6, hangover_ms = 600, post_roll_ms = 150 }}
source = {{ type = "file", path = "{tmp_path / "kitchen.wav"}", realtime = true }}

[[rooms]]
name = "office"
hotwords = ["curtains"]
vad = {{ hangover_ms = 900 }}
source = {{ type = "stream", url = "{server.url}", retry_max_s = 1.0 }}

[[rooms]]
name = "garage"
source = {{ type = "stream", url = "http://127.0.0.1:{free_port()}/camera", retry_max_s = 0.5 }}

[[rooms]]
name = "attic"
enabled = false
source = {{ type = "mic", device = "no such microphone" }}
"""
    extra = f'[debug]\nrecord = true\nrecord_max = 2\nrecord_dir = "{tmp_path / "recordings"}"\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms, extra)
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        sub.wait_for("/kitchen/utterance", len(kitchen_texts), timeout_s=90)
        assert wer(kitchen_texts, texts(sub, "kitchen")[:2]) <= 0.15
        sub.wait_for("/office/utterance", 2, timeout_s=60)
        assert all("curtains" in normalize(t) for t in texts(sub, "office")[:2])
        # The broken room keeps trying without disturbing the others.
        broken = wait_state(sub, "garage", "unavailable")
        assert "refused" in str(broken["error"]).lower() or "error" in str(broken["error"]).lower()
        # Retried every 0.5 s, logged once: the same failure again is not news.
        lost = daemon.wait_log("capture unavailable")
        assert [entry["room"] for entry in lost] == ["garage"]
        assert not sub.payloads("/attic/state")  # disabled: never started
        assert daemon.proc.poll() is None
        published = len(daemon.events("utterance published"))
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        server.stop()
        sub.close()
    # Debug recording: the newest two utterances, each WAV beside its JSON.
    records = sorted((tmp_path / "recordings").glob("*.json"))
    assert published > 2 and len(records) == 2
    for meta in records:
        record = json.loads(meta.read_text())
        info = sf.info(meta.with_suffix(".wav"))
        assert info.samplerate == 16000 and info.channels == 1
        assert info.duration == pytest.approx(record["duration_s"], abs=0.35)
        assert record["audio_file"] == meta.with_suffix(".wav").name and record["text"]
