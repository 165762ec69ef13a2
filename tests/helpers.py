"""Test helpers: espeak-ng speech, a real Mosquitto broker, text normalization for WER."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
# The shared evaluation data lives beside the checkout; tests that use it skip without it.
SHARED = Path(os.environ.get("ROOMSCRIBE_SHARED_DIR", REPO.parent / "shared"))
SPEECH_DIR = SHARED / "data" / "speech"

SENTENCES = [
    "Please turn on the kitchen lights.",
    "What is the weather like today?",
    "Remind me to call the dentist tomorrow.",
    "Set a timer for ten minutes.",
    "The meeting starts at nine in the morning.",
    "Open the garage door please.",
    "Play some music in the living room.",
    "I would like a cup of coffee.",
    "Close the curtains in the bedroom.",
    "How long does it take to get to the airport?",
]


def _espeak(options: list[str], text: str, rate: int) -> np.ndarray:
    """espeak-ng with ``options`` reading ``text``, as float32 mono at ``rate``."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", *options, "-w", tmp.name, text], check=True)
        audio, sr = sf.read(tmp.name, dtype="float32")
    out = soxr.resample(audio, sr, rate) if sr != rate else audio
    return np.asarray(out, dtype=np.float32)


def speak(text: str, rate: int = 16000, ssml: bool = False) -> np.ndarray:
    """espeak-ng speech as float32 mono at ``rate``; ``ssml`` reads <speak> markup, e.g. a
    <break time="1200ms"/> inside one sentence, which keeps the sentence's intonation."""
    return _espeak([*(["-m"] if ssml else []), "-s", "150"], text, rate)


def speak_mandarin(text: str, rate: int = 16000) -> np.ndarray:
    """espeak-ng Mandarin: Debian's espeak-ng reads Chinese characters without its extended
    dictionary (it spells them), so the text goes in as pinyin with tone numbers. Whisper base
    recognizes little of this voice; short phrases such as 下午三点半 come through."""
    from pypinyin import Style, lazy_pinyin

    pinyin = " ".join(lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True))
    return _espeak(["-v", "cmn-latn-pinyin", "-s", "130"], pinyin, rate)


@dataclass(frozen=True)
class Spoken:
    text: str
    start_s: float
    end_s: float


def speech_with_pauses(
    texts: list[str], pause_s: float = 1.5, rate: int = 16000, pauses: list[float] | None = None
) -> tuple[np.ndarray, list[Spoken]]:
    """Sentences separated by silence (``pauses[i]`` after text i, else ``pause_s``); returns
    audio and where each sentence is."""
    parts = [np.zeros(int(pause_s * rate), dtype=np.float32)]
    spoken = []
    pos = len(parts[0])
    for i, text in enumerate(texts):
        audio = speak(text, rate)
        after = int((pauses[i] if pauses is not None else pause_s) * rate)
        spoken.append(Spoken(text, pos / rate, (pos + len(audio)) / rate))
        parts += [audio, np.zeros(after, dtype=np.float32)]
        pos += len(audio) + after
    return np.concatenate(parts), spoken


_SMALL = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _number_words(n: int) -> str:
    if n < 20:
        return _SMALL[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _SMALL[n % 10])
    if n < 1000:
        rest = n % 100
        return _SMALL[n // 100] + " hundred" + ("" if rest == 0 else " " + _number_words(rest))
    if n < 10000:
        rest = n % 1000
        return _number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + _number_words(rest))
    return str(n)


def normalize(text: str) -> str:
    """Lower case, numbers as words, no punctuation: the scoring form for WER."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"\d+", lambda m: f" {_number_words(int(m.group()))} ", text)
    text = re.sub(r"[^a-z' ]+", " ", text).replace("'", "")
    return " ".join(text.split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return float(jiwer.wer([normalize(r) for r in references], [normalize(h) or "<empty>" for h in hypotheses]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


T = TypeVar("T")


def wait_until(
    cond: threading.Condition, find: Callable[[], list[T]], count: int, timeout_s: float, what: str
) -> list[T]:
    """Wait on ``cond`` until ``find()`` returns at least ``count`` items; TimeoutError says
    how many came of what."""
    deadline = time.monotonic() + timeout_s
    with cond:
        while True:
            found = find()
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(found)} of {count} {what} after {timeout_s} s")
            cond.wait(remaining)


class Mosquitto:
    """A real Mosquitto broker on a loopback port, with persistence so a restart keeps
    subscribers' sessions and their queued QoS 1 messages."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        tls: tuple[Path, Path, Path] | None = None,  # CA, certificate, key
        password_file: Path | None = None,
        require_client_certificate: bool = False,
        acl_file: Path | None = None,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (make test installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\n" if tls else "")
            + ("require_certificate true\n" if require_client_certificate else "")
            + (f"acl_file {acl_file}\n" if acl_file else "")
            + (f"allow_anonymous false\npassword_file {password_file}\n" if password_file else "allow_anonymous true\n")
            +
            # Run as whoever runs the tests (as root, mosquitto would switch to its own user
            # and lose access to this folder).
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            # Saved every second, so a broker killed with SIGKILL comes back with its persistent
            # sessions (by default it saves every 30 minutes and at a clean exit). Saving on
            # every change instead (autosave_on_changes) lost queued messages across a clean
            # restart in about half the runs of test_broker_started_after_the_daemon_loses_nothing.
            "autosave_interval 1\n"
            "log_type error\n"
            "log_type warning\n"
            f"log_dest file {workdir}/mosquitto.log\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)])
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, no final save."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class Subscriber:
    """A paho-mqtt subscriber in its own thread that records every message it receives.

    ``persistent`` keeps its session (and queued QoS 1 messages) across disconnects and
    broker restarts."""

    def __init__(
        self,
        port: int,
        topic: str,
        client_id: str,
        persistent: bool = False,
        ca: Path | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrivals: list[float] = []  # time.time() of each message, same order
        self._cond = threading.Condition()
        self.topic = topic
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        # paho types these as int, but takes (and sleeps) fractions of a second.
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if login is not None:
            self.client.username_pw_set(*login)
        self.connected = threading.Event()
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, _userdata, _flags, _reason, _props) -> None:  # type: ignore[no-untyped-def]
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_message(self, _client, _userdata, msg) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.arrivals.append(time.time())
            self._cond.notify_all()

    def payloads(self, suffix: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, suffix: str, count: int, timeout_s: float) -> list[bytes]:
        """Wait until ``count`` messages on topics ending with ``suffix`` have arrived."""
        return wait_until(
            self._cond,
            lambda: [p for t, p, _ in self.messages if t.endswith(suffix)],
            count,
            timeout_s,
            f"messages on *{suffix}",
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


Received = tuple[str, dict[str, object], bytes | None]  # topic, JSON payload, correlation data


class Mqtt5Client:
    """A paho MQTT 5 client that sends requests with a response topic and correlation data
    (as the daemon's commands and jobs are asked) and records what comes on ``topics``."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topics = topics
        self.messages: list[Received] = []
        self.arrivals: list[float] = []  # time.perf_counter() of each message, same order
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _client, _userdata, msg) -> None:  # type: ignore[no-untyped-def]
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self.cond:
            self.messages.append((msg.topic, json.loads(msg.payload), correlation))
            self.arrivals.append(time.perf_counter())
            self.cond.notify_all()

    def request(self, topic: str, payload: bytes, reply_to: str, correlation: bytes | None) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = reply_to
        if correlation is not None:
            properties.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(10)

    def wait(self, find: Callable[[], list[T]], count: int, what: str, timeout_s: float = 60) -> list[T]:
        """Until ``find()`` (reading ``messages``) gives ``count`` items."""
        return wait_until(self.cond, find, count, timeout_s, what)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Daemon:
    """``roomscribe run`` as a subprocess; its JSON log lines are parsed as they come."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, umask: int = -1, command: tuple[str, ...] = ("run",)
    ) -> None:
        """``command``: ("worker", "--id", "w1") runs a recognizer node instead."""
        import json
        import sys

        self.logs: list[dict[str, object]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", *command, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            umask=umask,
        )

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                with self._cond:
                    self.raw.append(line)
                    with contextlib.suppress(ValueError):  # PortAudio or Python noise, not a log line
                        self.logs.append(json.loads(line))
                    self._cond.notify_all()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def events(self, event: str) -> list[dict[str, object]]:
        with self._cond:
            return [entry for entry in self.logs if entry.get("event") == event]

    def wait_log(self, event: str, count: int = 1, timeout_s: float = 60.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [entry for entry in self.logs if entry.get("event") == event]
                if len(found) >= count:
                    return found
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n{''.join(self.raw[-30:])}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(found)} of {count} {event!r} logs:\n{''.join(self.raw[-30:])}")
                self._cond.wait(min(remaining, 0.5))

    def terminate(self, timeout_s: float = 60.0) -> int:
        self.proc.send_signal(15)
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def write_config(path: Path, port: int, prefix: str, rooms: str, extra: str = "") -> Path:
    path.write_text(
        f"""
[daemon]
log_format = "json"
drain_timeout_s = 60
[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "{prefix}"
client_id = "{prefix}-daemon"
reconnect_min_s = 0.2
reconnect_max_s = 2.0
{extra}
{rooms}
"""
    )
    return path


SCHEMAS = REPO / "docs" / "schemas"


def check_schema(name: str, payload: object) -> None:
    """Validate ``payload`` against docs/schemas/<name>.schema.json (the documented contract)."""
    import json

    import jsonschema

    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(payload, schema)


def make_certificates(folder: Path, server_name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``server_name`` (DNS or IP), with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    kind = "IP" if server_name.replace(".", "").isdigit() else "DNS"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={server_name}"
    )
    extensions = folder / "san.ext"
    extensions.write_text(f"subjectAltName={kind}:{server_name}\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(extensions),
    )
    return ca, cert, key


def make_client_certificate(folder: Path) -> tuple[Path, Path]:
    """A client certificate signed by the CA that make_certificates left in ``folder``."""
    key, csr, cert = folder / "client.key", folder / "client.csr", folder / "client.pem"
    ca, ca_key = str(folder / "ca.pem"), str(folder / "ca.key")
    request = ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=roomscribe"]
    sign = ["x509", "-req", "-in", str(csr), "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", str(cert)]
    for args in (request, [*sign, "-days", "2"]):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    return cert, key


class NotifyListener:
    """A systemd stand-in for sd_notify: a datagram socket the daemon's ``$NOTIFY_SOCKET``
    names (``@name`` for an abstract socket); records every message with its arrival time."""

    def __init__(self, address: str) -> None:

        self.address = address
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._cond = threading.Condition()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self.messages.append((time.time(), fields))
                self._cond.notify_all()

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        with self._cond:
            return [(t, m) for t, m in self.messages if key in m]

    def wait_for(self, key: str, count: int = 1, timeout_s: float = 60.0) -> list[tuple[float, dict[str, str]]]:
        return wait_until(
            self._cond, lambda: [(t, m) for t, m in self.messages if key in m], count, timeout_s, f"{key} messages"
        )

    def close(self) -> None:
        self._open = False
        self._thread.join(timeout=2)
        self.sock.close()


class PulseServer:
    """A PulseAudio server of the test's own (runtime folder, socket), with a null sink
    ``room`` whose monitor a microphone room records from. Run as root as the issue's recipe
    does; ``--daemonize=no`` keeps it our child, so it goes away with the test."""

    def __init__(self, folder: Path, sink: str = "room") -> None:
        self.folder = folder
        self.sink = sink
        folder.mkdir(parents=True, exist_ok=True)
        self.socket = folder / "pulse" / "native"
        self.env = {
            "XDG_RUNTIME_DIR": str(folder),
            "PULSE_RUNTIME_PATH": str(folder / "pulse"),
            "PULSE_SERVER": f"unix:{self.socket}",
            "HOME": str(folder),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.module: str | None = None

    @staticmethod
    def available() -> bool:
        return all(shutil.which(b) for b in ("pulseaudio", "pactl", "paplay"))

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "--disallow-exit",
                "--use-pid-file=no", "--log-target=stderr", "--log-level=error",
                f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
            ],
            env={**os.environ, **self.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while subprocess.run(["pactl", "info"], env={**os.environ, **self.env}, capture_output=True).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr and self.proc.poll() is not None else ""
                raise RuntimeError(f"pulseaudio did not start: {err}")
            time.sleep(0.1)
        self.load_sink()

    def pactl(self, *args: str) -> str:
        done = subprocess.run(["pactl", *args], env={**os.environ, **self.env}, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pactl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def load_sink(self) -> None:
        self.module = self.pactl("load-module", "module-null-sink", f"sink_name={self.sink}")

    def unload_sink(self) -> None:
        assert self.module is not None
        self.pactl("unload-module", self.module)
        self.module = None

    def play(self, wav: Path) -> None:
        """Play a file into the sink (what the room's microphone hears), to its end."""
        subprocess.run(
            ["paplay", f"--device={self.sink}", str(wav)], env={**os.environ, **self.env}, check=True, timeout=120
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


class HttpAudioServer:
    """ffmpeg serving a WAV file over HTTP, paced in real time (``-re``), to one client at a
    time (``-listen 1``): a network stream that the test can cut (``stop``) and bring back."""

    def __init__(self, wav: Path, port: int) -> None:
        self.wav = wav
        self.port = port
        self.url = f"http://127.0.0.1:{port}/room.wav"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.wav),
             "-f", "wav", "-listen", "1", self.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SmallDisk:
    """A tmpfs of ``size`` mounted on ``folder`` (root only): a disk that fills for real.
    ``fill()`` takes every byte left; ``free()`` gives them back."""

    def __init__(self, folder: Path, size: str = "256k") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)])
        if done.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs on {folder} (needs root)")
        self.filler = folder / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 512, 1):  # down to the last byte
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * size) == size:
                        pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], check=False)


def epoch(stamp: object) -> float:
    """A payload's ISO time ("start", "end": UTC with a Z) in epoch seconds."""
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def journal_ids(database: Path) -> list[str]:
    """The recognized pieces the daemon's journal keeps (the outbox database's pieces table)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as db:
        return [row[0] for row in db.execute("SELECT id FROM pieces")]
