"""One room: source -> 500 ms framing -> VAD utterance assembly -> the shared recognize queue."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import structlog

from pipeline.framing import Framer
from pipeline.health import BusyWatch
from pipeline.messages import SAMPLE_RATE, BatchFile, Frame, Utterance, Work
from pipeline.queues import DropOldestQueue
from pipeline.roomstate import RoomState
from pipeline.sources import AudioFileError, AudioSource, CaptureError, Reconnecting
from pipeline.vad import Segment, UtteranceAssembler, VadParams

# 20 frames = 10 s of audio may wait for the VAD before capture starts dropping frames.
FRAME_QUEUE_FRAMES = 20


@dataclass
class RoomCounters:
    frames: int = 0
    dropped_frames: int = 0
    utterances: int = 0
    discarded_short: int = 0
    errors: int = 0
    state: str = "starting"  # starting | listening | speaking | paused | unavailable | idle | failed
    last_error: str | None = None
    partials_skipped: int = 0
    speculations_skipped: int = 0  # the recognize queue was full: the endpoint is waited for
    vad_seconds: float = 0.0  # time in VAD calls (on the VAD thread)


# How far behind the wall clock pushed audio may fall (network jitter) before its times follow
# its arrival (Room._follow_arrival).
ARRIVAL_SLACK_S = 1.0


class Room:
    """Runs one room's capture and VAD; sends utterances to ``out``.

    It is the graph's source, not a stage: many rooms share the one utterance queue, so a
    room ending puts nothing in it (the App puts the end marker once every room is done).
    Inside, capture and VAD are two tasks joined by a frame queue that ends with ``None``.
    A failing source (file gone, device missing) is logged and leaves this room idle; it
    never stops the other rooms or the daemon.
    """

    def __init__(
        self,
        state: RoomState,
        source: AudioSource,
        out: asyncio.Queue[Utterance | None],
        vad_params: VadParams,
        *,
        speech_prob_factory: Callable[[], Callable[[np.ndarray], float]],
        vad_executor: Executor,
        id_prefix: str,
        batch_file: BatchFile | None = None,
        partial_interval_ms: int = 0,
        on_state: Callable[[Room], None] | None = None,
        watch: BusyWatch | None = None,
    ) -> None:
        self.state = state
        self.name = state.name
        self.source = source
        self.vad_params = vad_params
        self.speech_prob_factory = speech_prob_factory
        self.vad_executor = vad_executor
        self.out = out
        self.id_prefix = id_prefix
        self.batch_file = batch_file
        # 0: no partials. Otherwise every this many ms of speech, the audio so far goes to
        # the recognizer for an interim result.
        self.partial_interval = partial_interval_ms * SAMPLE_RATE // 1000
        self._partial_at = 0
        self._partial_start = -1
        self.on_state = on_state  # called when the state changes (listening, speaking, paused, idle)
        self.counters = RoomCounters()
        self.watch = watch or BusyWatch()  # the VAD calls, for the watchdog
        # Set at the first chunk, or when the source fails or ends: the room is up either way.
        self.started = asyncio.Event()
        self.log = structlog.get_logger().bind(room=self.name)
        self._count = 0
        # Live sources that come and go: while gone the room is "unavailable".
        self.unavailable = False
        if isinstance(source, Reconnecting):
            source.on_change = self._availability
        self._framer = Framer()
        self._wall0 = time.time()  # wall-clock time of stream offset 0 (moved on after a gap)
        self._frames: asyncio.Queue[Frame | None]  # None: the source ended (why: _end_reason)
        self._end_reason = "end_of_stream"
        if source.realtime:
            self._frames = DropOldestQueue(FRAME_QUEUE_FRAMES)
        else:
            self._frames = asyncio.Queue(FRAME_QUEUE_FRAMES)

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._capture(stop), name=f"capture:{self.name}")
            group.create_task(self._vad(), name=f"vad:{self.name}")

    async def _put(self, item: Frame | None) -> None:
        if isinstance(self._frames, DropOldestQueue) and isinstance(item, Frame):
            self._put_live(item)
        else:
            await self._frames.put(item)

    def _put_live(self, frame: Frame) -> None:
        """A real-time source's frame: never waits; the oldest goes when the VAD is behind."""
        assert isinstance(self._frames, DropOldestQueue)
        if not self._frames.put_dropping_oldest(frame):
            self.counters.dropped_frames = self._frames.dropped  # the queue keeps the count
            self.log.warning("frame dropped: VAD behind capture", dropped=self.counters.dropped_frames)

    def _availability(self, available: bool, reason: str | None) -> None:
        """From a Reconnecting source, on the event loop: the audio is gone, or back."""
        source = self.source
        assert isinstance(source, Reconnecting)
        if not available:
            self.unavailable = True
            self.counters.errors += 1
            self.counters.last_error = reason
            self.started.set()  # the room is up, waiting for its device
            self.log.warning("capture unavailable", reason=reason, losses=source.losses, reopening="with backoff")
            self._set_state("unavailable")
            # Silence after the last audio, so that speech in progress ends as an utterance
            # now rather than being glued to whatever comes when the device is back.
            gap = np.zeros((self.vad_params.hangover_ms + 500) * SAMPLE_RATE // 1000, np.float32)
            for offset, samples in self._framer.push(gap):
                self._put_live(self._frame(offset, samples))  # Reconnecting sources are live
            return
        self.unavailable = False
        # Stream offsets go on where they were; wall-clock times start again from now.
        self._wall0 = time.time() - self._framer.offset / SAMPLE_RATE
        recovered = round(source.recoveries[-1], 2) if source.recoveries else None
        self.log.info("capture available", source=source.description, after_s=recovered)
        self._set_state("listening")

    async def _capture(self, stop: asyncio.Event) -> None:
        framer = self._framer
        self._wall0 = time.time()
        self._set_state("listening")
        self.log.info("room listening", source=self.source.description)
        reason = "end_of_stream"
        try:
            # Closed here when capture stops early (an error, a cancel), not by the garbage
            # collector: a source may hold a subprocess to reap.
            async with contextlib.aclosing(self.source.chunks(stop)) as chunks:
                async for chunk in chunks:
                    self.started.set()  # the device is open and delivering
                    if getattr(self.source, "intermittent", False):  # PushSource
                        self._follow_arrival(len(chunk))
                    for offset, samples in framer.push(chunk):
                        await self._put(self._frame(offset, samples))
            for offset, samples in framer.flush():
                await self._put(self._frame(offset, samples))
            if stop.is_set():
                reason = "shutdown"
        except (AudioFileError, CaptureError, OSError) as exc:
            reason = "error"
            self.counters.errors += 1
            self.counters.last_error = str(exc)
            self.log.error("room source failed", error=str(exc))
        self.started.set()
        self._end_reason = reason
        await self._frames.put(None)

    def _follow_arrival(self, samples: int) -> None:
        """Audio sent to us (Hermes, Wyoming, a browser) comes when its sender sends it: a
        satellite that starts late or pauses would leave the stream's clock behind the wall
        clock. When a chunk arrives more than ARRIVAL_SLACK_S later than its stream time, its
        end is placed at its arrival."""
        end = self._framer.offset + samples
        if time.time() - (self._wall0 + end / SAMPLE_RATE) > ARRIVAL_SLACK_S:
            self._wall0 = time.time() - end / SAMPLE_RATE

    def _frame(self, offset: int, samples: np.ndarray) -> Frame:
        self.counters.frames += 1
        return Frame(self.name, samples, offset, self._wall0 + offset / SAMPLE_RATE, time.monotonic())

    async def _vad(self) -> None:
        loop = asyncio.get_running_loop()
        speech_prob = await loop.run_in_executor(self.vad_executor, self.speech_prob_factory)
        params = self.vad_params
        if not self.source.realtime or self.batch_file is not None:
            # Read faster than real time, a file's endpoint comes within the same block.
            params = dataclasses.replace(params, speculate_ms=0)
        assembler = UtteranceAssembler(params, speech_prob)
        wall0: float | None = None
        ended = False
        while True:
            item = None if ended else await self._frames.get()
            if item is not None and not self.source.realtime:
                # A file read faster than real time: take every frame already waiting, so the
                # VAD classifies up to 10 s in one call (several times faster than 500 ms).
                item, ended = self._coalesce(item)
            if item is None:
                reason = self._end_reason
                segments = assembler.flush(reason)
                await self._emit(segments, wall0 or time.time())
                self._heard(segments, None, math.inf, wall0 or time.time())  # nothing more comes
                self.counters.discarded_short = assembler.discarded
                self._set_state("failed" if reason == "error" else "idle")
                self.log.info("room idle", reason=reason, utterances=self.counters.utterances)
                return
            # Each frame says where offset 0 lies in wall-clock time (a live source that was
            # gone for a while moves it on).
            wall0 = item.wall - item.offset / SAMPLE_RATE
            # Paused: the VAD hears silence, so speech in progress ends as usual and stream
            # offsets (and so wall times) stay right; the audio itself is not used.
            samples = np.zeros_like(item.samples) if self.state.paused else item.samples
            with self.watch.busy(f"vad:{self.name}"):
                segments = await loop.run_in_executor(self.vad_executor, self._timed_push, assembler, samples)
            await self._emit(segments, wall0)
            self._heard(segments, assembler.pending_start, assembler.settled, wall0)
            if self.partial_interval:
                self._maybe_partial(assembler, wall0)
            if self.unavailable:
                pass  # stays "unavailable" until the source is back
            elif self.state.paused:
                self._set_state("paused")
            elif assembler.in_speech:
                if self.counters.state != "speaking":
                    self.log.info("speech started", at_s=round(assembler.position / SAMPLE_RATE, 2))
                self._set_state("speaking")
            else:
                self._set_state("listening")
            self.counters.discarded_short = assembler.discarded

    def _heard(self, segments: list[Segment], pending: int | None, settled: float, wall0: float) -> None:
        """Tell the stitcher what was heard: the pieces cut, the speech under way, how far."""
        starts = [wall0 + seg.start / SAMPLE_RATE for seg in segments if not seg.speculative]
        speaking = None if pending is None else wall0 + pending / SAMPLE_RATE
        self.state.heard(starts, speaking, wall0 + settled / SAMPLE_RATE)

    def _timed_push(self, assembler: UtteranceAssembler, samples: np.ndarray) -> list[Segment]:
        started = time.perf_counter()
        try:
            return assembler.push(samples)
        finally:
            self.counters.vad_seconds += time.perf_counter() - started

    def _coalesce(self, first: Frame) -> tuple[Frame, bool]:
        """``first`` and the frames queued behind it as one frame, and whether the end of
        the stream was queued too."""
        parts = [first.samples]
        ended = False
        while not self._frames.empty():
            nxt = self._frames.get_nowait()
            if nxt is None:
                ended = True
                break
            parts.append(nxt.samples)
        if len(parts) == 1:
            return first, ended
        return Frame(first.room, np.concatenate(parts), first.offset, first.wall, first.captured_at), ended

    def _set_state(self, state: str) -> None:
        if state != self.counters.state:
            self.counters.state = state
            if self.on_state is not None:
                self.on_state(self)

    def _maybe_partial(self, assembler: UtteranceAssembler, wall0: float) -> None:
        current = assembler.in_progress()
        if current is None:
            self._partial_at = 0
            return
        start, audio = current
        if start != self._partial_start:  # a new utterance (or a long one was cut)
            self._partial_start, self._partial_at = start, 0
        # The first partial as soon as the speech is confirmed (min_speech_ms of it, with the
        # pre-roll), then one per partial_interval_ms of audio.
        if self._partial_at and len(audio) - self._partial_at < self.partial_interval:
            return
        self._partial_at = len(audio)
        utt = Utterance(
            room=self.name,
            id=f"{self.id_prefix}-{self._count + 1:06d}",  # the id the finished utterance will get
            audio=audio,
            start_s=start / SAMPLE_RATE,
            end_s=(start + len(audio)) / SAMPLE_RATE,
            start_wall=wall0 + start / SAMPLE_RATE,
            end_wall=wall0 + (start + len(audio)) / SAMPLE_RATE,
            reason="partial",
            decided_at=time.monotonic(),
            language=self.state.language,
            kind=Work.PARTIAL,
            file=self.batch_file,
        )
        try:
            self.out.put_nowait(utt)
        except asyncio.QueueFull:
            self.counters.partials_skipped += 1  # the recognizer is behind: never wait for a partial

    async def _emit(self, segments: list[Segment], wall0: float) -> None:
        for seg in segments:
            if seg.speculative:
                self._speculate(seg, wall0)
                continue
            self._count += 1
            self.counters.utterances += 1
            utt = self._utterance(seg, wall0, f"{self.id_prefix}-{self._count:06d}")
            self.log.info(
                "utterance cut",
                utterance_id=utt.id,
                start_s=round(utt.start_s, 3),
                duration_s=round(utt.duration_s, 3),
                reason=seg.reason,
            )
            await self.out.put(utt)

    def _utterance(self, seg: Segment, wall0: float, utterance_id: str) -> Utterance:
        return Utterance(
            room=self.name,
            id=utterance_id,
            audio=seg.audio,
            start_s=seg.start / SAMPLE_RATE,
            end_s=seg.end / SAMPLE_RATE,
            start_wall=wall0 + seg.start / SAMPLE_RATE,
            end_wall=wall0 + seg.end / SAMPLE_RATE,
            reason=seg.reason,
            decided_at=time.monotonic(),
            language=self.state.language,
            kind=Work.SPECULATIVE if seg.speculative else Work.LIVE if self.batch_file is None else Work.BATCH,
            file=self.batch_file,
            speculation_end_s=seg.speculated_end / SAMPLE_RATE if seg.speculated_end >= 0 else None,
        )

    def _speculate(self, seg: Segment, wall0: float) -> None:
        """The utterance so far, to be recognized before its endpoint (under the id the
        finished one will get); skipped, never waited for, when the recognizer is behind."""
        try:
            self.out.put_nowait(self._utterance(seg, wall0, f"{self.id_prefix}-{self._count + 1:06d}"))
        except asyncio.QueueFull:
            self.counters.speculations_skipped += 1
