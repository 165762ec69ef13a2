"""Batch transcription: files through the same recognize and text stages as live rooms.

Each file becomes a short-lived room (a file source read as fast as the pipeline takes it,
the VAD) whose utterances are ``Work.BATCH`` (live rooms go first) and carry the job and
the file (``Utterance.file``); several files are decoded and segmented at once, so segments
of different files share the recognizer's batches. Batch transcripts come back even when empty (the recognize
and text stages pass them on), so a job knows when each file is complete: it has as many
transcripts as its room cut segments. Then ``on_file_done`` gets the file's segments in
order, on a worker thread (it writes files). A file that cannot be read is done at once
with its reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import structlog

from pipeline.chunks import KeptAudio, chunk, keep_whole, spoken_words, whole, whole_check
from pipeline.ffmpeg import FfmpegSource, ffmpeg_path
from pipeline.messages import FRAME_MS, BatchFile, Transcript, Utterance
from pipeline.room import Room
from pipeline.roomstate import RoomState
from pipeline.sources import AudioFileError, AudioSource, FileSource, open_audio
from pipeline.vad import VadParams

# What libsndfile reads; anything else goes through ffmpeg when it is installed.
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64"}
NATIVE_SUFFIXES = {".wav", ".flac", ".aiff", ".aif", ".au", ".caf", ".w64"}
CONTAINER_SUFFIXES = {".mp4", ".m4a", ".mkv", ".webm", ".mov", ".aac", ".wma", ".avi", ".amr", ".3gp"}
MEDIA_SUFFIXES = SOUNDFILE_SUFFIXES | CONTAINER_SUFFIXES


@dataclass
class FileResult:
    path: Path
    segments: list[Transcript] = field(default_factory=list)
    audio_s: float = 0.0
    error: str | None = None
    whole: Transcript | None = None  # a short file's whole audio, recognized as one

    def settle_whole(self) -> dict[str, object] | None:
        """A short file: its whole-audio transcript, unless the other recognition of its
        segments says clearly more (chunks.keep_whole). Returns what was weighed when there
        were two recognitions to weigh (for the run's log), else None."""
        if self.whole is None:
            return None
        others = [t.raw_text for t in self.segments]
        kept = keep_whole(self.whole.raw_text, others)
        weighed: dict[str, object] | None = None
        if others:
            weighed = {"kept": "whole" if kept else "segments", "whole_words": spoken_words(self.whole.raw_text),
                       "segment_words": sum(spoken_words(t) for t in others)}  # fmt: skip
        if kept:
            self.segments = [self.whole]
        return weighed


def expand_paths(paths: list[Path], recursive: bool) -> list[tuple[Path, Path]]:
    """(file, root) for every input: files as given (root: their folder), folders expanded
    to the media files they hold, sorted (root: the folder given); outputs under --out
    mirror each file's place below its root."""
    out: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            out.extend((p, path) for p in sorted(found) if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        else:
            out.append((path, path.parent))
    return out


def open_source(path: Path) -> tuple[AudioSource, float | None]:
    """A source for the file and its length in seconds when known up front; AudioFileError
    with the reason for a file that cannot be used."""
    if path.suffix.lower() in CONTAINER_SUFFIXES:
        if not path.is_file():
            raise AudioFileError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
        if path.stat().st_size == 0:
            raise AudioFileError(f"{path}: empty file (0 bytes)")
        if ffmpeg_path() is None:
            raise AudioFileError(f"{path}: {path.suffix} needs ffmpeg, which is not installed (apt install ffmpeg)")
        return FfmpegSource(path), None
    try:
        with open_audio(path) as handle:
            return FileSource(path, realtime=False), handle.frames / handle.samplerate
    except AudioFileError:
        # MP3, Ogg and Opus depend on how libsndfile was built, and other suffixes are
        # unknown to it: ffmpeg may read those. WAV, FLAC and friends it always reads.
        maybe = path.suffix.lower() not in NATIVE_SUFFIXES and path.is_file() and path.stat().st_size > 0
        if maybe and ffmpeg_path() is not None:
            return FfmpegSource(path), None
        raise


@dataclass(frozen=True)
class _FileEnd:
    index: int
    audio: np.ndarray | None = None  # all of a short file (``whole_s``), else None


class BatchJob:
    def __init__(
        self,
        job_id: str,
        files: list[Path],
        out: asyncio.Queue[Utterance | None],
        vad_params: VadParams,
        speech_prob_factory: Callable[[], Callable[[np.ndarray], float]],
        vad_executor: Executor,
        on_file_done: Callable[[FileResult], None],
        files_in_flight: int = 2,
        language: str | None = None,
        max_segments_in_flight: int | None = None,
        chunk_s: float = 0.0,
        whole_s: float = 0.0,
    ) -> None:
        self.job_id = job_id
        self.files = files
        self.out = out
        self.vad_params = vad_params
        self.speech_prob_factory = speech_prob_factory
        self.vad_executor = vad_executor
        self.on_file_done = on_file_done
        self.files_in_flight = max(1, files_in_flight)
        self.language = language
        self.results: dict[int, FileResult] = {}
        self.vad_seconds = 0.0  # all files' VAD time (where the wall time went)
        self._expected: dict[int, int] = {}  # index -> segments cut, once its room finished
        self._done: set[int] = set()
        self._writes_done = 0  # files whose outputs are written (on_file_done returned)
        self.finished = asyncio.Event()
        # Sharing a queue with live rooms: at most this many of the job's segments in it at
        # once, so a big job never fills the queue that live rooms' VAD tasks wait on.
        self._slots = asyncio.Semaphore(max_segments_in_flight) if max_segments_in_flight else None
        self._local: asyncio.Queue[Utterance | _FileEnd | None] = asyncio.Queue(64)
        # 0: each VAD segment is recognized on its own (the serial loop, live-room style).
        # Otherwise consecutive segments of a file are merged into chunks spanning at most
        # this many seconds and recognized with timestamps: one encoder pass per chunk
        # instead of one per segment (the encoder always sees 30 s).
        self.chunk_s = chunk_s
        # A file at most this long is recognized whole (its own audio, silences and all, as
        # one utterance without timestamps); 0: never.
        self.whole_s = whole_s
        self.log = structlog.get_logger().bind(job=job_id)
        if not files:
            self.finished.set()

    def room_name(self, index: int) -> str:
        return f"{self.job_id}-{index}"

    def owns(self, t: Transcript) -> bool:
        return t.utterance.file is not None and t.utterance.file.job == self.job_id

    def deliver(self, t: Transcript) -> None:
        """A transcript of one of this job's segments (empty when nothing was said)."""
        assert t.utterance.file is not None
        index = t.utterance.file.index
        result = self.results[index]
        if t.utterance.file.whole:
            result.whole = t
        else:
            result.segments.append(t)
        if self._slots is not None:
            self._slots.release()
        if t.error is not None and result.error is None:
            result.error = f"{t.error} for the segment at {t.utterance.start_s:.1f} s"
        self._maybe_done(index)

    async def feed(self) -> None:
        """Decode and segment every file, ``files_in_flight`` at a time; pass the segments
        on (merged into chunks when ``chunk_s``), at most ``max_segments_in_flight`` at once."""
        slots = asyncio.Semaphore(self.files_in_flight)
        never = asyncio.Event()

        async def one(index: int, path: Path) -> None:
            result = self.results[index] = FileResult(path)
            try:
                opened, _ = open_source(path)
            except AudioFileError as exc:
                result.error = str(exc).removeprefix(f"{path}: ")
                self._expected[index] = 0
                self._maybe_done(index)
                return
            source = KeptAudio(opened, self.whole_s)
            async with slots:
                room = Room(
                    RoomState(self.room_name(index), language=self.language),
                    source,
                    cast("asyncio.Queue[Utterance | None]", self._local),  # it puts utterances only
                    self.vad_params,
                    speech_prob_factory=self.speech_prob_factory,
                    vad_executor=self.vad_executor,
                    id_prefix=f"{path.stem}",
                    batch_file=BatchFile(self.job_id, index, str(path)),
                )
                await room.run(never)
            result.audio_s = room.counters.frames * FRAME_MS / 1000
            self.vad_seconds += room.counters.vad_seconds
            if room.counters.last_error:
                result.error = room.counters.last_error.removeprefix(f"{path}: ")
            await self._local.put(_FileEnd(index, source.audio))  # after all of its segments

        async with asyncio.TaskGroup() as group:
            merger = group.create_task(self._merge(), name=f"{self.job_id}:merge")
            files = [group.create_task(one(index, path), name=f"file:{path}") for index, path in enumerate(self.files)]
            await asyncio.gather(*files)
            await self._local.put(None)
            await merger

    async def _merge(self) -> None:
        """Segments -> one utterance of a short file's whole audio (``whole_s``), or chunks of
        at most ``chunk_s`` of a file's timeline, or the segments as they are."""
        pending: dict[int, list[Utterance]] = {}
        held: dict[int, list[Utterance]] = {}  # a file's segments while it may be short
        long: set[int] = set()  # files with speech past whole_s
        sent: dict[int, int] = {}

        async def send(index: int, pieces: list[Utterance]) -> None:
            if not pieces:
                return
            item = pieces[0] if not self.chunk_s else chunk(pieces)
            await put(index, item)

        async def put(index: int, item: Utterance) -> None:
            sent[index] = sent.get(index, 0) + 1
            if self._slots is not None:
                await self._slots.acquire()
            await self.out.put(item)

        async def place(index: int, item: Utterance) -> None:
            waiting = pending.setdefault(index, [])
            if waiting and (not self.chunk_s or item.end_s - waiting[0].start_s > self.chunk_s):
                await send(index, waiting)
                waiting = pending[index] = []
            waiting.append(item)
            if not self.chunk_s:
                await send(index, pending.pop(index))

        while (item := await self._local.get()) is not None:
            if isinstance(item, _FileEnd):
                short = held.pop(item.index, [])
                long.discard(item.index)
                if short and item.audio is not None:
                    await put(item.index, whole(short, item.audio))
                if len(short) > 1 and item.audio is not None and self.chunk_s:
                    # A short file of several segments: its whole audio with timestamps too,
                    # sharing the whole decode's encoder pass (chunks.WHOLE_KEEPS decides).
                    await put(item.index, whole_check(short, item.audio))
                else:
                    # A long file (its silence made it so), or segments recognized as they
                    # are (no chunks for this recognizer): as without the rule.
                    for piece in short if item.audio is None or len(short) > 1 else []:
                        await place(item.index, piece)
                await send(item.index, pending.pop(item.index, []))
                self._expected[item.index] = sent.pop(item.index, 0)
                self._maybe_done(item.index)
                continue
            assert item.file is not None
            index = item.file.index
            if index not in long and item.end_s <= self.whole_s:
                held.setdefault(index, []).append(item)
                continue
            long.add(index)
            for piece in held.pop(index, []):  # past whole_s: a long file
                await place(index, piece)
            await place(index, item)

    def _maybe_done(self, index: int) -> None:
        expected = self._expected.get(index)
        result = self.results[index]
        received = len(result.segments) + (result.whole is not None)
        if expected is None or received < expected or index in self._done:
            return
        self._done.add(index)
        result.segments.sort(key=lambda t: t.utterance.start_s)
        if (weighed := result.settle_whole()) is not None:
            # A short file with several segments was recognized twice; which one stood.
            self.log.info("short file settled", file=str(result.path), **weighed)
        # Outputs are disk work: written on a worker thread, never on the event loop.
        written = asyncio.get_running_loop().run_in_executor(None, self._write, result)
        written.add_done_callback(lambda _: self._written())

    def _write(self, result: FileResult) -> None:
        try:
            self.on_file_done(result)
        except Exception:  # a failing writer loses that file's output, never the job
            self.log.exception("writing a file's transcript failed", file=str(result.path))

    def _written(self) -> None:
        self._writes_done += 1
        if self._writes_done == len(self.files):
            self.finished.set()
