"""Sources that run ffmpeg: containers and formats libsndfile does not read (MP4, MKV,
M4A...), and network streams (RTSP, HTTP). Each decodes into 16 kHz mono float32 on a pipe;
the subprocess is reaped (killed if needed, its pipes read to the end) whenever its
generator stops, so no process or transport outlives the source."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np

from pipeline.messages import SAMPLE_RATE
from pipeline.sources import CHUNK_MS, AudioFileError, CaptureError, SourceLost

# A file is read as itself and nothing else: only the file protocol (no http:, no pipes; the
# "file:" prefix keeps a name with a colon from naming a protocol), and only demuxers of
# plain media, so a playlist or concat list (HLS, ffconcat) cannot pull in other files.
MEDIA_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,aac,asf,avi,amr,mp3,ogg,wav,flac,aiff,au,caf,w64"
FILE_INPUT_LIMITS = ("-protocol_whitelist", "file", "-format_whitelist", MEDIA_DEMUXERS)


def ffmpeg_path() -> str | None:
    import shutil

    return shutil.which("ffmpeg")


async def reap(proc: asyncio.subprocess.Process, timeout_s: float = 5.0) -> None:
    """Kill ``proc`` if it still runs, wait for it, and read its pipes to their end: asyncio
    closes a subprocess transport only once every pipe is at EOF, so an ffmpeg killed with
    its output unread would otherwise leave an open transport for the garbage collector
    (a ResourceWarning in whatever runs then). Nobody else may be reading the pipes."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    pipes = [p.read() for p in (proc.stdout, proc.stderr) if p is not None and not p.at_eof()]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*pipes, proc.wait())


class FfmpegSource:
    """Any container ffmpeg reads (MP4, MKV, M4A, WebM, MP3...), decoded by an ffmpeg
    subprocess into 16 kHz mono float32; read as fast as the pipeline takes it."""

    overflows = 0

    realtime = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"ffmpeg {path}"

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        binary = ffmpeg_path()
        if binary is None:
            raise AudioFileError(f"{self.path}: not a format soundfile reads, and ffmpeg is not installed")
        args = [binary, "-nostdin", "-v", "error", *FILE_INPUT_LIMITS, "-i", f"file:{self.path}"]
        args += ["-vn", "-f", "f32le", "-ac", "1"]
        proc = await asyncio.create_subprocess_exec(
            *args, "-ar", str(SAMPLE_RATE), "-", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        block = SAMPLE_RATE * CHUNK_MS // 1000 * 4  # bytes of float32
        pending = b""
        got = 0
        try:
            while not stop.is_set():
                data = await proc.stdout.read(block)
                if not data:
                    break
                pending += data
                usable = len(pending) - len(pending) % 4
                if usable:
                    got += usable
                    yield np.frombuffer(pending[:usable], dtype="<f4").astype(np.float32)
                    pending = pending[usable:]
            errors = (await proc.stderr.read()).decode(errors="replace").strip()
            code = await proc.wait()
        finally:
            await reap(proc)
        if code != 0 or (got == 0 and not stop.is_set()):
            reason = errors.splitlines()[-1] if errors else f"ffmpeg exited with {code}"
            raise AudioFileError(f"{self.path}: ffmpeg could not decode it ({reason})")


def redact(url: str) -> str:
    """The URL with any password replaced (rtsp://user:secret@camera -> rtsp://user:***@camera)."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


class StreamSource:
    """A network stream (RTSP, HTTP, anything ffmpeg opens) or a local file played as one,
    decoded by an ffmpeg subprocess into 16 kHz mono float32 as it arrives.

    Live, like a microphone: frames are dropped, not waited for, when the pipeline is
    behind. A file is read at its own pace (ffmpeg ``-re``). When the stream ends, stalls for
    ``stall_s`` or ffmpeg fails, ``SourceLost`` carries ffmpeg's last error line; run inside
    ``Reconnecting`` it is opened again.
    """

    overflows = 0

    realtime = True

    def __init__(self, url: str, stall_s: float = 10.0) -> None:
        self.url = url
        self.stall_s = stall_s
        self.description = f"stream {redact(url)}"
        self.errors: list[str] = []  # ffmpeg's latest error lines (at most 5)

    def _args(self, binary: str) -> list[str]:
        args = [binary, "-nostdin", "-hide_banner", "-v", "error"]
        timeout_us = str(int(self.stall_s * 1_000_000))
        if "://" not in self.url or self.url.startswith("file:"):
            args += ["-re"]
        elif self.url.startswith(("http://", "https://")):
            args += ["-rw_timeout", timeout_us]
        elif self.url.startswith(("rtsp://", "rtsps://")):
            args += ["-rtsp_transport", "tcp", "-timeout", timeout_us]
        return [*args, "-i", self.url, "-vn", "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]

    async def _collect_errors(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = redact(line.decode(errors="replace").strip())
            if text:
                self.errors = [*self.errors[-4:], text]

    async def chunks(self, stop: asyncio.Event) -> AsyncGenerator[np.ndarray, None]:
        binary = ffmpeg_path()
        if binary is None:
            raise CaptureError("a stream source needs ffmpeg, which is not installed (apt install ffmpeg)")
        self.errors = []
        proc = await asyncio.create_subprocess_exec(
            *self._args(binary), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        errors = asyncio.create_task(self._collect_errors(proc.stderr))
        block = SAMPLE_RATE * CHUNK_MS // 1000 * 4  # bytes of float32
        pending = b""
        try:
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(proc.stdout.read(block), timeout=self.stall_s)
                except TimeoutError:
                    raise SourceLost(f"{self.description}: no audio for {self.stall_s:g} s") from None
                if not data:
                    break
                pending += data
                usable = len(pending) - len(pending) % 4
                if usable:
                    yield np.frombuffer(pending[:usable], dtype="<f4").astype(np.float32)
                    pending = pending[usable:]
            if stop.is_set():
                return
            # ffmpeg closed its output: it is exiting. Never wait on it for long (the finally
            # kills one that lingers), so a room cannot hang here.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(errors), timeout=2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=2)
            code = proc.returncode
            why = self.errors[-1] if self.errors else f"ffmpeg exited with {code}"
            raise SourceLost(f"{self.description}: stream ended ({why})")
        finally:
            errors.cancel()
            await asyncio.wait([errors])  # it reads stderr: stopped before reap reads the rest
            await reap(proc)
