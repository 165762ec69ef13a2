"""MQTT over TLS with a password: connects, verifies the broker's name, never logs the secret."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import soundfile as sf

from tests.helpers import (
    Daemon,
    Mosquitto,
    Subscriber,
    make_certificates,
    make_client_certificate,
    speech_with_pauses,
    write_config,
)

pytestmark = pytest.mark.slow
SECRET = "s3cret-Pa55-" + uuid.uuid4().hex[:8]


def tls_setup(tmp_path: Path, server_name: str) -> tuple[Mosquitto, Path]:
    ca, cert, key = make_certificates(tmp_path / f"tls-{server_name}", server_name)
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "roomscribe", SECRET], check=True)
    server = Mosquitto(tmp_path / f"broker-{server_name}", tls=(ca, cert, key), password_file=passwords)
    server.start()
    (tmp_path / "mqtt-password").write_text(SECRET + "\n")
    return server, ca


def silent_room(tmp_path: Path) -> str:
    """A room that hears one second of nothing: the daemon runs, but publishes no utterance."""
    silence = tmp_path / "silence.wav"
    sf.write(silence, [0.0] * 16000, 16000)
    return f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{silence}", realtime = false }}\n'


def mqtt_extra(ca: Path, insecure: bool = False) -> str:
    return (
        f'tls = true\nca_file = "{ca}"\nusername = "roomscribe"\npassword_file = "mqtt-password"\n'
        f"tls_insecure = {str(insecure).lower()}\n"
    )


def test_tls_and_password(tmp_path: Path) -> None:
    server, ca = tls_setup(tmp_path, "127.0.0.1")
    audio, _ = speech_with_pauses(["Please turn on the kitchen lights."])
    sf.write(tmp_path / "room.wav", audio, 16000)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    source = f'{{ type = "file", path = "{tmp_path / "room.wav"}", realtime = false }}'
    room = f'[[rooms]]\nname = "kitchen"\nsource = {source}\n'
    config = write_config(tmp_path / "c.toml", server.port, prefix, room, extra=mqtt_extra(ca))
    sub = Subscriber(server.port, f"{prefix}/#", "viewer", ca=ca, login=("roomscribe", SECRET))
    daemon = Daemon(config)
    try:
        assert sub.connected.wait(10)
        sub.wait_for("/kitchen/utterance", 1, timeout_s=120)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
        server.stop()
    assert daemon.events("mqtt connected")
    assert not any(SECRET in line for line in daemon.raw)


def run_until(config: Path, event: str, count: int = 1) -> Daemon:
    """Start the daemon, wait for ``count`` ``event`` log lines, stop it cleanly; returns it
    for its logs."""
    daemon = Daemon(config)
    try:
        daemon.wait_log(event, count, timeout_s=60)
        assert daemon.proc.poll() is None  # a refused connection is retried, not a crash
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    return daemon


def test_a_broker_with_another_name_is_refused_unless_told_otherwise(tmp_path: Path) -> None:
    server, ca = tls_setup(tmp_path, "broker.example")  # we connect to 127.0.0.1: not its name
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    room = silent_room(tmp_path)
    config = write_config(tmp_path / "c.toml", server.port, prefix, room, extra=mqtt_extra(ca))
    try:
        daemon = run_until(config, "mqtt connect failed")
        failure = daemon.events("mqtt connect failed")[0]
        assert "certificate" in str(failure["error"]).lower() or "hostname" in str(failure["error"]).lower()
        assert not daemon.events("mqtt connected")
        write_config(tmp_path / "c.toml", server.port, prefix, room, extra=mqtt_extra(ca, insecure=True))
        daemon = run_until(config, "mqtt connected")
    finally:
        server.stop()
    assert not any(SECRET in line for line in daemon.raw)


def test_a_broker_that_requires_a_client_certificate(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path / "tls", "127.0.0.1")
    client_cert, client_key = make_client_certificate(tmp_path / "tls")
    server = Mosquitto(tmp_path / "broker", tls=(ca, cert, key), require_client_certificate=True)
    server.start()
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    room = silent_room(tmp_path)
    without = f'tls = true\nca_file = "{ca}"\n'
    config = write_config(tmp_path / "c.toml", server.port, prefix, room, extra=without)
    try:
        run_until(config, "mqtt connect failed")
        with_cert = without + f'cert_file = "{client_cert}"\nkey_file = "{client_key}"\n'
        write_config(tmp_path / "c.toml", server.port, prefix, room, extra=with_cert)
        run_until(config, "mqtt connected")
    finally:
        server.stop()


def test_the_documented_acl_gives_the_daemon_what_it_needs(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text()
    acl = doc.split("```\nuser roomscribe", 1)[1].split("```", 1)[0]
    (tmp_path / "acl").write_text("user roomscribe" + acl)
    passwords = tmp_path / "passwd"
    for user in ("roomscribe", "homeassistant"):
        flag = ["-c"] if user == "roomscribe" else []
        subprocess.run(["mosquitto_passwd", "-b", *flag, str(passwords), user, SECRET], check=True)
    server = Mosquitto(tmp_path / "broker", password_file=passwords, acl_file=tmp_path / "acl")
    server.start()
    (tmp_path / "mqtt-password").write_text(SECRET + "\n")
    audio, _ = speech_with_pauses(["Please turn on the kitchen lights."])
    sf.write(tmp_path / "room.wav", audio, 16000)
    source = f'{{ type = "file", path = "{tmp_path / "room.wav"}", realtime = false }}'
    room = f'[[rooms]]\nname = "kitchen"\nsource = {source}\n'
    extra = 'username = "roomscribe"\npassword_file = "mqtt-password"\n'
    # The ACL is written for the default prefix.
    config = write_config(tmp_path / "c.toml", server.port, "roomscribe", room, extra=extra)
    sub = Subscriber(server.port, "roomscribe/#", "ha", login=("homeassistant", SECRET))
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        sub.wait_for("/kitchen/utterance", 1, timeout_s=120)
        sub.wait_for("/kitchen/state", 1, timeout_s=10)
        sub.client.publish("roomscribe/set", b'{"command": "status", "transaction": "acl"}', qos=1)
        assert b'"transaction": "acl"' in sub.wait_for("/response", 1, timeout_s=30)[-1]
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
        server.stop()


def test_a_wrong_password_is_a_clear_error_retried_without_a_crash(tmp_path: Path) -> None:
    server, ca = tls_setup(tmp_path, "127.0.0.1")
    (tmp_path / "mqtt-password").write_text("not-the-password\n")
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    room = silent_room(tmp_path)
    config = write_config(tmp_path / "c.toml", server.port, prefix, room, extra=mqtt_extra(ca))
    try:
        daemon = run_until(config, "mqtt connect failed", 2)  # retried, with backoff
    finally:
        server.stop()
    failures = daemon.events("mqtt connect failed")
    assert all("not authori" in str(f["error"]).lower() for f in failures), failures
    assert not any("not-the-password" in line for line in daemon.raw)
