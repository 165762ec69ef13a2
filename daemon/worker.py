"""``roomscribe worker``: a recognizer node that takes jobs from the broker.

It subscribes to the shared subscriptions ``$share/<group>/<prefix>/jobs/live`` and
``.../jobs/batch``, so the broker hands each job to one worker of the group (Mosquitto 2,
EMQX, HiveMQ, VerneMQ). Jobs that arrive within ``recognizer.max_wait_ms`` of each other are
decoded as one batch, live ones first; each answer goes to the job's MQTT 5 response topic
with its correlation data. A job it has already answered (the daemon sent it again when an
answer was late) is answered again from memory, not decoded twice. A job that cannot be done
(malformed, oversized, unreadable audio) gets an error result, never a crash.

``<prefix>/workers/<id>`` (retained) says what model and capabilities it has;
``<prefix>/workers/<id>/availability`` is ``online``, or ``offline`` by its will when it
vanishes; ``<prefix>/workers/<id>/stats`` every ``daemon.stats_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from daemon.broker import (
    V5,
    BadReply,
    backoff_delay,
    payload_bytes,
    publish_properties,
    read_password,
    reply_address,
    tls_context,
)
from daemon.config import Config
from daemon.remote_wire import Job, JobError, capabilities_record, decode_job, encode_result, job_id_of
from models.api import Recognition, Recognizer

ANSWERED_KEPT = 4096  # answers kept for jobs sent again


@dataclass
class WorkerCounters:
    jobs: int = 0
    batches: int = 0
    errors: int = 0  # jobs refused (malformed, oversized, unreadable) or failed in the model
    repeated: int = 0  # jobs answered again from memory
    model_seconds: float = 0.0


@dataclass
class Incoming:
    job: Job
    reply_to: str
    correlation: bytes | None


def _call_key(item: Incoming) -> tuple[str | None, bool, bool]:
    """Jobs decoded in one model call ask the same of it."""
    h = item.job.header
    return h.language, h.timestamps, isinstance(h.sentence_end, str)


class Worker:
    def __init__(self, config: Config, config_path: Path, worker_id: str, recognizer: Recognizer) -> None:
        self.config, self.recognizer = config, recognizer
        self.id = worker_id
        self.prefix = config.mqtt.prefix.rstrip("/")
        self.topic = f"{self.prefix}/workers/{worker_id}"
        self.counters = WorkerCounters()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.answered: OrderedDict[str, bytes] = OrderedDict()
        self.log = structlog.get_logger().bind(component="worker", worker=worker_id)
        self._password = read_password(config.mqtt, config_path)
        self._tls = tls_context(config.mqtt, config_path)
        self._inbox: asyncio.Queue[Incoming] = asyncio.Queue()
        self._busy = False
        # Jobs taken and not yet answered -> where else to answer them (a repeat came meanwhile).
        self._in_hand: dict[str, list[tuple[str, bytes | None]]] = {}

    def _client(self) -> aiomqtt.Client:
        m = self.config.mqtt
        will = aiomqtt.Will(f"{self.topic}/availability", "offline", qos=1, retain=True)
        return aiomqtt.Client(m.host, m.port, identifier=f"{m.client_id or 'roomscribe'}-worker-{self.id}",
                              username=m.username or None, password=self._password, keepalive=m.keepalive_s,
                              will=will, tls_context=self._tls, protocol=V5, timeout=10)  # fmt: skip

    def record(self) -> dict[str, Any]:
        r = self.recognizer
        return {"id": self.id, "model": r.name, "device": r.device, "dtype": r.dtype, "host": socket.gethostname(),
                "capabilities": capabilities_record(r.capabilities)}  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Connected until ``stop``; a lost broker is reconnected with backoff."""
        attempt = 0
        while not stop.is_set():
            try:
                async with self._client() as client:
                    attempt = 0
                    await self._session(client, stop)
            except aiomqtt.MqttError as exc:
                delay = backoff_delay(attempt, self.config.mqtt.reconnect_min_s, self.config.mqtt.reconnect_max_s)
                attempt += 1
                self.log.warning("worker: broker connection lost", error=str(exc), retry_in_s=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        # What the last connection held cannot be answered on it any more: the daemons send it again.
        self._inbox, self._in_hand, self._busy = asyncio.Queue(), {}, False
        await client.publish(self.topic, json.dumps(self.record()), qos=1, retain=True)
        await client.publish(f"{self.topic}/availability", "online", qos=1, retain=True)
        group = self.config.remote.group
        for kind in ("live", "batch"):
            await client.subscribe(f"$share/{group}/{self.prefix}/jobs/{kind}", qos=1)
        self.log.info("worker ready", model=self.recognizer.name, group=group)
        tasks = [asyncio.create_task(t) for t in (self._receive(client), self._work(client), self._stats(client))]
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping and (exc := task.exception()) is not None:
                    raise exc
            await self._drain(client)
        finally:
            for task in (*tasks, stopping):
                task.cancel()
            await asyncio.gather(*tasks, stopping, return_exceptions=True)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Stopping: take no more jobs, answer those held (up to daemon.drain_timeout_s; what
        is left, the daemons send again), then say offline."""
        for kind in ("live", "batch"):
            await client.unsubscribe(f"$share/{self.config.remote.group}/{self.prefix}/jobs/{kind}")
        deadline = time.monotonic() + self.config.daemon.drain_timeout_s
        while (self._busy or not self._inbox.empty()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await client.publish(f"{self.topic}/availability", "offline", qos=1, retain=True)
        self.log.info("worker drained", left=self._inbox.qsize())

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = payload_bytes(message)
            try:
                reply = reply_address(message.properties)
            except BadReply:
                reply = None
            if reply is None:
                self.counters.errors += 1
                self.log.warning("job without a usable response topic: dropped", topic=str(message.topic))
                continue
            reply_to, correlation = reply.topic, reply.correlation
            try:
                job = decode_job(payload)
            except JobError as exc:
                self.counters.errors += 1
                self.log.warning("job refused", error=str(exc), topic=str(message.topic))
                job_id = job_id_of(payload) or (correlation.decode(errors="replace") if correlation else "?")
                await self._answer(client, reply_to, correlation, encode_result(job_id, self.id, None, str(exc)))
                continue
            if (cached := self.answered.get(job.header.id)) is not None:
                self.counters.repeated += 1
                await self._answer(client, reply_to, correlation, cached)
                continue
            if (also := self._in_hand.get(job.header.id)) is not None:  # sent again while still here
                self.counters.repeated += 1
                also.append((reply_to, correlation))
                continue
            self._in_hand[job.header.id] = []
            self._inbox.put_nowait(Incoming(job, reply_to, correlation))

    async def _gather(self) -> list[Incoming]:
        """What is waiting, then what comes within max_wait_ms, up to max_batch; live first."""
        r = self.config.recognizer
        batch = [await self._inbox.get()]
        deadline = time.monotonic() + r.max_wait_ms / 1000
        while len(batch) < r.max_batch:
            try:
                batch.append(await asyncio.wait_for(self._inbox.get(), max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                break
        batch.sort(key=lambda i: i.job.header.kind != "live")
        return batch

    async def _work(self, client: aiomqtt.Client) -> None:
        while True:
            batch = await self._gather()
            for group_key in dict.fromkeys(_call_key(i) for i in batch):
                await self._recognize(client, [i for i in batch if _call_key(i) == group_key])

    async def _recognize(self, client: aiomqtt.Client, group: list[Incoming]) -> None:
        headers = [i.job.header for i in group]
        self.log.info("worker batch started", jobs=[h.id for h in headers])
        self._busy = True
        started = time.monotonic()
        error: str | None = None
        try:
            loop = asyncio.get_running_loop()
            results: list[Recognition | None] = list(await loop.run_in_executor(self.executor, self._call, group))
        except Exception as exc:
            self.log.exception("worker: model call failed", jobs=[h.id for h in headers])
            results = [None] * len(group)
            error = f"the worker's model failed: {exc}"
        self.counters.model_seconds += time.monotonic() - started
        self.counters.batches += 1
        for item, result in zip(group, results, strict=True):
            body = encode_result(item.job.header.id, self.id, result, error)
            if result is not None:
                self.counters.jobs += 1
                self.answered[item.job.header.id] = body
                while len(self.answered) > ANSWERED_KEPT:
                    self.answered.popitem(last=False)
            else:
                self.counters.errors += 1
            also = self._in_hand.pop(item.job.header.id, [])
            for reply_to, correlation in [(item.reply_to, item.correlation), *also]:
                await self._answer(client, reply_to, correlation, body)
        self._busy = False
        self.log.info(
            "worker batch answered", jobs=[h.id for h in headers], ms=round((time.monotonic() - started) * 1000)
        )

    def _call(self, group: list[Incoming]) -> list[Recognition]:
        """On the model thread: one batch, asked only what this model can do."""
        caps = self.recognizer.capabilities
        h = group[0].job.header
        ends = [i.job.header.sentence_end for i in group]
        sentence_end: bool | list[str] = False
        if caps.sentence_end:
            sentence_end = [str(e) for e in ends] if isinstance(h.sentence_end, str) else any(ends)
        return self.recognizer.recognize(
            [i.job.audio for i in group],
            h.language if caps.multilingual else None,
            prompts=[i.job.header.prompt for i in group] if caps.prompt else None,
            hotwords=[i.job.header.hotwords for i in group] if caps.hotword_bias else None,
            timestamps=h.timestamps and caps.timestamps,
            sentence_end=sentence_end,
        )

    async def _answer(self, client: aiomqtt.Client, topic: str, correlation: bytes | None, body: bytes) -> None:
        await client.publish(topic, body, qos=1, properties=publish_properties(correlation))

    async def _stats(self, client: aiomqtt.Client) -> None:
        interval = self.config.daemon.stats_interval_s or 60.0
        while True:
            await asyncio.sleep(interval)
            stats = {**asdict(self.counters), "waiting": self._inbox.qsize()}
            stats["model_seconds"] = round(stats["model_seconds"], 3)
            await client.publish(f"{self.topic}/stats", json.dumps(stats), qos=0)


def worker_main(config: Config, config_path: Path, worker_id: str) -> int:
    """Loads the model, then serves until SIGTERM or SIGINT (exit 0); 3 when the model cannot load."""
    import os
    import signal

    from daemon.errors import EXIT_OK, EXIT_STARTUP_FAILURE, StartupError
    from daemon.wiring import load_recognizer_in_thread

    log = structlog.get_logger()
    try:
        recognizer = load_recognizer_in_thread(config)
    except StartupError as exc:
        log.error("start-up failed", error=str(exc))
        return EXIT_STARTUP_FAILURE
    worker = Worker(config, config_path, worker_id or f"{socket.gethostname()}-{os.getpid()}", recognizer)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    asyncio.run(serve())
    log.info("worker stopped", **asdict(worker.counters))
    return EXIT_OK
