"""The Wyoming server with the real ``wyoming`` client, against a running daemon.

One daemon (tiny.en, a real Mosquitto, no rooms) serves every test of the module; each bad
input is followed by a good request on a new connection, to show nothing else was disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from tests.helpers import REPO, Daemon, Mosquitto, free_port, normalize, speak, wer, write_config

SENTENCE = "Set a timer for ten minutes."
MAX_AUDIO_S = 8.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("wyoming")
    broker = Mosquitto(folder / "broker")
    broker.start()
    port = free_port()
    extra = f"[wyoming]\nenabled = true\nport = {port}\nmax_audio_s = {MAX_AUDIO_S}\n"
    config = write_config(folder / "c.toml", broker.port, f"rs-{uuid.uuid4().hex[:8]}", "", extra)
    daemon = Daemon(config)
    try:
        daemon.wait_log("wyoming server listening", timeout_s=120)
        yield port
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        broker.stop()


def pcm(audio: np.ndarray, rate: int, channels: int) -> bytes:
    """16 kHz float audio as 16-bit PCM at ``rate`` with ``channels`` (the same signal in each)."""
    resampled = soxr.resample(audio, 16000, rate) if rate != 16000 else audio
    ints = (np.clip(resampled, -1, 1) * 32767).astype("<i2")
    return np.repeat(ints[:, None], channels, axis=1).tobytes()


async def _events_until_stop(
    client: AsyncTcpClient, timeout_s: float = 60, times: list[float] | None = None
) -> list[Event]:
    events = []
    async with asyncio.timeout(timeout_s):
        while (event := await client.read_event()) is not None:
            events.append(event)
            if times is not None:
                times.append(time.monotonic())
            if TranscriptStop.is_type(event.type) or Error.is_type(event.type):
                break
    return events


async def transcribe(port: int, audio: np.ndarray, rate: int = 16000, channels: int = 1) -> tuple[list[Event], float]:
    """The events answering one request, and the seconds from audio-stop to the transcript."""
    data = pcm(audio, rate, channels)
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
        step = rate * 2 * channels // 10  # 100 ms chunks, as Home Assistant sends them
        for i in range(0, len(data), step):
            await client.write_event(
                AudioChunk(rate=rate, width=2, channels=channels, audio=data[i : i + step]).event()
            )
        await client.write_event(AudioStop().event())
        stopped = time.monotonic()
        times: list[float] = []
        events = await _events_until_stop(client, times=times)
    answered = next((t for e, t in zip(events, times, strict=True) if Transcript.is_type(e.type)), stopped)
    return events, answered - stopped


def text_of(events: list[Event]) -> str:
    return str(Transcript.from_event(next(e for e in events if Transcript.is_type(e.type))).text)


def test_describe_gives_the_model_and_its_languages(server: int) -> None:
    async def run() -> Info:
        async with AsyncTcpClient("127.0.0.1", server) as client:
            await client.write_event(Describe().event())
            event = await client.read_event()
            assert event is not None and Info.is_type(event.type)
            return Info.from_event(event)

    info = asyncio.run(run())
    (program,) = info.asr
    assert program.supports_transcript_streaming and program.installed
    (model,) = program.models
    assert model.name == "whisper-tiny.en" and model.languages == ["en"]


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (22050, 2), (48000, 1)])
def test_a_request_gets_the_written_text(server: int, rate: int, channels: int) -> None:
    events, _ = asyncio.run(transcribe(server, speak(SENTENCE), rate, channels))
    kinds = [e.type for e in events]
    assert kinds == ["transcript-start", "transcript-chunk", "transcript", "transcript-stop"], kinds
    text = text_of(events)
    # The text stage ran: numbers written as digits (docs/itn.md).
    assert "10 minutes" in text, text
    assert wer([normalize("Set a timer for 10 minutes.")], [normalize(text)]) <= 0.2
    assert TranscriptChunk.from_event(events[1]).text.strip() == text
    assert TranscriptStart.from_event(events[0]).language == "en"


def test_silence_gets_an_empty_transcript(server: int) -> None:
    events, _ = asyncio.run(transcribe(server, np.zeros(16000, np.float32)))
    assert text_of(events) == ""


async def _raw(port: int, data: bytes) -> list[dict[str, object]]:
    """Send raw bytes; the JSON headers of what comes back until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answers = []
    async with asyncio.timeout(30):
        while line := await reader.readline():
            header = json.loads(line)
            if header.get("data_length"):
                header["data"] = json.loads(await reader.readexactly(header["data_length"]))
            answers.append(header)
    writer.close()
    return answers


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        (b"this is not json\n", "bad-event"),
        (b'{"no": "type"}\n', "bad-event"),
        (b'{"type": "audio-chunk", "payload_length": 99999999999}\n', "bad-event"),
        (b'{"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}}\n'
         b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 7, "channels": 1}, "payload_length": 4}\nabcd',
         "bad-audio"),
        (b"x" * 70000 + b"\n", "bad-event"),
    ],
)  # fmt: skip
def test_bad_events_get_an_error_and_the_server_goes_on(server: int, sent: bytes, code: str) -> None:
    answers = asyncio.run(_raw(server, sent))
    assert answers and answers[-1]["type"] == "error", answers
    assert answers[-1]["data"]["code"] == code  # type: ignore[index]
    events, _ = asyncio.run(transcribe(server, speak(SENTENCE)))
    assert "10 minutes" in text_of(events)


def test_audio_out_of_order_is_an_error_not_a_hangup(server: int) -> None:
    async def run() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", server) as client:
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0" * 160).event())
            first = await client.read_event()
            await client.write_event(AudioStop().event())
            second = await client.read_event()
            await client.write_event(Describe().event())  # the connection still serves
            third = await client.read_event()
            return [e for e in (first, second, third) if e is not None]

    first, second, third = asyncio.run(run())
    assert Error.from_event(first).code == Error.from_event(second).code == "audio-not-started"
    assert Info.is_type(third.type)


def test_too_much_audio_is_refused(server: int) -> None:
    data = pcm(np.zeros(int((MAX_AUDIO_S + 2) * 16000), np.float32), 16000, 1)

    async def run() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", server) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            with contextlib.suppress(ConnectionError):  # the server hangs up once it has said why
                for i in range(0, len(data), 3200):
                    await client.write_event(
                        AudioChunk(rate=16000, width=2, channels=1, audio=data[i : i + 3200]).event()
                    )
            return await _events_until_stop(client)

    events = asyncio.run(run())
    assert Error.from_event(events[-1]).code == "audio-too-long"
    answered, _ = asyncio.run(transcribe(server, speak(SENTENCE)))
    assert "10 minutes" in text_of(answered)


def test_a_client_that_leaves_mid_utterance_disturbs_nothing(server: int) -> None:
    async def leave() -> None:
        async with AsyncTcpClient("127.0.0.1", server) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(
                AudioChunk(rate=16000, width=2, channels=1, audio=pcm(speak("Hello"), 16000, 1)).event()
            )

    asyncio.run(leave())
    events, _ = asyncio.run(transcribe(server, speak(SENTENCE)))
    assert "10 minutes" in text_of(events)


HA_PYTHON = REPO / ".venv-ha" / "bin" / "python"


@pytest.mark.skipif(not HA_PYTHON.exists(), reason="no .venv-ha with Home Assistant (make test installs it)")
def test_home_assistants_own_wyoming_integration(server: int, tmp_path: Path) -> None:
    """Home Assistant 2024.3.3's Wyoming integration (its WyomingService reads our info, its
    speech-to-text provider streams as Assist does, with the wyoming 1.5.3 it pins)."""
    wav = tmp_path / "timer.wav"
    sf.write(wav, np.concatenate([speak(SENTENCE), np.zeros(8000, np.float32)]), 16000, subtype="PCM_16")
    script = REPO / "tests" / "ha_wyoming_client.py"
    run = subprocess.run(
        [str(HA_PYTHON), str(script), "127.0.0.1", str(server), str(wav), "en"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    assert seen["name"] == "roomscribe" and seen["platforms"] == ["stt"] and seen["languages"] == ["en"]
    assert seen["state"].endswith("SUCCESS")
    assert wer([normalize(SENTENCE)], [normalize(seen["text"])]) <= 0.2, seen
    assert "10 minutes" in seen["text"]  # written by our text stage


def test_zeroconf_announces_the_server_and_withdraws_it(tmp_path: Path) -> None:
    """What Home Assistant's discovery looks for (_wyoming._tcp), resolved by python-zeroconf
    to our port; gone once the daemon stops."""
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from daemon.integrations.wyoming import outgoing_address

    try:
        outgoing_address()
    except OSError:
        pytest.skip("this machine has no multicast route")

    name = f"roomscribe-test-{uuid.uuid4().hex[:6]}"
    kind = "_wyoming._tcp.local."

    async def resolve() -> AsyncServiceInfo | None:
        zeroconf = AsyncZeroconf()
        try:
            info = AsyncServiceInfo(kind, f"{name}.{kind}")
            return info if await info.async_request(zeroconf.zeroconf, 3000) else None
        finally:
            await zeroconf.async_close()

    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    port = free_port()
    extra = f'[wyoming]\nenabled = true\nhost = "0.0.0.0"\nport = {port}\nzeroconf = true\nzeroconf_name = "{name}"\n'
    daemon = Daemon(write_config(tmp_path / "c.toml", broker.port, f"rs-{uuid.uuid4().hex[:8]}", "", extra))
    try:
        daemon.wait_log("wyoming server announced", timeout_s=120)
        found = asyncio.run(resolve())
        assert found is not None and found.port == port and found.parsed_addresses()
        assert daemon.terminate() == 0
        assert asyncio.run(resolve()) is None
    finally:
        daemon.kill()
        broker.stop()
