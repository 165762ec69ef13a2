"""The fault sweep (issue 17) against the daemon: bad input and faults, one table.

    python bench/faults.py            # as root: tmpfs mounts for a full and a read-only disk

One daemon (a real Mosquitto, a room looping espeak-ng speech in real time, batch jobs on)
takes the runtime cases in a row: commands with lone surrogates, malformed and oversized
commands, batch paths that try to leave batch.allowed_dir (a link, a playlist, "..", a null
byte, 4096 characters), a broker outage longer than mqtt.max_pending (3 here), a state
directory that fills and empties. Then the cases that need their own start: a busy
metrics_port, a read-only state dir, a damaged outbox, SIGKILL while the stitcher holds a
piece, check-config on files run would reject, and the offline tools (transcribe with
inputs that share a name, ITN over a million characters of numerals).

Per case: what happened and whether that is the documented outcome. At the end, every
finished utterance of the long-running daemon (stored, or kept in memory while the outbox
was degraded) against what a subscriber received, by id, and the recognized pieces against
the parts of what was received: the target is 0 lost. Writes bench/results/faults-<device>-<date>.json.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from tests.helpers import REPO, Daemon, Mosquitto, SmallDisk, Subscriber, journal_ids, speech_with_pauses, write_config

SENTENCES = ["Please turn on the kitchen lights.", "What is the weather like today?", "Open the garage door please."]
Row = dict[str, Any]


def row(case: str, outcome: str, ok: bool) -> Row:
    print(f"{'ok ' if ok else 'BAD'} {case}: {outcome}", flush=True)
    return {"case": case, "outcome": outcome, "ok": ok}


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "daemon", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def started_clean(result: subprocess.CompletedProcess[str], code: int, needle: str) -> tuple[str, bool]:
    last = (result.stderr.strip().splitlines() or [""])[-1][:160]
    ok = result.returncode == code and needle in result.stderr and "Traceback" not in result.stderr
    return f"exit {result.returncode}: {last}", ok


class Sweep:
    """The long-running daemon and what it was sent."""

    def __init__(self, work: Path, broker: Mosquitto, disk: SmallDisk | None) -> None:
        self.work, self.broker, self.disk = work, broker, disk
        audio, _ = speech_with_pauses(SENTENCES, pause_s=1.5)
        sf.write(work / "room.wav", audio, 16000)
        allowed = work / "allowed"
        (allowed / "talks").mkdir(parents=True)
        sf.write(allowed / "talks" / "a.wav", audio, 16000)
        (work / "secret").mkdir()
        sf.write(work / "secret" / "private.wav", audio, 16000)
        (allowed / "talks" / "link.wav").symlink_to(work / "secret" / "private.wav")
        playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:{work / 'secret' / 'private.wav'}\n"
        (allowed / "evil.m3u8").write_text(playlist + "#EXT-X-ENDLIST\n")
        self.prefix = f"faults-{os.getpid()}"
        room = f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{work / "room.wav"}", loop = true }}\n'
        extra = f'max_pending = 3\n[batch]\nallowed_dir = "{allowed}"\noutput_dir = "{work / "out"}"\n'
        self.config = write_config(work / "c.toml", broker.port, self.prefix, room, extra=extra)
        state = disk.folder if disk else work / "state"
        text = self.config.read_text().replace("[daemon]\n", f'[daemon]\nstate_dir = "{state}"\nstats_interval_s = 1\n')
        self.config.write_text(text)
        self.sub = Subscriber(broker.port, f"{self.prefix}/#", "faults-viewer", persistent=True)
        assert self.sub.connected.wait(10)
        self.daemon = Daemon(self.config)
        self.sent = 0

    def ask(self, payload: bytes) -> dict[str, Any]:
        """Send a command; its answer (the next response), or a timeout."""
        self.sent += 1
        self.sub.client.publish(f"{self.prefix}/set", payload, qos=1)
        answer = self.sub.wait_for("/response", self.sent, timeout_s=240)[-1]
        return dict(json.loads(answer.decode("utf-8")))

    def finished(self) -> int:
        return len(self.daemon.events("utterance stored")) + len(
            self.daemon.events("utterance kept in memory only: outbox degraded")
        )

    def wait_finished(self, more: int, timeout_s: float = 120) -> None:
        target = self.finished() + more
        deadline = time.monotonic() + timeout_s
        while self.finished() < target:
            if time.monotonic() > deadline or self.daemon.proc.poll() is not None:
                raise TimeoutError(f"{self.finished()} of {target} utterances")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None


COMMANDS = [
    ("lone surrogate in transaction", b'{"command": "status", "transaction": "\\ud800"}'),
    ("lone surrogate as command", b'{"command": "\\udfff"}'),
    ("lone surrogate hotword", b'{"command": "hotwords", "words": ["\\ud83d"]}'),
    ("not UTF-8", b"\xff\xfe\x00"),
    ("nested 10000 deep", b'{"a": ' * 10_000),
    ("over 64 KiB", b'{"command": "status", "pad": "' + b"x" * 70_000 + b'"}'),
    ("1001 hotwords", b'{"command": "hotwords", "words": [' + b",".join([b'"w"'] * 1001) + b"]}"),
]
BATCH_PATHS: list[tuple[str, str, Callable[[dict[str, Any]], bool]]] = [
    ("batch: .. out of the folder", "../secret/private.wav", lambda a: a["status"] == "error"),
    ("batch: null byte", "talks\u0000/a.wav", lambda a: a["status"] == "error" and "null byte" in a["error"]),
    ("batch: 4096-character path", "x" * 4096, lambda a: a["status"] == "error" and "too long" in a["error"]),
    ("batch: link out of the folder", "talks", lambda a: a["status"] == "ok" and len(a["result"]["failed"]) == 1),
    ("batch: HLS playlist reading outside", "evil.m3u8", lambda a: a["status"] == "ok" and a["result"]["failed"]),
]


def runtime_cases(s: Sweep) -> list[Row]:
    rows = []
    s.daemon.wait_log("utterance published", 1, timeout_s=180)
    for name, payload in COMMANDS:
        answer = s.ask(payload)
        rows.append(row(f"command: {name}", f"{answer['status']}: {str(answer['error'])[:90]}", s.alive()))
    for name, path, good in BATCH_PATHS:
        answer = s.ask(json.dumps({"command": "transcribe", "path": path}).encode())
        outcome = f"{answer['status']}: {str(answer.get('error') or answer.get('result', {}).get('failed'))[:90]}"
        rows.append(row(name, outcome, s.alive() and good(answer)))
    leaked = list((s.work / "out").rglob("private*")) + list((s.work / "out").rglob("link*"))
    rows.append(row("batch: nothing outside was transcribed", f"{len(leaked)} outputs of outside files", not leaked))
    s.broker.kill()
    s.wait_finished(6)  # twice mqtt.max_pending while the broker is away
    s.broker.start()
    waited = len(s.daemon.events("publish queue full: utterances wait in the outbox"))
    rows.append(row("broker away for 6 utterances, max_pending 3", f"{waited} spill(s) to disk", s.alive()))
    if s.disk is not None:
        s.disk.fill()
        s.wait_finished(3)
        degraded = bool(s.daemon.events("outbox degraded: utterances kept in memory until the disk takes writes"))
        s.disk.free()
        s.wait_finished(2)
        recovered = bool(s.daemon.events("outbox recovered: utterances on disk again"))
        rows.append(
            row(
                "state dir full, then space back",
                f"degraded={degraded} recovered={recovered}",
                degraded and recovered and s.alive(),
            )
        )
    code = s.daemon.terminate()
    rows.append(row("SIGTERM after the sweep", f"exit {code}", code == 0))
    return rows


def accounting(s: Sweep) -> Row:
    """Every finished utterance received (by id), and every recognized piece in one of them."""
    finished = {str(e["utterance_id"]) for e in s.daemon.events("utterance stored")}
    finished |= {str(e["utterance_id"]) for e in s.daemon.events("utterance kept in memory only: outbox degraded")}
    received = {}
    for payload in s.sub.payloads("/kitchen/utterance"):
        record = json.loads(payload)
        received[record["id"]] = record
    # The room's pieces (batch jobs' segments are recognized too, under their own names).
    recognized = [e for e in s.daemon.events("utterance recognized") if e.get("room") == "kitchen"]
    emptied = [
        e
        for e in s.daemon.events("nothing left after filler removal")
        if str(e.get("utterance", "")).startswith("kitchen")
    ]
    pieces = len(recognized) - len(emptied)
    parts = sum(int(r["parts"]) for r in received.values())
    lost = finished - set(received)
    result = row(
        "all utterances of the sweep",
        f"finished {len(finished)}, received {len(received)}, lost {len(lost)}; "
        f"pieces {pieces}, parts received {parts}",
        not lost and parts == pieces,
    )
    return {**result, "produced": len(finished), "received": len(received), "lost": len(lost)}


def startup_cases(work: Path, broker: Mosquitto) -> list[Row]:
    rows = []
    audio, _ = speech_with_pauses(SENTENCES[:1])
    sf.write(work / "one.wav", audio, 16000)
    room = f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{work / "one.wav"}", realtime = false }}\n'

    def config(name: str, daemon_keys: str = "") -> Path:
        path = write_config(work / f"{name}.toml", broker.port, f"faults-{name}", room)
        path.write_text(path.read_text().replace("[daemon]\n", f"[daemon]\n{daemon_keys}"))
        return path

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("run", "--config", str(config("port", f"metrics_port = {port}\n")))
    rows.append(row("metrics_port in use", *started_clean(result, 3, "daemon.metrics_port")))
    readonly = work / "ro"
    readonly.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(readonly)]).returncode == 0:
        try:
            result = cli("run", "--config", str(config("ro", f'state_dir = "{readonly / "state"}"\n')))
        finally:
            subprocess.run(["umount", "-l", str(readonly)], check=False)
        rows.append(row("read-only state dir", *started_clean(result, 3, str(readonly / "state"))))
    rows.append(damaged_outbox(work, config("damaged", f'state_dir = "{work / "damaged"}"\n')))
    return rows


def damaged_outbox(work: Path, config: Path) -> Row:
    (work / "damaged").mkdir()
    (work / "damaged" / "outbox.sqlite3").write_bytes(random.Random(3).randbytes(50_000))
    daemon = Daemon(config)
    try:
        moved = daemon.wait_log("outbox damaged: moved aside, readable rows kept", timeout_s=60)[0]
        daemon.wait_log("utterance published", 1, timeout_s=120)
        code = daemon.terminate()
    finally:
        daemon.kill()
    return row("damaged outbox at start", f"moved to {Path(str(moved['moved_to'])).name}, exit {code}", code == 0)


def crash_case(work: Path, broker: Mosquitto) -> Row:
    """SIGKILL while the stitcher holds a recognized piece, then a new start."""
    audio, _ = speech_with_pauses(SENTENCES[:1])
    sf.write(work / "crash.wav", audio, 16000)
    silence = work / "silence.wav"
    sf.write(silence, np.zeros(16000 * 3, np.float32), 16000)
    prefix = "faults-crash"
    hold = "[stitch]\ncomplete_wait_ms = 10000\nmax_gap_ms = 10000\nmax_hold_ms = 20000\n"

    def room(path: Path) -> str:
        return f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{path}", realtime = false }}\n'

    config = write_config(work / "crash.toml", broker.port, prefix, room(work / "crash.wav"), extra=hold)
    database = work / "state" / "outbox.sqlite3"
    daemon = Daemon(config)
    try:
        piece = str(daemon.wait_log("utterance recognized", 1, timeout_s=120)[0]["utterance_id"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not journal_ids(database):
            time.sleep(0.05)
        daemon.proc.kill()
        daemon.proc.wait()
    finally:
        daemon.kill()
    sub = Subscriber(broker.port, f"{prefix}/#", "faults-crash-viewer")
    assert sub.connected.wait(10)
    write_config(work / "crash.toml", broker.port, prefix, room(silence))
    daemon = Daemon(config)
    try:
        got = [json.loads(p)["id"] for p in sub.wait_for("/kitchen/utterance", 1, timeout_s=120)]
        code = daemon.terminate()
    finally:
        daemon.kill()
        sub.close()
    return row(
        "SIGKILL while the stitcher holds a piece", f"after restart published {got}, exit {code}", got == [piece]
    )


CHECK_CONFIG: list[tuple[str, bytes, str]] = [
    ("binary file", bytes(range(256)) * 8, "not UTF-8"),
    ("arrays nested 5000 deep", ("a = " + "[" * 5000 + "]" * 5000).encode(), "nested too deeply"),
    ("zero rooms", b"[daemon]\n", "no enabled room"),
    ("port as a string", b"[mqtt]\nport = '1883'\n", "mqtt.port"),
    ("reconnect_min_s = inf", b"[mqtt]\nreconnect_min_s = inf\n", "finite"),
    ("language klingon", b"[[rooms]]\nname='k'\nlanguage='klingon'\nsource={type='mic'}\n", "not a language"),
]


def offline_cases(work: Path) -> list[Row]:
    rows = []
    for name, content, needle in CHECK_CONFIG:
        path = work / "check.toml"
        path.write_bytes(content)
        rows.append(row(f"check-config: {name}", *started_clean(cli("check-config", "--config", str(path)), 2, needle)))
    inputs = work / "same-stem"
    inputs.mkdir()
    audio, _ = speech_with_pauses(SENTENCES[:1])
    sf.write(inputs / "talk.wav", audio, 16000)
    sf.write(inputs / "talk.flac", audio, 16000)
    result = cli("transcribe", str(inputs))
    outputs = sorted(p.name for p in inputs.glob("*.txt"))
    rows.append(row("transcribe: talk.wav + talk.flac", f"exit {result.returncode}, {outputs}", len(outputs) == 2))
    rows.append(itn_scaling())
    return rows


def itn_scaling() -> Row:
    from pipeline.text.zh_itn import zh_itn

    def per_char(n: int) -> float:
        text = ("一二三四五六七八九零" * (n // 10 + 1))[:n]
        start = time.perf_counter()
        zh_itn(text)
        return (time.perf_counter() - start) / n

    small, large = per_char(10_000), per_char(1_000_000)
    return row(
        "itn zh: 1M characters of numerals",
        f"{large * 1e6:.2f} us/char, {large / small:.1f}x the 10k rate",
        large / small < 3,
    )


def sweep(work: Path, broker: Mosquitto, step: Callable[[Sweep], list[Row]]) -> list[Row]:
    try:
        disk: SmallDisk | None = SmallDisk(work / "small", size="1m")
    except RuntimeError:
        disk = None  # not root: no full-disk case
    s = Sweep(work, broker, disk)
    try:
        rows = step(s)
        rows.append(accounting(s))
        return rows
    finally:
        s.daemon.kill()
        s.sub.close()
        if disk is not None:
            disk.unmount()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        try:
            rows = sweep(work, broker, runtime_cases)
            rows += startup_cases(work, broker)
            rows.append(crash_case(work, broker))
            rows += offline_cases(work)
        finally:
            broker.stop()
    bad = [r["case"] for r in rows if not r["ok"]]
    write_results("faults", rows, {"failed": bad})
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
