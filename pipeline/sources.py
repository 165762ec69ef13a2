"""Audio sources: files, microphones, network streams and pushed audio, yielding 16 kHz
mono float32 chunks. Live sources that can fail and come back (a USB microphone unplugged,
a camera's stream dropping) run inside ``Reconnecting``, which reopens them with backoff and
tells the room when the audio is gone and when it is back. Sources that run ffmpeg (files
in containers, network streams) are in pipeline/ffmpeg.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf
import soxr

from pipeline.messages import SAMPLE_RATE

CHUNK_MS = 500


class AudioFileError(Exception):
    """A file that cannot be used as audio; the message names the file and the reason."""


class CaptureError(Exception):
    """A capture device could not be opened or failed."""


class SourceLost(CaptureError):
    """A live source that was delivering stopped (device gone, stream ended); it may come back."""


class AudioSource(Protocol):
    """``realtime`` sources cannot wait (frames are dropped when the pipeline is behind);
    the others are read only as fast as the pipeline accepts."""

    realtime: bool
    description: str

    @property
    def overflows(self) -> int:
        """Buffers the device overran (microphones; 0 for the others)."""
        ...

    def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]: ...


def open_audio(path: Path) -> sf.SoundFile:
    """Open an audio file, turning every failure into an AudioFileError with a reason."""
    if not path.exists():
        raise AudioFileError(f"{path}: file not found")
    if path.is_dir():
        raise AudioFileError(f"{path}: is a directory")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: empty file (0 bytes)")
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioFileError(f"{path}: not a readable audio file ({exc})") from None
    except OSError as exc:
        raise AudioFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if handle.frames == 0:
        handle.close()
        raise AudioFileError(f"{path}: contains no audio samples")
    return handle


class FileSource:
    """Reads WAV/FLAC (any rate, any channels), converted to 16 kHz mono.

    ``realtime`` paces the chunks like a microphone would deliver them; ``loop`` starts the
    file again at its end.
    """

    overflows = 0

    def __init__(self, path: Path, realtime: bool = False, loop: bool = False) -> None:
        self.path = path
        self.realtime = realtime
        self.loop = loop
        self.description = f"file {path}"

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        started = time.monotonic()
        emitted = 0
        while not stop.is_set():
            with open_audio(self.path) as handle:
                resampler = None
                if handle.samplerate != SAMPLE_RATE:
                    resampler = soxr.ResampleStream(handle.samplerate, SAMPLE_RATE, 1, dtype="float32")
                block = max(1, handle.samplerate * CHUNK_MS // 1000)
                try:
                    blocks = handle.blocks(blocksize=block, dtype="float32", always_2d=True)
                    for data in blocks:
                        if stop.is_set():
                            return
                        mono = data.mean(axis=1, dtype=np.float32)
                        out = mono if resampler is None else resampler.resample_chunk(mono)
                        emitted += len(out)
                        if self.realtime:
                            # Deliver a chunk when a microphone would have finished recording it.
                            await asyncio.sleep(max(0.0, started + emitted / SAMPLE_RATE - time.monotonic()))
                        else:
                            await asyncio.sleep(0)
                        yield out
                except (sf.LibsndfileError, RuntimeError) as exc:
                    raise AudioFileError(f"{self.path}: read failed ({exc})") from None
                if resampler is not None:
                    yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if not self.loop:
                return


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """PortAudio prints pages of ALSA/JACK probing errors on fd 2 when it starts; hide them."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


PROBE_RATES = (8000, 16000, 22050, 32000, 44100, 48000, 96000)


def list_input_devices() -> list[dict[str, Any]]:
    """Capture devices: index, name, host API, input channels, default rate and the common
    rates the device accepts (a room opens it at its default rate and converts)."""
    import pyaudio

    with _quiet_stderr():
        pa = pyaudio.PyAudio()
        try:
            devices = []
            for i in range(pa.get_device_count()):
                info = pa.get_device_info_by_index(i)
                channels = int(info["maxInputChannels"])
                if channels <= 0:
                    continue
                rates = []
                for rate in PROBE_RATES:
                    with contextlib.suppress(ValueError, OSError):
                        if pa.is_format_supported(
                            rate, input_device=i, input_channels=min(2, channels), input_format=pyaudio.paFloat32
                        ):
                            rates.append(rate)
                devices.append(
                    {
                        "index": i,
                        "name": str(info["name"]),
                        "host_api": str(pa.get_host_api_info_by_index(int(info["hostApi"]))["name"]),
                        "channels": channels,
                        "rate": int(info["defaultSampleRate"]),
                        "rates": rates,
                    }
                )
            return devices
        finally:
            pa.terminate()


def _find_device(pa: Any, device: str | int) -> int:
    if isinstance(device, int):
        return device
    if device == "default":
        return int(pa.get_default_input_device_info()["index"])
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if device.lower() in str(info["name"]).lower() and int(info["maxInputChannels"]) > 0:
            return i
    raise CaptureError(f"no input device whose name contains {device!r}")


class MicSource:
    """A PortAudio input device through PyAudio, at its native rate, converted to 16 kHz mono.

    The PortAudio callback never blocks: it hands each buffer to the event loop with
    ``call_soon_threadsafe`` into a small drop-oldest queue.
    """

    realtime = True

    def __init__(self, device: str | int = "default", buffer_ms: int = 100, stall_s: float = 2.0) -> None:
        self.device = device
        self.buffer_ms = buffer_ms
        # A working device delivers a buffer every buffer_ms, silence included; nothing for
        # this long means it is gone (an unplugged USB device need not stop the stream).
        self.stall_s = stall_s
        self.description = f"mic {device}"
        self.overflows = 0

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        import pyaudio

        from pipeline.queues import DropOldestQueue

        loop = asyncio.get_running_loop()
        inbox: DropOldestQueue[np.ndarray] = DropOldestQueue(64)
        with _quiet_stderr():
            pa = pyaudio.PyAudio()
        try:
            try:
                index = _find_device(pa, self.device)
                info = pa.get_device_info_by_index(index)
            except (OSError, ValueError) as exc:
                raise CaptureError(f"input device {self.device!r}: {exc}") from None
            rate = int(info["defaultSampleRate"])
            channels = max(1, min(2, int(info["maxInputChannels"])))

            def callback(data: bytes | None, frames: int, _time: Any, status: int) -> tuple[None, int]:
                if status & pyaudio.paInputOverflow:
                    self.overflows += 1
                if data:
                    block = np.frombuffer(data, dtype=np.float32).reshape(-1, channels)
                    loop.call_soon_threadsafe(inbox.put_dropping_oldest, block.mean(axis=1))
                return None, pyaudio.paContinue

            try:
                with _quiet_stderr():  # ALSA's plugins complain on open too
                    stream = pa.open(
                        format=pyaudio.paFloat32,
                        channels=channels,
                        rate=rate,
                        input=True,
                        input_device_index=index,
                        frames_per_buffer=max(64, rate * self.buffer_ms // 1000),
                        stream_callback=callback,
                    )
            except OSError as exc:
                raise CaptureError(f"cannot open input device {info['name']!r}: {exc}") from None
            # soxr's streaming resampler (a proper low-pass), not decimation.
            resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            last = time.monotonic()
            try:
                while not stop.is_set():
                    try:
                        block = await asyncio.wait_for(inbox.get(), timeout=0.5)
                    except TimeoutError:
                        if not stream.is_active():
                            raise SourceLost(f"input device {info['name']!r} stopped") from None
                        if time.monotonic() - last > self.stall_s:
                            why = f"no audio for {self.stall_s:g} s"
                            raise SourceLost(f"input device {info['name']!r}: {why}") from None
                        continue
                    last = time.monotonic()
                    yield block if resampler is None else resampler.resample_chunk(block)
            finally:
                with contextlib.suppress(OSError):  # a vanished device fails these too
                    stream.stop_stream()
                    stream.close()
        finally:
            pa.terminate()


class PushSource:
    """Audio that arrives from elsewhere (Hermes audio frames over MQTT): whoever receives it
    calls ``push`` on the event loop; ``chunks`` yields it as 16 kHz mono.

    Real time like a microphone: ``push`` never waits; when the room is behind, the oldest
    chunk goes and is counted (``dropped``)."""

    overflows = 0

    realtime = True
    # Comes when its sender sends it: the room places its times by arrival (Room._follow_arrival).
    intermittent = True

    def __init__(self, description: str, max_chunks: int = 512) -> None:
        from pipeline.queues import DropOldestQueue

        self.description = description
        self._inbox: DropOldestQueue[np.ndarray] = DropOldestQueue(max_chunks)
        self._resampler: Any = None
        self._rate = SAMPLE_RATE
        self.chunks_in = 0

    @property
    def dropped(self) -> int:
        return self._inbox.dropped

    def push(self, samples: np.ndarray, rate: int) -> None:
        """Mono float32 samples at ``rate``; resampled with a streaming resampler that is
        started again when the sender changes its rate."""
        if rate != self._rate:
            self._rate = rate
            self._resampler = (
                None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            )
        out = samples if self._resampler is None else self._resampler.resample_chunk(samples)
        self.chunks_in += 1
        if len(out):
            self._inbox.put_dropping_oldest(out)

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        while not stop.is_set():
            try:
                yield await asyncio.wait_for(self._inbox.get(), timeout=0.5)
            except TimeoutError:
                continue


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts to reopen a live source: ``initial_s``, doubling up to ``max_s``."""

    initial_s: float = 0.5
    max_s: float = 10.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(self.max_s, delay * 2)


class Reconnecting:
    """A live source that is opened again whenever it fails or ends, with backoff, until
    ``stop``. ``on_change(available, reason)`` hears each transition (the room's state says
    ``unavailable`` meanwhile); ``recoveries`` holds, for each return, the seconds from the
    loss to the first audio after it (what a user waits once the device is back is at most
    one backoff step of that)."""

    realtime = True

    def __init__(self, inner: AudioSource, backoff: Backoff | None = None) -> None:
        self.inner = inner
        self.backoff = backoff or Backoff()
        self.description = inner.description
        self.available = False
        self.last_error: str | None = None
        self.losses = 0
        self.recoveries: list[float] = []  # seconds from each loss to the first audio after it
        self.on_change: Callable[[bool, str | None], None] | None = None
        self._lost_at: float | None = None

    @property
    def overflows(self) -> int:
        return self.inner.overflows

    def _set(self, available: bool, reason: str | None) -> None:
        if available == self.available and reason == self.last_error:
            return
        self.available = available
        if available:
            if self._lost_at is not None:
                self.recoveries.append(time.monotonic() - self._lost_at)
            self._lost_at = None
        else:
            self.last_error = reason
            if self._lost_at is None:
                self._lost_at = time.monotonic()
                self.losses += 1
        if self.on_change is not None:
            self.on_change(available, reason)

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        delays = self.backoff.delays()
        while not stop.is_set():
            try:
                # Closed here, not by the garbage collector: an inner source may hold a
                # subprocess that must be reaped when this generator stops early.
                async with contextlib.aclosing(self.inner.chunks(stop)) as chunks:
                    async for chunk in chunks:
                        if not self.available:
                            self._set(True, None)
                            delays = self.backoff.delays()
                        yield chunk
                if stop.is_set():
                    return
                raise SourceLost(f"{self.description}: ended")
            except (CaptureError, AudioFileError, OSError) as exc:
                self._set(False, str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=next(delays))
