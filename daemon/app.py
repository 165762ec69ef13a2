"""Builds the stage graph, starts it, and stops it in reverse order.

    rooms (capture -> framing -> VAD)  --utterances-->  recognize  --transcripts-->  publish -> MQTT

This is the only module that knows every stage. Shutdown (SIGTERM/SIGINT): stop capture,
let each room finish the utterance it holds, recognize and publish everything already cut,
publish ``stopped``, exit 0 -- all within ``daemon.drain_timeout_s``. A second SIGINT
exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from daemon import hermes
from daemon.commands import CommandError
from daemon.config import (
    Config,
    ConfigError,
    FileSourceSettings,
    HermesSourceSettings,
    MicSourceSettings,
    StreamSourceSettings,
    changed_keys,
    load_config,
    resolve_path,
)
from daemon.control import Controller
from daemon.homeassistant import discovery_messages
from daemon.mqtt import Publisher
from daemon.notify import Notifier, watchdog_interval_s
from daemon.outbox import Outbox
from daemon.outputs import output_path, render, write_atomically
from daemon.recording import UtteranceRecorder
from daemon.stats import gpu_memory, percentiles, process_usage, serve_metrics
from pipeline.batch import BatchJob, FileResult, chunk_seconds, expand_paths
from pipeline.health import Progress
from pipeline.messages import Transcript, Utterance, iso_utc, utterance_record
from pipeline.partials import PartialTracker
from pipeline.recognize import RecognizeSettings, RecognizeStage, RoomContext
from pipeline.room import Room
from pipeline.sources import AudioSource, Backoff, FileSource, MicSource, PushSource, Reconnecting, StreamSource
from pipeline.stitch import StitchStage
from pipeline.text.dictionary import DictionaryError
from pipeline.text.processor import TextProcessor
from pipeline.text.stage import TextStage

if TYPE_CHECKING:
    from models.recognizer import Recognition, Recognizer

# Utterances waiting for the recognizer. When full, rooms wait (backpressure), and a
# real-time room's capture then drops its oldest frames and counts them.
UTTERANCE_QUEUE_SIZE = 64
# READY=1 waits this long at most for the first broker attempt and the rooms' first audio.
STARTUP_WAIT_S = 10.0
# How often the service task looks at progress, updates STATUS= and the stats snapshot.
SERVICE_TICK_S = 5.0
TRANSCRIPT_QUEUE_SIZE = 64
EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_STARTUP_FAILURE = 3
EXIT_FORCED = 130


class StartupError(Exception):
    """The daemon could not start (model, device); the message says why."""


def run_id() -> str:
    """A short token of the start time, so utterance ids stay unique across restarts."""
    value, digits = int(time.time()), "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, rem = divmod(value, 36)
        out = digits[rem] + out
    return out


def load_recognizer_in_thread(config: Config) -> Recognizer:
    """Runs on the model thread: allocator and thread settings first, then the model."""
    from models.memory import configure_cuda_allocator

    r = config.recognizer
    configure_cuda_allocator(r.cuda_alloc_conf)  # before anything initializes CUDA

    import torch

    from models.ct2 import ModelFormatError
    from models.loading import ModelNotFoundError
    from models.recognizer import DecodingOptions, load_recognizer

    if r.threads:
        torch.set_num_threads(r.threads)
    elif r.device.startswith("cuda") or (r.device == "auto" and torch.cuda.is_available()):
        # With the model on a GPU, torch's CPU threads serve the VAD's small convolutions:
        # a team of one per call. Teams of all cores (the default) spin between calls and
        # starve the model thread, which must launch each decoding step's kernels.
        torch.set_num_threads(1)
    options = DecodingOptions(
        beam_size=r.beam_size,
        temperatures=tuple(r.temperatures),
        compression_ratio_threshold=r.compression_ratio_threshold,
        logprob_threshold=r.logprob_threshold,
        no_speech_threshold=r.no_speech_threshold,
        max_prompt_tokens=r.max_prompt_tokens,
        hotword_weight=r.hotword_weight,
    )
    try:
        return load_recognizer(r.model, r.device, r.dtype, options, r.batch_size, r.quantize)
    except (ModelNotFoundError, ModelFormatError, RuntimeError, ValueError) as exc:
        raise StartupError(str(exc)) from exc


def recognize_settings(config: Config) -> RecognizeSettings:
    r = config.recognizer
    return RecognizeSettings(
        max_batch=r.max_batch,
        max_wait_ms=r.max_wait_ms,
        prompt_previous=r.prompt_previous,
        prompt_max_gap_s=r.prompt_max_gap_s,
        hotwords=tuple(r.hotwords),
        idle_release_s=r.idle_release_s,
        joint_max_gap_s=config.stitch.max_gap_ms / 1000 if config.stitch.enabled and config.stitch.joint_decode else 0,
    )


def room_contexts(config: Config) -> dict[str, RoomContext]:
    return {r.name: RoomContext(tuple(r.hotwords), r.prompt_previous, r.stitch) for r in config.rooms}


def silero_factory() -> Callable[[np.ndarray], float]:
    from models.vad import SileroVad

    return SileroVad()


def build_source(
    settings: FileSourceSettings | MicSourceSettings | StreamSourceSettings | HermesSourceSettings,
    config_path: Path,
    room: str,
) -> AudioSource:
    if isinstance(settings, FileSourceSettings):
        return FileSource(resolve_path(settings.path, config_path), settings.realtime, settings.loop)
    if isinstance(settings, HermesSourceSettings):
        return PushSource(f"hermes {hermes.audio_frame_topic(settings.site_id or room)}")
    # Live sources that can go away and come back are reopened with backoff.
    if isinstance(settings, StreamSourceSettings):
        return Reconnecting(StreamSource(settings.url, settings.stall_s), Backoff(max_s=settings.retry_max_s))
    return Reconnecting(MicSource(settings.device), Backoff(max_s=settings.retry_max_s))


def resolve_batch_path(allowed_dir: str, path_text: str) -> tuple[Path, Path]:
    """(the allowed folder, the requested path), both with symbolic links resolved, so that
    neither ".." nor a link leads outside; CommandError when it does or nothing is there."""
    allowed = Path(allowed_dir).resolve()
    path = Path(path_text)
    path = (path if path.is_absolute() else allowed / path).resolve()
    if not path.is_relative_to(allowed):
        raise CommandError(f"{path_text!r} is outside batch.allowed_dir ({allowed})", "transcribe")
    if not path.exists():
        raise CommandError(f"{path_text!r}: no such file or folder", "transcribe")
    return allowed, path


def site_id(config: Config, room: str) -> str:
    """The Hermes siteId of a room: its Hermes source's, else the room's name."""
    for r in config.rooms:
        if r.name == room and isinstance(r.source, HermesSourceSettings) and r.source.site_id:
            return r.source.site_id
    return room


class App:
    def __init__(self, config: Config, config_path: Path) -> None:
        self.config = config
        self.config_path = config_path
        self.log = structlog.get_logger()
        self.stop = asyncio.Event()
        self.rooms_idle = asyncio.Event()
        self.notifier = Notifier()
        self.progress = Progress()
        self.started_at = time.monotonic()
        self.last_snapshot: dict[str, Any] = {}
        self.stalled: dict[str, float] = {}
        # One thread owns the recognizer (its threading contract); another runs the VADs so
        # that a long model call never delays voice detection.
        self.model_executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.vad_executor = ThreadPoolExecutor(1, thread_name_prefix="vad")
        self.utterances: asyncio.Queue[Utterance | None] = asyncio.Queue(UTTERANCE_QUEUE_SIZE)
        self.recognized: asyncio.Queue[Transcript | None] = asyncio.Queue(TRANSCRIPT_QUEUE_SIZE)
        self.transcripts: asyncio.Queue[Transcript | None] = asyncio.Queue(TRANSCRIPT_QUEUE_SIZE)
        self.texts: asyncio.Queue[Transcript | None] = asyncio.Queue(TRANSCRIPT_QUEUE_SIZE)
        self.text = TextStage(
            TextProcessor(config.text.settings(config_path)), self.recognized, self.texts, hotwords=self.hotwords
        )
        m = config.mqtt
        outbox = Outbox(
            config.daemon.state_path(config_path) / "outbox.sqlite3", m.outbox_max_entries, m.outbox_max_age_s
        )
        self.publisher = Publisher(config.mqtt, outbox, config_path)
        prefix = run_id()
        self.rooms = [
            Room(
                name=r.name,
                source=build_source(r.source, config_path, r.name),
                vad_params=config.room_vad(r).params(),
                speech_prob_factory=silero_factory,
                vad_executor=self.vad_executor,
                out=self.utterances,
                id_prefix=f"{r.name}-{prefix}",
                language=r.language,
                partial_interval_ms=r.partial_interval_ms if r.partials else 0,
                on_state=self.publish_state,
                progress=self.progress,
            )
            for r in config.rooms
            if r.enabled
        ]
        self.partials = PartialTracker()
        self.recorder: UtteranceRecorder | None = None
        if config.debug.record:
            state = config.daemon.state_path(config_path)
            self.recorder = UtteranceRecorder(config.debug.record_path(config_path, state), config.debug.record_max)
        by_name = {room.name: room for room in self.rooms}
        self.stitch = StitchStage(
            config.stitch.settings(),
            self.texts,
            self.transcripts,
            speech_started_at=lambda name: by_name[name].counters.speech_started_at if name in by_name else None,
            rooms_enabled={r.name: r.stitch for r in config.rooms},
        )
        self.rooms_by_name = by_name
        self.global_hotwords: tuple[str, ...] = tuple(config.recognizer.hotwords)
        self.room_hotwords: dict[str, tuple[str, ...]] = {r.name: tuple(r.hotwords) for r in config.rooms}
        self.recognizer: Recognizer | None = None
        self.recognize: RecognizeStage | None = None
        self.control = Controller(self)
        self.publisher.subscribe(self.publisher.topic("set"), self.control.on_message)
        self.publisher.subscribe(self.publisher.topic("+", "set"), self.control.on_message)
        self.bad_audio_frames = 0
        for room in self.rooms:
            if isinstance(room.source, PushSource):
                topic = hermes.audio_frame_topic(site_id(config, room.name))
                self.publisher.subscribe(topic, self._audio_frame_handler(room.name, room.source), qos=0)
        if config.homeassistant.enabled:
            self.publisher.on_connect.append(self.announce)
            self.publisher.subscribe(f"{config.homeassistant.discovery_prefix}/status", self._homeassistant_status)
        self._signals = 0
        self._background: set[asyncio.Task[None]] = set()
        self.jobs: dict[str, BatchJob] = {}
        self._job_count = 0

    def announce(self) -> None:
        """Home Assistant discovery configs, retained (daemon/homeassistant.py)."""
        ha = self.config.homeassistant
        rooms = [room.name for room in self.rooms]
        messages = discovery_messages(
            ha.discovery_prefix, self.publisher.prefix, self.publisher.client_id, rooms, self.model_name
        )
        for topic, payload in messages:
            self.publisher.submit_json(topic, payload, qos=1, retain=True, replace=True)
        self.log.info("home assistant discovery announced", entities=len(messages))

    def _homeassistant_status(self, topic: str, payload: bytes) -> None:
        if payload.strip() == b"online":  # Home Assistant (re)started: it forgot non-retained configs
            self.announce()

    def _audio_frame_handler(self, room: str, source: PushSource) -> Callable[[str, bytes], None]:
        def handle(topic: str, payload: bytes) -> None:
            try:
                samples, rate = hermes.decode_audio_frame(payload)
            except ValueError as exc:
                self.bad_audio_frames += 1
                if self.bad_audio_frames == 1 or self.bad_audio_frames % 1000 == 0:
                    self.log.warning(
                        "audio frame ignored", room=room, topic=topic, error=str(exc), count=self.bad_audio_frames
                    )
                return
            source.push(samples, rate)

        return handle

    def hotwords(self, room: str) -> tuple[str, ...]:
        """The global hotwords and the room's, once each (for decoding and for correction);
        both can be replaced at run time by the ``hotwords`` command."""
        return tuple(dict.fromkeys((*self.global_hotwords, *self.room_hotwords.get(room, ()))))

    def publish_state(self, room: Room) -> None:
        """``<prefix>/<room>/state``, retained: listening, speaking, paused. Only the latest
        state waits for the broker; older ones not yet sent are replaced."""
        s = room.counters.state
        state: dict[str, object] = {
            "listening": s in ("listening", "speaking"),
            "speaking": s == "speaking",
            "paused": room.paused,
            "state": s,
        }
        if s in ("unavailable", "failed"):
            state["error"] = room.counters.last_error
        self.publisher.submit_json(self.publisher.topic(room.name, "state"), state, qos=1, retain=True, replace=True)

    async def release_model_memory(self) -> None:
        if self.recognizer is not None:
            await asyncio.get_running_loop().run_in_executor(self.model_executor, self.recognizer.release_memory)

    def status(self) -> dict[str, Any]:
        """What the ``status`` command reports."""
        r = self.recognizer
        return {
            "model": r.name if r else None,
            "device": r.device if r else None,
            "dtype": r.dtype if r else None,
            "queues": self.queue_depths(),
            "rooms": {
                room.name: {**dataclasses.asdict(room.counters), "paused": room.paused, "language": room.language}
                for room in self.rooms
            },
            "recognize": (
                {k: v for k, v in dataclasses.asdict(self.recognize.counters).items() if k != "batch_sizes"}
                if self.recognize
                else None
            ),
            "published": self.publisher.counters.published,
            "dropped": self.publisher.counters.dropped,
            "stitched": self.stitch.joined,
            "hotwords": {
                "global": list(self.global_hotwords),
                "rooms": {name: list(words) for name, words in self.room_hotwords.items()},
            },
            "commands": {"handled": self.control.handled, "refused": self.control.rejected},
            "jobs": len(self.jobs),
        }

    @property
    def multilingual(self) -> bool:
        return bool(getattr(self.recognizer, "multilingual", False))

    @property
    def model_name(self) -> str:
        return self.recognizer.name if self.recognizer else self.config.recognizer.model

    def queue_depths(self) -> dict[str, int]:
        return {
            "utterances": self.utterances.qsize(),
            # Taken from the queue, waiting for a batch (priorities apply to all of them).
            "recognize_waiting": self.recognize.waiting if self.recognize else 0,
            "recognized": self.recognized.qsize(),
            "text": self.texts.qsize(),
            "publish": self.transcripts.qsize(),
            "mqtt_pending": len(self.publisher.pending),
        }

    def status_line(self) -> str:
        """systemd's STATUS=: what `systemctl status` shows."""
        utterances = self.recognize.counters.utterances if self.recognize else 0
        depths = self.queue_depths()
        queued = sum(depths.values()) - depths["mqtt_pending"]  # the pipeline's own queues
        broker = "connected" if self.publisher.connected.is_set() else "broker unreachable"
        stalled = f", STALLED: {', '.join(self.stalled)}" if self.stalled else ""
        rooms = f"{len(self.rooms)} room" + ("s" if len(self.rooms) != 1 else "")
        return f"{rooms}, {utterances} utterances, queue {queued}, MQTT {broker}{stalled}"

    def snapshot(self) -> dict[str, Any]:
        """The stats payload (docs/mqtt.md, schema stats)."""
        rec = self.recognize
        counters = rec.counters if rec else None
        batch_sizes = list(counters.batch_sizes) if counters else []
        rooms = {
            room.name: {
                "state": room.counters.state,
                "utterances": room.counters.utterances,
                "dropped_frames": room.counters.dropped_frames,
                "source_losses": room.source.losses if isinstance(room.source, Reconnecting) else 0,
                "overflows": int(getattr(getattr(room.source, "inner", room.source), "overflows", 0)),
            }
            for room in self.rooms
        }
        return {
            "time": iso_utc(time.time()),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "utterances": counters.utterances if counters else 0,
            "audio_seconds": round(counters.audio_seconds, 1) if counters else 0.0,
            "dropped_frames": sum(r["dropped_frames"] for r in rooms.values()),
            "published": self.publisher.counters.published,
            "dropped": self.publisher.counters.dropped,
            "outbox": len(self.publisher.outbox) if self.publisher.outbox is not None else 0,
            "mqtt_connected": int(self.publisher.connected.is_set()),
            "queues": self.queue_depths(),
            "recognize_ms": percentiles(rec.latencies if rec else []),
            "batch_size": {
                "mean": round(sum(batch_sizes) / len(batch_sizes), 2) if batch_sizes else None,
                "max": max(batch_sizes, default=None),
            },
            "stalled": sorted(self.stalled),
            "rooms": rooms,
            **process_usage(),
            "gpu": gpu_memory(),
        }

    async def _service(self) -> None:
        """READY=1 once the model is loaded, the broker tried and capture started; then the
        watchdog (only while nothing is stalled), STATUS= and the stats."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_WAIT_S):
                await self.publisher.attempted.wait()
                await asyncio.gather(*(room.started.wait() for room in self.rooms))
        waiting = [room.name for room in self.rooms if not room.started.is_set()]
        if waiting:
            self.log.warning("rooms still waiting for audio at startup", rooms=waiting)
        self.notifier.ready(self.status_line())
        self.log.info("ready", notify=self.notifier.enabled, mqtt_connected=self.publisher.connected.is_set())
        watchdog = watchdog_interval_s()
        deadline = self.config.daemon.stall_timeout_s
        stats_every = self.config.daemon.stats_interval_s
        tick = min(watchdog or SERVICE_TICK_S, SERVICE_TICK_S)
        stop_metrics = None
        if self.config.daemon.metrics_port:
            stop_metrics = serve_metrics(self.config.daemon.metrics_port, lambda: self.last_snapshot)
        next_stats = time.monotonic() + stats_every
        last_status = ""
        try:
            self.last_snapshot = self.snapshot()
            while True:
                stalled = self.progress.stuck(deadline)
                if set(stalled) - set(self.stalled):  # something newly stalled
                    self.log.error(
                        "pipeline stalled: watchdog pings stopped",
                        stalled={k: round(v, 1) for k, v in stalled.items()},
                        deadline_s=deadline,
                    )
                elif self.stalled and not stalled:
                    self.log.warning("pipeline moving again: watchdog pings resumed")
                self.stalled = stalled
                if watchdog is not None and not stalled:
                    self.notifier.watchdog()
                if (line := self.status_line()) != last_status:
                    self.notifier.status(line)
                    last_status = line
                self.last_snapshot = self.snapshot()
                if stats_every and time.monotonic() >= next_stats:
                    next_stats += stats_every
                    self.publisher.submit_json(self.publisher.topic("stats"), self.last_snapshot, qos=0)
                await asyncio.sleep(tick)
        finally:
            if stop_metrics is not None:
                stop_metrics()

    async def run_batch(self, path_text: str, recursive: bool) -> dict[str, Any]:
        """The ``transcribe`` command: a file or folder below ``batch.allowed_dir`` through the
        shared recognizer behind the live rooms; returns when every file is done."""
        b = self.config.batch
        if not b.allowed_dir:
            raise CommandError("batch jobs are off: set batch.allowed_dir", "transcribe")
        allowed, path = resolve_batch_path(b.allowed_dir, path_text)
        out_dir = (
            Path(b.output_dir) if b.output_dir else self.config.daemon.state_path(self.config_path) / "transcripts"
        )
        files = [p for p, _ in expand_paths([path], recursive)]
        outputs: list[str] = []
        failed: dict[str, str] = {}

        def file_done(result: FileResult) -> None:
            if result.error is not None:
                failed[str(result.path)] = result.error
                return
            for fmt in b.formats:
                target = output_path(result.path, allowed, out_dir, fmt)
                write_atomically(target, render(result, fmt))
                outputs.append(str(target))

        self._job_count += 1
        job_id = f"job{self._job_count}"
        job = BatchJob(
            job_id,
            files,
            self.utterances,
            self.config.vad.params(),
            silero_factory,
            self.vad_executor,
            file_done,
            files_in_flight=b.files_in_flight,
            max_segments_in_flight=self.config.recognizer.max_batch,
            chunk_s=chunk_seconds(self.recognizer.device) if self.recognizer is not None else 0.0,
        )
        self.jobs[job_id] = job
        self.log.info("batch job started", job=job_id, files=len(files), path=str(path))
        started = time.monotonic()
        try:
            await job.feed()
            await job.finished.wait()
        finally:
            del self.jobs[job_id]
        wall_s = round(time.monotonic() - started, 2)
        self.log.info("batch job done", job=job_id, files=len(files), failed=len(failed), wall_s=wall_s)
        return {"job": job_id, "files": len(files), "outputs": outputs, "failed": failed, "wall_s": wall_s}

    async def reload_config(self) -> dict[str, Any]:
        """The ``reload`` command and SIGHUP: the dictionary and the hotwords now; any other
        change is reported and waits for a restart. Raises ConfigError/DictionaryError and
        leaves everything as it was."""
        config = load_config(self.config_path)
        entries = self.text.reload_dictionary()["entries"]
        self.global_hotwords = tuple(config.recognizer.hotwords)
        self.room_hotwords = {r.name: tuple(r.hotwords) for r in config.rooms}
        pending = changed_keys(self.config, config)
        if pending:
            self.log.warning("config changes need a restart", keys=pending)
        self.log.info("config reloaded", dictionary_entries=entries, hotwords=list(self.global_hotwords))
        return {"dictionary_entries": entries, "hotwords": list(self.global_hotwords), "needs_restart": pending}

    def _on_hangup(self) -> None:
        async def reload() -> None:
            self.notifier.reloading()
            try:
                await self.reload_config()
            except (ConfigError, DictionaryError) as exc:
                self.log.error("reload failed; keeping the running config", error=str(exc))
            self.notifier.ready(self.status_line())

        task = asyncio.get_running_loop().create_task(reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.log.info("shutdown requested", reason=reason)
            self.stop.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1 and signum == signal.SIGINT:
            self.log.warning("second interrupt: exiting now without draining")
            os._exit(EXIT_FORCED)
        self.request_stop(signal.Signals(signum).name)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        restored = self.publisher.restore()
        if restored:
            self.log.warning("outbox: publishing utterances from before this start", count=restored)
        self.log.info("loading model", model=self.config.recognizer.model)
        started = time.monotonic()
        recognizer = await loop.run_in_executor(self.model_executor, load_recognizer_in_thread, self.config)
        self.log.info(
            "model loaded",
            model=recognizer.name,
            device=recognizer.device,
            dtype=recognizer.dtype,
            load_s=round(time.monotonic() - started, 2),
        )
        self.recognizer = recognizer
        recognize = self.recognize = RecognizeStage(
            recognizer,
            self.model_executor,
            self.utterances,
            self.recognized,
            recognize_settings(self.config),
            room_contexts(self.config),
            on_partial=self._publish_partial,
            hotwords_for=self.hotwords,
            progress=self.progress,
        )

        try:
            async with asyncio.TaskGroup() as group:
                mqtt_task = group.create_task(self.publisher.run(), name="mqtt")
                recognize_task = group.create_task(recognize.run(), name="recognize")
                text_task = group.create_task(self.text.run(), name="text")
                stitch_task = group.create_task(self.stitch.run(), name="stitch")
                publish_task = group.create_task(self._publish_stage(), name="publish")
                room_tasks = [group.create_task(self._run_room(room), name=f"room:{room.name}") for room in self.rooms]
                group.create_task(self._watch_rooms(room_tasks), name="rooms-idle")
                service = group.create_task(self._service(), name="service")
                await self.stop.wait()
                self.notifier.stopping()
                service.cancel()
                await self._drain(room_tasks, [recognize_task, text_task, stitch_task, publish_task], mqtt_task)
        finally:
            self.model_executor.shutdown(wait=False, cancel_futures=True)
            self.vad_executor.shutdown(wait=False, cancel_futures=True)
        self.log.info("stopped", published=self.publisher.counters.published)
        return EXIT_OK

    async def _watch_rooms(self, room_tasks: list[asyncio.Task[None]]) -> None:
        if room_tasks:
            await asyncio.wait(room_tasks)
        self.rooms_idle.set()

    async def _run_room(self, room: Room) -> None:
        try:
            await room.run(self.stop)
        except Exception:
            # A bug in one room must not take the others down.
            room.counters.state = "failed"
            self.log.exception("room crashed", room=room.name)

    def _publish_partial(self, utt: Utterance, result: Recognition) -> None:
        """An interim result, QoS 0: written like a finished one, and its stable prefix."""
        try:
            text = self.text.processor(result.text, result.language, self.hotwords(utt.room))
        except Exception:
            text = result.text
        stable = self.partials.update(utt.room, utt.id, text)
        payload = {
            "id": utt.id,
            "room": utt.room,
            "text": text,
            "stable_text": stable,
            "final": False,
            "start": iso_utc(utt.start_wall),
            "duration_s": round(utt.end_s - utt.start_s, 3),
        }
        self.publisher.submit_json(self.publisher.topic(utt.room, "partial"), payload, qos=0, room=utt.room)

    async def _publish_stage(self) -> None:
        while (item := await self.transcripts.get()) is not None:
            if item.utterance.source is not None:  # a batch job's segment: to its job, not to MQTT
                for job in self.jobs.values():
                    if job.owns(item):
                        job.deliver(item)
                continue
            u = item.utterance
            record = utterance_record(item, published_at=time.monotonic())
            self.publisher.submit_json(
                self.publisher.topic(u.room, "utterance"),
                record,
                qos=1,
                utterance_id=u.id,
                room=u.room,
                decided_at=u.decided_at,
                # The one line per utterance that says everything (besides the text).
                summary={
                    "language": item.language,
                    "duration_s": record["duration_s"],
                    "recognize_ms": record["latency_ms"]["recognize"],
                    "parts": item.parts,
                    "chars": len(item.text),
                    "confidence": item.confidence,
                },
            )
            if self.config.hermes.enabled:
                captured = hermes.text_captured(record, site_id(self.config, u.room))
                self.publisher.submit_json(hermes.TEXT_CAPTURED, captured, qos=1, room=u.room)
            if self.recorder is not None:
                self._record(record, u.audio)

    def _record(self, record: dict[str, Any], audio: np.ndarray) -> None:
        """Debug recording, on a thread; a full disk or a bad folder is logged, nothing more."""
        recorder = self.recorder
        assert recorder is not None

        def done(task: asyncio.Future[Path]) -> None:
            if (exc := task.exception()) is not None:
                self.log.warning("debug recording failed", utterance_id=record["id"], error=str(exc))

        future = asyncio.get_running_loop().run_in_executor(None, recorder.save, record, audio)
        future.add_done_callback(done)

    async def _drain(
        self,
        room_tasks: list[asyncio.Task[None]],
        stage_tasks: list[asyncio.Task[None]],
        mqtt_task: asyncio.Task[None],
    ) -> None:
        timeout = self.config.daemon.drain_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*room_tasks)
                await self.utterances.put(None)
                for task in stage_tasks:  # each passes the end marker on to the next
                    await task
                await self.publisher.finish()
        except TimeoutError:
            queues = (self.utterances, self.recognized, self.texts, self.transcripts)
            queued = sum(q.qsize() for q in queues) + len(self.stitch.held)
            lost = queued + len(self.publisher.pending)
            self.log.error("shutdown drain timed out; giving up on what is left", timeout_s=timeout, lost=lost)
            for task in (*room_tasks, *stage_tasks, mqtt_task):
                task.cancel()
        await asyncio.gather(mqtt_task, return_exceptions=True)
