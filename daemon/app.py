"""The daemon's life: build in order, start, run until told to stop, stop in reverse order.

    rooms (capture -> framing -> VAD) --utterances--> recognize -> text -> stitch --> publish -> MQTT

``App`` only sequences; each part lives in its own module: the config mapped onto the
pipeline (wiring.py, which uses pipeline/graph.py), publishing (publish.py, mqtt.py),
commands (control.py), batch jobs (jobs.py), the service loop with watchdog and stats
(service.py, status.py), and the integrations (integrations/). Shutdown (SIGTERM/SIGINT):
stop capture, let each room finish the utterance it holds, recognize and publish everything
already cut, publish ``stopped``, exit 0, all within ``daemon.drain_timeout_s``. A second
SIGINT exits at once; SIGHUP reloads the dictionary and the hotwords.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daemon.config import Config
from daemon.config_file import ConfigError
from daemon.control import Controller, reload_config
from daemon.errors import EXIT_INTERRUPTED, EXIT_OK, StartupError
from daemon.integrations.hermes import HermesIngress
from daemon.integrations.homeassistant import Discovery
from daemon.integrations.http_api import HttpApi, read_token
from daemon.integrations.wyoming import WyomingServer
from daemon.jobs import BatchJobs
from daemon.journal import PieceJournal
from daemon.mqtt import Publisher
from daemon.notify import Notifier
from daemon.outbox import Outbox, OutboxError
from daemon.publish import Partials, PublishStage
from daemon.remote import RemoteRecognizer
from daemon.requests import Requests
from daemon.runtime import Runtime
from daemon.service import Service
from daemon.status import status, status_line
from daemon.wiring import build_rooms, check_languages, load_recognizer_in_thread, pipeline_from_config, room_states
from pipeline.messages import Transcript
from pipeline.room import Room
from pipeline.text.dictionary import DictionaryError

if TYPE_CHECKING:
    from models.api import Recognizer


class App:
    def __init__(self, config: Config, config_path: Path) -> None:
        self.log = structlog.get_logger()
        self.stop = asyncio.Event()
        self.rooms_idle = asyncio.Event()
        self.notifier = Notifier()
        self.rt = self._init_runtime(config, config_path)
        self.jobs = BatchJobs(self.rt)
        self.control = Controller(self.rt, self.jobs, self.status)
        self.hermes = HermesIngress(config, self.rt.publisher)
        if config.homeassistant.enabled:
            Discovery(config.homeassistant, self.rt.publisher, self.rt.states.names, lambda: self.rt.model_name)
        self.service = Service(self.rt, self.notifier, lambda: self.hermes.bad_frames)
        self.partials = Partials(self.rt)
        self.requests = Requests(self.rt)
        self.remote = (
            RemoteRecognizer(config.remote, self.rt.publisher, self.rt.watch) if config.remote.enabled else None
        )
        self.wyoming = WyomingServer(config.wyoming, self.rt, self.requests) if config.wyoming.enabled else None
        self.http = self._http_api(config, config_path)
        self.publish: PublishStage | None = None  # once the graph is built
        self._signals = 0
        self._replay: list[Transcript] = []  # the journal's pieces from before this start
        self._background: set[asyncio.Task[None]] = set()

    def _http_api(self, config: Config, config_path: Path) -> HttpApi | None:
        if not config.http.enabled:
            return None
        try:
            token = read_token(config.http, config_path)
        except OSError as exc:
            raise StartupError(f"http.token_file: {exc}") from None
        return HttpApi(config.http, self.rt, self.jobs, self.control, token)

    @staticmethod
    def _init_runtime(config: Config, config_path: Path) -> Runtime:
        m = config.mqtt
        try:
            outbox = Outbox(
                config.daemon.state_path(config_path) / "outbox.sqlite3", m.outbox_max_entries, m.outbox_max_age_s
            )
        except OutboxError as exc:
            raise StartupError(str(exc)) from None
        return Runtime(config, config_path, Publisher(m, outbox, config_path), room_states(config))

    def status(self) -> dict[str, Any]:
        """What the ``status`` command reports."""
        parts = {
            "commands": {"handled": self.control.handled, "refused": self.control.rejected},
            "jobs": len(self.jobs.running),
            "publish": {**(self.publish.counters_dict() if self.publish else {}), "partials": self.partials.published},
        }
        if self.remote is not None:
            parts["remote"] = {**dataclasses.asdict(self.remote.counters), "workers_online": sorted(self.remote.online)}
        return status(self.rt, parts)

    async def _start_model(self) -> None:
        """The model on its thread, then the graph and the rooms around it."""
        rt, config = self.rt, self.rt.config
        self.log.info("loading model", model=config.recognizer.model)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        recognizer: Recognizer
        if self.remote is None or config.remote.fallback_local:
            recognizer = await loop.run_in_executor(rt.model_executor, load_recognizer_in_thread, config)
        if self.remote is not None:
            recognizer = await self._remote(recognizer if config.remote.fallback_local else None)
        self.log.info(
            "model loaded",
            model=recognizer.name,
            device=recognizer.device,
            dtype=recognizer.dtype,
            load_s=round(time.monotonic() - started, 2),
        )
        check_languages(config, recognizer)
        rt.recognizer = recognizer
        journal = PieceJournal(rt.publisher.durable) if rt.publisher.durable is not None else None
        rt.pipeline = pipeline_from_config(
            config,
            rt.config_path,
            recognizer,
            rt.model_executor,
            rt.states,
            on_partial=self.partials,
            watch=rt.watch,
            journal=journal,
        )
        if journal is not None and (replayed := await journal.restore()):
            # Recognized before the last exit, never stored: through text and stitch again
            # (once the stages run: the queue is bounded).
            self.log.warning("journal: publishing pieces recognized before this start", count=len(replayed))
            self._replay = replayed
        self.publish = PublishStage(
            rt.pipeline.transcripts,
            rt,
            jobs=self.jobs,
            partials=self.partials,
            requests=self.requests,
            hermes_sessions=self.hermes.sessions,
        )
        rt.rooms = build_rooms(
            config,
            rt.config_path,
            rt.states,
            rt.pipeline.utterances,
            rt.vad_executor,
            rt.run,
            rt.publish_state,
            rt.watch,
        )
        self.hermes.attach(rt.rooms)

    async def _remote(self, fallback: Recognizer | None) -> Recognizer:
        """Workers through the broker: what they can do, and the rooms' state as they come and go."""
        assert self.remote is not None
        self.remote.fallback = fallback
        await self.remote.discover(self.rt.config.remote.wait_for_worker_s)
        self.remote.on_change.append(self._publish_states)
        return self.remote

    def _publish_states(self) -> None:
        for room in self.rt.rooms:
            self.rt.publish_state(room)

    async def run(self) -> int:
        rt = self.rt
        self.service.start_metrics()  # first: a port in use fails the start before the model loads
        try:
            await self._start_doors()  # the same for theirs; until the model is loaded they say so
            restored = await rt.publisher.restore()
            if restored:
                self.log.warning("outbox: publishing utterances from before this start", count=restored)
            await self._start_model()
            if self.wyoming is not None:
                await self.wyoming.serve()
            assert rt.pipeline is not None and self.publish is not None
            async with asyncio.TaskGroup() as group:
                mqtt_task = group.create_task(rt.publisher.run(), name="mqtt")
                stage_tasks = [*rt.pipeline.tasks(group), group.create_task(self.publish.run(), name="publish")]
                group.create_task(rt.pipeline.replay(self._replay), name="replay")
                room_tasks = [group.create_task(self._run_room(room), name=f"room:{room.name}") for room in rt.rooms]
                group.create_task(self._watch_rooms(room_tasks), name="rooms-idle")
                service = group.create_task(self.service.run(), name="service")
                await self.stop.wait()
                self.notifier.stopping()
                service.cancel()
                for door in (self.wyoming, self.http):
                    if door is not None:
                        await door.stop()  # no new requests; those in the graph finish
                await self._drain(room_tasks, stage_tasks, mqtt_task)
        finally:
            for door in (self.wyoming, self.http):
                if door is not None:
                    await door.stop()
            self.service.stop_metrics()
            rt.shutdown_executors()
        self.log.info("stopped", published=rt.publisher.counters.published)
        return EXIT_OK

    async def _start_doors(self) -> None:
        """The Wyoming and HTTP servers bound now: a port in use or not allowed is a start-up
        error naming the key (exit 3), not a crash after the model has loaded."""
        for key, door in (("wyoming", self.wyoming), ("http", self.http)):
            if door is None:
                continue
            try:
                await door.start()
            except OSError as exc:
                settings = getattr(self.rt.config, key)
                raise StartupError(f"{key}.port {settings.port} on {settings.host}: {exc.strerror or exc}") from None

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

    async def _drain(
        self, room_tasks: list[asyncio.Task[None]], stage_tasks: list[asyncio.Task[None]], mqtt_task: asyncio.Task[None]
    ) -> None:
        """Rooms first, then the end marker through the stages in order, then the broker."""
        rt = self.rt
        assert rt.pipeline is not None
        timeout = rt.config.daemon.drain_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*room_tasks)
                await rt.pipeline.utterances.put(None)
                for task in stage_tasks:  # each passes the end marker on to the next
                    await task
                await rt.publisher.finish()
        except TimeoutError:
            lost = rt.pipeline.held() + len(rt.publisher.pending)
            self.log.error("shutdown drain timed out; giving up on what is left", timeout_s=timeout, lost=lost)
            for task in (*room_tasks, *stage_tasks, mqtt_task):
                task.cancel()
        await asyncio.gather(mqtt_task, return_exceptions=True)

    # Signals: stop (a second SIGINT exits now), and SIGHUP to reload.

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.log.info("shutdown requested", reason=reason)
            self.stop.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1 and signum == signal.SIGINT:
            self.log.warning("second interrupt: exiting now without draining")
            os._exit(EXIT_INTERRUPTED)
        self.request_stop(signal.Signals(signum).name)

    def _on_hangup(self) -> None:
        async def reload() -> None:
            self.notifier.reloading()
            try:
                await reload_config(self.rt)
            except (ConfigError, DictionaryError) as exc:
                self.log.error("reload failed; keeping the running config", error=str(exc))
            self.notifier.ready(status_line(self.rt))

        task = asyncio.get_running_loop().create_task(reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
