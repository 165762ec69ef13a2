"""Live sources that come and go: the reconnect wrapper, the room's state around it, and the
ffmpeg stream source against a real local HTTP stream."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.ffmpeg import StreamSource, redact
from pipeline.messages import SAMPLE_RATE, Utterance
from pipeline.room import Room
from pipeline.roomstate import RoomState
from pipeline.sources import Backoff, CaptureError, Reconnecting, SourceLost
from pipeline.vad import VadParams
from tests.helpers import HttpAudioServer, free_port, speak


class Flaky:
    """A live source following a script: per opening, either the number of 100 ms chunks it
    delivers before it is lost, or an exception raised at once (the device is not there)."""

    realtime = True
    description = "flaky"
    overflows = 0

    def __init__(self, script: list[int | Exception], level: float = 0.0) -> None:
        self.script = script
        self.level = level
        self.opened = 0

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        step = self.script[min(self.opened, len(self.script) - 1)]
        self.opened += 1
        if isinstance(step, Exception):
            raise step
        for _ in range(step):
            await asyncio.sleep(0)
            yield np.full(SAMPLE_RATE // 10, self.level, np.float32)
        if self.opened >= len(self.script):
            await stop.wait()  # the last opening lasts
            return
        raise SourceLost("unplugged")


def test_backoff_doubles_up_to_its_ceiling() -> None:
    delays = Backoff(0.5, 3.0).delays()
    assert [next(delays) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_redact_hides_passwords_in_urls() -> None:
    assert redact("rtsp://admin:secret@10.0.0.5/stream") == "rtsp://admin:***@10.0.0.5/stream"
    assert redact("http://camera.local/audio") == "http://camera.local/audio"


async def _run_reconnecting(source: Reconnecting, until: int) -> tuple[list[tuple[bool, str | None]], int]:
    changes: list[tuple[bool, str | None]] = []
    source.on_change = lambda available, reason: changes.append((available, reason))
    stop = asyncio.Event()
    got = 0
    async with contextlib.aclosing(source.chunks(stop)) as chunks:
        async for _ in chunks:
            got += 1
            if got == until:
                stop.set()
    return changes, got


def test_reconnecting_reopens_with_backoff_and_reports_each_transition() -> None:
    inner = Flaky([3, CaptureError("no such device"), CaptureError("no such device"), 4])
    source = Reconnecting(inner, Backoff(0.01, 0.04))
    started = time.monotonic()
    changes, got = asyncio.run(_run_reconnecting(source, until=7))
    assert got == 7 and inner.opened == 4
    assert changes == [(True, None), (False, "unplugged"), (False, "no such device"), (True, None)]
    assert source.losses == 1 and len(source.recoveries) == 1
    # Three waits (0.01, 0.02, 0.04) lie between the loss and the return.
    assert 0.07 <= source.recoveries[0] < 5
    assert time.monotonic() - started >= 0.07


class SpeechThenLoss:
    """Half a sentence, lost mid-speech; then not there once; then back with silence."""

    realtime = True
    description = "scripted microphone"
    overflows = 0

    def __init__(self, speech: np.ndarray) -> None:
        self.speech = speech
        self.opened = 0

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        self.opened += 1
        step = SAMPLE_RATE // 10
        if self.opened == 1:
            for i in range(0, len(self.speech) - step + 1, step):
                await asyncio.sleep(0)
                yield self.speech[i : i + step]
            raise SourceLost("unplugged")
        if self.opened == 2:
            raise CaptureError("no such device")
        while not stop.is_set():
            await asyncio.sleep(0.01)
            yield np.zeros(step, np.float32)


async def _room_around_a_loss() -> tuple[Room, Reconnecting, list[Utterance], list[str]]:
    from concurrent.futures import ThreadPoolExecutor

    from models.vad import SileroVad

    speech = speak("Please turn on the kitchen lights and close the curtains in the bedroom.")
    source = Reconnecting(SpeechThenLoss(speech[: len(speech) * 2 // 3]), Backoff(0.01, 0.02))
    out: asyncio.Queue[Utterance | None] = asyncio.Queue()
    states: list[str] = []
    with ThreadPoolExecutor(1) as vad_thread:
        room = Room(
            RoomState("lounge"), source, out, VadParams(), speech_prob_factory=SileroVad, vad_executor=vad_thread,
            id_prefix="lounge", on_state=lambda r: states.append(r.counters.state),
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(room.run(stop))
        deadline = time.monotonic() + 30
        while out.empty() or "unavailable" not in states or "listening" not in states[states.index("unavailable") :]:
            assert time.monotonic() < deadline, f"states so far: {states}"
            await asyncio.sleep(0.02)
        stop.set()
        await task
    utterances = []
    while not out.empty():
        item = out.get_nowait()
        if item is not None:
            utterances.append(item)
    return room, source, utterances, states


def test_a_room_whose_device_goes_away_says_unavailable_and_keeps_what_was_said() -> None:
    room, source, utterances, states = asyncio.run(_room_around_a_loss())
    # Unavailable while gone, listening again once back, without a restart.
    gone = states.index("unavailable")
    assert "listening" in states[gone:]
    assert source.losses == 1 and len(source.recoveries) == 1
    # The speech cut off by the loss still became an utterance: the room put silence after
    # the last audio, so it ended there rather than waiting for the device.
    assert len(utterances) == 1 and utterances[0].reason == "silence"
    assert utterances[0].duration_s > 1.0
    assert room.counters.errors == 2 and room.counters.last_error == "no such device"


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


async def _read_stream(url: str, seconds: float, stall_s: float = 5.0) -> np.ndarray:
    source = StreamSource(url, stall_s=stall_s)
    stop = asyncio.Event()
    got: list[np.ndarray] = []
    async with asyncio.timeout(60):  # a hang is a failure, not a wait for the suite's timeout
        async with contextlib.aclosing(source.chunks(stop)) as chunks:
            async for chunk in chunks:
                got.append(chunk)
                if sum(len(c) for c in got) >= seconds * SAMPLE_RATE:
                    stop.set()
    return np.concatenate(got)


@needs_ffmpeg
def test_stream_source_decodes_a_live_http_stream(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    speech = speak("Open the garage door please.", rate=22050)  # not 16 kHz: ffmpeg converts
    sf.write(wav, np.tile(speech, 2), 22050)
    server = HttpAudioServer(wav, free_port())
    server.start()
    try:
        started = time.monotonic()
        audio = asyncio.run(_read_stream_when_up(server, 1.5))
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert len(audio) >= 1.5 * SAMPLE_RATE
    assert np.abs(audio).max() > 0.05  # speech, not silence
    # Served in real time (-re): 1.5 s of audio took about that long, not an instant.
    assert elapsed >= 1.0


async def _read_stream_when_up(server: HttpAudioServer, seconds: float) -> np.ndarray:
    """Retries until ffmpeg listens. ffmpeg's ``-listen 1`` serves one client and exits: a
    try that connected and then lost the stream (a loaded machine) would leave every later
    try refused, so a server that exited is started again."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await _read_stream(server.url, seconds)
        except SourceLost:
            if time.monotonic() > deadline:
                raise
            if server.proc is not None and server.proc.poll() is not None:
                server.start()
            await asyncio.sleep(0.2)


@needs_ffmpeg
def test_stream_source_names_the_failure_when_nothing_is_there() -> None:
    with pytest.raises(SourceLost) as caught:
        asyncio.run(_read_stream(f"http://127.0.0.1:{free_port()}/none.wav", 1.0))
    message = str(caught.value)
    assert "stream http://127.0.0.1" in message and "ended" in message
    assert "refused" in message.lower() or "error" in message.lower()


@needs_ffmpeg
@pytest.mark.parametrize("kind", ["stream", "container"])
def test_a_source_closed_early_reaps_its_ffmpeg(kind: str, tmp_path: Path) -> None:
    """A consumer that stops after the first chunk closes the source's generator (aclosing):
    ffmpeg is killed and reaped, and its pipes are read to the end so that asyncio closes the
    transport now. Before, an unread stdout pipe left the transport to the garbage collector,
    whose ResourceWarning surfaced in whatever test ran next."""
    import gc
    import warnings

    import psutil

    from pipeline.ffmpeg import FfmpegSource

    wav = tmp_path / "long.wav"
    sf.write(wav, np.tile(speak("One two three four five."), 20), SAMPLE_RATE)  # a minute: far from its end
    source = StreamSource(str(wav)) if kind == "stream" else FfmpegSource(wav)

    async def first_chunk() -> int:
        async with contextlib.aclosing(source.chunks(asyncio.Event())) as chunks:
            async for chunk in chunks:
                return len(chunk)
        return 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(first_chunk()) > 0
        gc.collect()  # anything left unclosed would warn now
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert [p.name() for p in psutil.Process().children() if "ffmpeg" in p.name()] == []
