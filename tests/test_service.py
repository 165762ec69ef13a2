"""The daemon as a systemd service: the unit file (verify and the security score), the
install script, sd_notify over a real datagram socket, the watchdog, SIGHUP and stats."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import (
    REPO,
    Daemon,
    Mosquitto,
    NotifyListener,
    Subscriber,
    check_schema,
    speech_with_pauses,
    write_config,
)

SECURITY_TARGET = 2.0
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def staged_install(root: Path) -> Path:
    """scripts/install-service.sh into a staging root, pointing at this checkout's venv."""
    env = {**os.environ, "ROOT": str(root), "PREFIX": str(REPO), "VENV": "skip"}
    subprocess.run([REPO / "scripts" / "install-service.sh"], check=True, env=env, capture_output=True)
    return root / "etc" / "systemd" / "system" / "roomscribe.service"


def test_install_script_lays_out_config_credential_and_unit(tmp_path: Path) -> None:
    unit = staged_install(tmp_path)
    etc = tmp_path / "etc" / "roomscribe"
    assert (etc / "config.toml").read_text() == (REPO / "config.toml").read_text()
    assert (etc / "samples" / "demo.flac").exists()  # the shipped config's room plays it
    for secret in ("mqtt-password", "http-token"):
        assert (etc / secret).stat().st_mode & 0o777 == 0o600
    text = unit.read_text()
    assert f"ExecStart={REPO}/.venv/bin/roomscribe run" in text and "/opt/roomscribe" not in text
    # A second run upgrades the unit and keeps what the administrator edited.
    (etc / "config.toml").write_text("# edited\n")
    staged_install(tmp_path)
    assert (etc / "config.toml").read_text() == "# edited\n"


def test_unit_file_declares_what_the_service_needs() -> None:
    unit = (REPO / "systemd" / "roomscribe.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/opt/roomscribe/.venv/bin/roomscribe check-config",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "StateDirectory=roomscribe",
        "CacheDirectory=roomscribe",
        "ConfigurationDirectory=roomscribe",
        "LoadCredential=mqtt-password:",
        "LoadCredential=http-token:",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "DeviceAllow=char-alsa rw",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "ExecReload=",
    ):
        assert line in unit, line
    # TimeoutStopSec leaves room above the drain time of the shipped config.
    stop = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))  # type: ignore[union-attr]
    drain = float(re.search(r"drain_timeout_s = ([\d.]+)", (REPO / "config.toml").read_text()).group(1))  # type: ignore[union-attr]
    assert stop >= drain + 5


@needs_systemd_analyze
def test_unit_verifies_and_scores_at_most_2(tmp_path: Path) -> None:
    unit = staged_install(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    for path in (unit, REPO / "systemd" / "roomscribe.service"):
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(path)], capture_output=True, text=True
        ).stdout
        score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        assert score <= SECURITY_TARGET, out


def room_file(tmp_path: Path, texts: list[str], pause_s: float = 1.5) -> Path:
    audio, _ = speech_with_pauses(texts, pause_s=pause_s)
    path = tmp_path / "room.wav"
    sf.write(path, audio, 16000)
    return path


@pytest.mark.slow
def test_sd_notify_ready_after_online_watchdog_while_busy_stopping_on_sigterm(
    tmp_path: Path, broker: Mosquitto
) -> None:
    audio = room_file(tmp_path, ["Please turn on the kitchen lights.", "Open the garage door please."])
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = (
        f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{audio}", realtime = true, loop = true }}\n'
    )
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms, extra="")
    sub = Subscriber(broker.port, f"{prefix}/status", "viewer")
    assert sub.connected.wait(10)
    listener = NotifyListener(f"@roomscribe-test-{uuid.uuid4().hex}")  # an abstract socket, as systemd uses
    # WatchdogSec=1: pings every 0.5 s.
    daemon = Daemon(config, env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"})
    try:
        ((ready_at, ready),) = listener.wait_for("READY", timeout_s=120)
        (online,) = [
            t for t, (topic, payload, _) in zip(sub.arrivals, sub.messages, strict=True) if payload == b"online"
        ]
        assert online <= ready_at  # READY only after the broker was tried (here: connected)
        assert re.match(r"1 room, \d+ utterances, queue \d+, MQTT connected", ready["STATUS"])
        daemon.wait_log("utterance published", 2, timeout_s=90)  # busy: recognizing
        pings = listener.wait_for("WATCHDOG", 4, timeout_s=30)
        assert all(m["WATCHDOG"] == "1" for _, m in pings)
        assert min(t for t, _ in pings) >= ready_at
        assert daemon.terminate() == 0
        listener.wait_for("STOPPING", timeout_s=10)
    finally:
        daemon.kill()
        listener.close()
        sub.close()


@pytest.mark.slow
def test_a_hung_stage_stops_the_watchdog_pings(tmp_path: Path, broker: Mosquitto) -> None:
    """The text stage blocks for good reading the dictionary (it became a FIFO nobody writes,
    like a dead network share): the pings stop, so systemd would restart the service."""
    audio = room_file(tmp_path, ["Please turn on the kitchen lights."] * 3, pause_s=2.0)
    dictionary = tmp_path / "dictionary.txt"
    dictionary.write_text("kitchen lights => Kitchen Lights\n")
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{audio}", realtime = true }}\n'
    extra = f'[text]\ndictionary = "{dictionary}"\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms, extra=extra)
    listener = NotifyListener(str(Path("/tmp") / f"rs-{uuid.uuid4().hex[:12]}.sock"))  # a path socket
    daemon = Daemon(config, env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"})
    try:
        daemon.wait_log("utterance published", 1, timeout_s=120)
        listener.wait_for("WATCHDOG", 3, timeout_s=10)
        dictionary.unlink()
        os.mkfifo(dictionary)
        hung_after = len(daemon.events("utterance recognized")) + 1
        daemon.wait_log("utterance recognized", hung_after, timeout_s=60)
        last_ping = listener.with_key("WATCHDOG")[-1][0]
        # Nothing for 10 ping intervals: a watchdog of WatchdogSec=0.4 s would have fired long ago.
        with pytest.raises(TimeoutError):
            listener.wait_for("WATCHDOG", len(listener.with_key("WATCHDOG")) + 1, timeout_s=2.0)
        assert time.time() - last_ping >= 2.0
    finally:
        daemon.kill()
        listener.close()
        Path(listener.address).unlink(missing_ok=True)


@pytest.mark.slow
def test_a_stalled_model_call_is_reported_and_pings_pause(tmp_path: Path, broker: Mosquitto) -> None:
    """stall_timeout_s far below one recognition: every model call counts as stalled while
    it runs. The daemon says so in its log and STATUS=, skips pings, and resumes them."""
    audio = room_file(tmp_path, ["Please turn on the kitchen lights and open the garage door."] * 2)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{audio}", realtime = false }}\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms, extra="")
    text = config.read_text().replace("[daemon]\n", "[daemon]\nstall_timeout_s = 0.01\n")
    config.write_text(text)
    listener = NotifyListener(f"@roomscribe-test-{uuid.uuid4().hex}")
    daemon = Daemon(config, env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "100000"})
    try:
        daemon.wait_log("utterance published", 2, timeout_s=120)
        stalled = daemon.events("pipeline stalled: watchdog pings stopped")
        assert any("recognize" in e["stalled"] for e in stalled)  # type: ignore[operator]
        daemon.wait_log("pipeline moving again: watchdog pings resumed", 1, timeout_s=60)
        assert any("STALLED:" in m["STATUS"] and "recognize" in m["STATUS"] for _, m in listener.with_key("STATUS"))
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        listener.close()


@pytest.mark.slow
def test_sighup_applies_new_hotwords_and_reports_what_needs_a_restart(tmp_path: Path, broker: Mosquitto) -> None:
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000 * 2, np.float32), 16000)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = (
        f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{silence}", realtime = true, loop = true }}\n'
    )
    config = write_config(
        tmp_path / "c.toml", broker.port, prefix, rooms, extra='[recognizer]\nhotwords = ["Kubernetes"]\n'
    )
    listener = NotifyListener(f"@roomscribe-test-{uuid.uuid4().hex}")
    sub = Subscriber(broker.port, f"{prefix}/response", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config, env={"NOTIFY_SOCKET": listener.address})
    try:
        listener.wait_for("READY", timeout_s=120)
        text = config.read_text().replace('hotwords = ["Kubernetes"]', 'hotwords = ["Grafana", "Prometheus"]')
        config.write_text(text.replace("[mqtt]\n", "[vad]\nthreshold = 0.6\n[mqtt]\n"))
        daemon.proc.send_signal(signal.SIGHUP)
        (reloaded,) = daemon.wait_log("config reloaded", timeout_s=30)
        assert reloaded["hotwords"] == ["Grafana", "Prometheus"]
        (pending,) = daemon.events("config changes need a restart")
        assert pending["keys"] == ["vad.threshold"]
        listener.wait_for("READY", 2, timeout_s=10)
        (reloading,) = listener.with_key("RELOADING")
        assert reloading[1]["MONOTONIC_USEC"].isdigit()
        # Applied: the status command reports the new list.
        publisher = Subscriber(broker.port, f"{prefix}/none", "commander")
        assert publisher.connected.wait(10)
        publisher.client.publish(f"{prefix}/set", b'{"command": "status", "transaction": "t1"}', qos=1)
        (answer,) = sub.wait_for("/response", 1, timeout_s=30)
        assert json.loads(answer)["result"]["hotwords"]["global"] == ["Grafana", "Prometheus"]
        publisher.close()
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        listener.close()
        sub.close()


@pytest.mark.slow
def test_stats_on_mqtt_and_prometheus_on_loopback(tmp_path: Path, broker: Mosquitto) -> None:
    import urllib.request

    from tests.helpers import free_port

    audio = room_file(tmp_path, ["Please turn on the kitchen lights."])
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    port = free_port()
    rooms = f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{audio}", realtime = false }}\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms)
    config.write_text(
        config.read_text().replace("[daemon]\n", f"[daemon]\nstats_interval_s = 1\nmetrics_port = {port}\n")
    )
    sub = Subscriber(broker.port, f"{prefix}/stats", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        daemon.wait_log("utterance published", timeout_s=120)
        stats = [json.loads(p) for p in sub.wait_for("/stats", 2, timeout_s=30)]
        for snapshot in stats:
            check_schema("stats", snapshot)
        deadline = time.monotonic() + 30
        while (latest := json.loads(sub.wait_for("/stats", len(stats) + 1, timeout_s=30)[-1]))["utterances"] < 1:
            stats.append(latest)
            assert time.monotonic() < deadline
        assert latest["audio_seconds"] > 1 and latest["recognize_ms"]["p50"] > 0
        assert latest["rss_bytes"] > 50_000_000 and latest["threads"] >= 3 and latest["open_fds"] > 3
        assert latest["rooms"]["kitchen"]["utterances"] == 1
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert re.search(r"^roomscribe_utterances_total 1\.0$", body, re.M), body
        assert re.search(r'^roomscribe_queue_depth\{queue="utterances"\} 0\.0$', body, re.M)
        assert "roomscribe_resident_memory_bytes" in body
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()


def test_a_status_snapshot_while_another_thread_imports_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # A satellite (remote recognizer) imports torch on the VAD's thread at its first use; the
    # first status snapshot could find the module in sys.modules, half initialized.
    import importlib.machinery
    import sys
    import types

    from daemon.stats import gpu_memory

    half = types.ModuleType("torch")
    half.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    half.__spec__._initializing = True  # type: ignore[attr-defined]  # what importlib sets meanwhile
    monkeypatch.setitem(sys.modules, "torch", half)
    assert gpu_memory() is None
    half.__spec__._initializing = False  # type: ignore[attr-defined]
    assert gpu_memory() is None  # done, but without torch.cuda: no GPU figures, no crash
