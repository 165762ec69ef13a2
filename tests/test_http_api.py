"""The OpenAI-compatible API with the real ``openai`` client, against a running daemon."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import soundfile as sf

from tests.helpers import Daemon, Mosquitto, free_port, normalize, speech_with_pauses, wer, write_config

TEXTS = ["Set a timer for ten minutes.", "Please turn on the kitchen lights."]
EXPECTED = "Set a timer for 10 minutes. Please turn on the kitchen lights."
TOKEN = "s3cret-token"
MAX_UPLOAD_MB = 1.0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The API's base URL and a folder holding the test's audio."""
    folder = tmp_path_factory.mktemp("http")
    broker = Mosquitto(folder / "broker")
    broker.start()
    port = free_port()
    (folder / "token").write_text(TOKEN + "\n")
    extra = f'[http]\nenabled = true\nport = {port}\ntoken_file = "token"\nmax_upload_mb = {MAX_UPLOAD_MB}\n'
    config = write_config(folder / "c.toml", broker.port, f"rs-{uuid.uuid4().hex[:8]}", "", extra)
    audio, _ = speech_with_pauses(TEXTS, pauses=[1.2, 0.5])
    sf.write(folder / "talk.wav", audio, 16000)
    daemon = Daemon(config)
    try:
        daemon.wait_log("ready", timeout_s=120)
        yield f"http://127.0.0.1:{port}/v1", folder
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        broker.stop()


CLIENTS: dict[tuple[str, str], openai.OpenAI] = {}


def client(base: str, token: str = TOKEN) -> openai.OpenAI:
    """One client per token for the module (closed at its end: an open connection pool left
    to the garbage collector is a ResourceWarning whenever it runs)."""
    if (base, token) not in CLIENTS:
        CLIENTS[base, token] = openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=120)
    return CLIENTS[base, token]


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for c in CLIENTS.values():
        c.close()
    CLIENTS.clear()


def test_models_and_health(api: tuple[str, Path]) -> None:
    base, _ = api
    assert [m.id for m in client(base).models.list().data] == ["whisper-tiny.en"]
    # /health needs no token: a supervisor can poll it.
    with urllib.request.urlopen(base.removesuffix("/v1") + "/health", timeout=10) as answer:
        assert json.loads(answer.read())["status"] == "ok"


def test_json_and_text(api: tuple[str, Path]) -> None:
    base, folder = api
    with (folder / "talk.wav").open("rb") as f:
        result = client(base).audio.transcriptions.create(model="whisper-1", file=f)
    assert wer([normalize(EXPECTED)], [normalize(result.text)]) <= 0.15, result.text
    assert "10 minutes" in result.text  # the text stage ran (ITN)
    with (folder / "talk.wav").open("rb") as f:
        text = client(base).audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and text.strip() == result.text.strip()


def test_subtitles_and_verbose_json(api: tuple[str, Path]) -> None:
    base, folder = api
    c = client(base)
    with (folder / "talk.wav").open("rb") as f:
        srt = c.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    with (folder / "talk.wav").open("rb") as f:
        vtt = c.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and " --> " in vtt
    with (folder / "talk.wav").open("rb") as f:
        verbose = c.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["segment"]
        )
    assert verbose.language == "en" and verbose.duration > 4
    segments = verbose.segments or []
    assert segments and segments[0].start >= 1.0 and segments[-1].end <= verbose.duration + 0.1
    assert " ".join(s.text for s in segments) == verbose.text


def test_a_container_ffmpeg_reads(api: tuple[str, Path]) -> None:
    base, folder = api
    m4a = folder / "talk.m4a"
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(folder / "talk.wav"), str(m4a)], check=True)
    with m4a.open("rb") as f:
        result = client(base).audio.transcriptions.create(model="whisper-1", file=f, language="en")
    assert wer([normalize(EXPECTED)], [normalize(result.text)]) <= 0.15, result.text


@pytest.mark.parametrize(
    ("content", "name", "options", "status", "says"),
    [
        (b"", "empty.wav", {}, 400, "empty"),
        (b"this is a text file, not audio" * 10, "notes.wav", {}, 400, "could not read"),
        (b"\0" * int(MAX_UPLOAD_MB * 1024 * 1024 * 1.5), "big.wav", {}, 413, "max_upload_mb"),
        (None, "talk.wav", {"response_format": "docx"}, 400, "response_format"),
        (None, "talk.wav", {"language": "fr"}, 400, "not known"),
        (None, "talk.wav", {"timestamp_granularities": ["word"]}, 400, "segment"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    api: tuple[str, Path], content: bytes | None, name: str, options: dict[str, object], status: int, says: str
) -> None:
    base, folder = api
    data = (folder / "talk.wav").read_bytes() if content is None else content
    with pytest.raises(openai.APIStatusError) as caught:
        client(base).audio.transcriptions.create(model="whisper-1", file=(name, data), **options)  # type: ignore[call-overload]
    assert caught.value.status_code == status
    assert says in str(caught.value.body), caught.value.body
    # Nothing else disturbed: the next request is answered.
    with (folder / "talk.wav").open("rb") as f:
        assert "10 minutes" in client(base).audio.transcriptions.create(model="whisper-1", file=f).text


def test_a_wrong_token_is_refused(api: tuple[str, Path]) -> None:
    base, _ = api
    with pytest.raises(openai.AuthenticationError):
        client(base, "wrong").models.list()


def test_a_request_never_sees_a_traceback(api: tuple[str, Path]) -> None:
    base, _ = api
    request = urllib.request.Request(
        base + "/audio/transcriptions", data=b"x=1", headers={"Authorization": f"Bearer {TOKEN}"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    body = json.loads(caught.value.read())
    assert "multipart" in body["error"]["message"] and "Traceback" not in json.dumps(body)
