"""The daemon against bad input and faults (issue 17's sweep), each a real daemon process,
a real Mosquitto and real audio; tmpfs mounts where a disk must fill or refuse writes."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import soundfile as sf

from tests.helpers import REPO, Daemon, Mosquitto, SmallDisk, Subscriber, check_schema, speech_with_pauses, write_config

pytestmark = pytest.mark.slow

SENTENCES = ["Please turn on the kitchen lights.", "Open the garage door please."]


def looped_room(tmp_path: Path) -> str:
    audio, _ = speech_with_pauses(SENTENCES, pause_s=1.5)
    sf.write(tmp_path / "room.wav", audio, 16000)
    return f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{tmp_path / "room.wav"}", loop = true }}\n'


def with_daemon_keys(config: Path, keys: str) -> Path:
    config.write_text(config.read_text().replace("[daemon]\n", f"[daemon]\n{keys}"))
    return config


def answers(sub: Subscriber, count: int) -> dict[str, dict[str, object]]:
    out = {}
    for payload in sub.wait_for("/response", count, timeout_s=60):
        answer = json.loads(payload.decode("utf-8"))  # valid UTF-8, whatever came in
        check_schema("response", answer)
        out[str(answer["transaction"])] = answer
    return out


def test_bad_commands_and_a_damaged_outbox_never_stop_the_daemon(tmp_path: Path, broker: Mosquitto) -> None:
    """A lone surrogate echoed into a response killed the daemon (UnicodeEncodeError), and a
    damaged outbox kept it from starting; now: answers, a moved-aside file, utterances."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(random.Random(5).randbytes(50_000))
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "c.toml", broker.port, prefix, looped_room(tmp_path))
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        damaged = daemon.wait_log("outbox damaged: moved aside, readable rows kept", timeout_s=60)[0]
        assert Path(str(damaged["moved_to"])).is_file() and damaged["kept"] == 0
        sub.wait_for("/kitchen/utterance", 1, timeout_s=120)
        bad = [
            b'{"command": "status", "transaction": "\\ud800"}',
            b'{"command": "\\udfff", "transaction": "t2"}',
            b'{"command": "hotwords", "words": ["\\ud83d"], "transaction": "t3"}',
            b'{"command": "transcribe", "path": "\\udc80", "transaction": "t4"}',
            b"\xff\xfe\x00",
        ]
        for payload in bad:
            sub.client.publish(f"{prefix}/set", payload, qos=1)
        sub.client.publish(f"{prefix}/set", b'{"command": "status", "transaction": "after"}', qos=1)
        got = answers(sub, len(bad) + 1)
        # Each a clear answer; the surrogate echoed back replaced (U+FFFD), not a crash.
        assert got["\ufffd"]["status"] == "error" and "valid string" in str(got["\ufffd"]["error"])
        assert got["t2"]["status"] == "error" and "unknown command" in str(got["t2"]["error"])
        assert got["t3"]["status"] == "error" and "words.0" in str(got["t3"]["error"])
        assert got["t4"]["status"] == "error"
        assert got["None"]["status"] == "error" and "malformed JSON" in str(got["None"]["error"])
        assert got["after"]["status"] == "ok"
        before = len(sub.payloads("/kitchen/utterance"))
        sub.wait_for("/kitchen/utterance", before + 1, timeout_s=60)  # still listening
        assert daemon.proc.poll() is None
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()


def test_a_full_state_directory_publishes_from_memory_and_recovers(
    tmp_path: Path, broker: Mosquitto, small_disk: SmallDisk
) -> None:
    """The second utterance used to crash the daemon (database or disk is full)."""
    small_disk.fill()
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "c.toml", broker.port, prefix, looped_room(tmp_path))
    with_daemon_keys(config, f'state_dir = "{small_disk.folder}"\nstats_interval_s = 1\n')
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        sub.wait_for("/kitchen/utterance", 3, timeout_s=180)
        assert daemon.events("outbox degraded: utterances kept in memory until the disk takes writes")
        degraded = [json.loads(p) for p in sub.wait_for("/stats", 1, timeout_s=30)]
        for snapshot in degraded:
            check_schema("stats", snapshot)
        assert any(s["outbox_degraded"] and s["outbox_memory_only"] > 0 for s in degraded)
        small_disk.free()
        daemon.wait_log("outbox recovered: utterances on disk again", timeout_s=60)
        count = len(sub.payloads("/kitchen/utterance"))
        sub.wait_for("/kitchen/utterance", count + 1, timeout_s=60)
        assert daemon.proc.poll() is None
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
    assert not daemon.events("daemon failed")


def run_daemon(config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_a_metrics_port_in_use_is_a_start_up_error(tmp_path: Path, broker: Mosquitto) -> None:
    """It used to hang after ready: nothing published, SIGTERM ignored."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "c.toml", broker.port, "rs-port", looped_room(tmp_path))
        with_daemon_keys(config, f"metrics_port = {port}\n")
        result = run_daemon(config)
    assert result.returncode == 3, result.stderr
    assert f"daemon.metrics_port = {port}" in result.stderr and "Traceback" not in result.stderr


def test_a_read_only_state_directory_is_a_start_up_error_naming_it(tmp_path: Path, broker: Mosquitto) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        config = write_config(tmp_path / "c.toml", broker.port, "rs-ro", looped_room(tmp_path))
        with_daemon_keys(config, f'state_dir = "{folder / "state"}"\n')
        result = run_daemon(config)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    assert result.returncode == 3, result.stderr
    assert str(folder / "state") in result.stderr and "Traceback" not in result.stderr


def test_the_daemon_creates_its_files_owner_only_whatever_the_umask(tmp_path: Path, broker: Mosquitto) -> None:
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "c.toml", broker.port, prefix, looped_room(tmp_path))
    config.write_text(config.read_text() + "\n[debug]\nrecord = true\n")
    daemon = Daemon(config, umask=0)
    try:
        daemon.wait_log("utterance published", 1, timeout_s=120)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    made = [tmp_path / "state", *(tmp_path / "state").rglob("*")]
    assert len(made) > 3  # the outbox and at least one recording
    for path in made:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o077 == 0, (path, oct(mode))


@pytest.mark.parametrize("door", ["http", "wyoming"])
def test_a_door_port_in_use_is_a_start_up_error(tmp_path: Path, broker: Mosquitto, door: str) -> None:
    """Bound before the model loads: exit 3 naming the key, not a crash once it has loaded."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        extra = f"[{door}]\nenabled = true\nport = {port}\n"
        config = write_config(tmp_path / "c.toml", broker.port, "rs-door", looped_room(tmp_path), extra)
        result = run_daemon(config)
    assert result.returncode == 3, result.stderr
    assert f"{door}.port {port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr
