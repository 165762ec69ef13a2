"""Recognition by workers through the broker (``[remote]``): a Recognizer that sends jobs.

The recognize stage calls it like the local model, on the model thread, so everything
around it stays as it is (prompts, hotwords, joint decodes, batch chunks, order per room,
the text, stitch and publish stages, the outbox). Each utterance of a call becomes one job
(daemon/remote_wire.py) on ``<prefix>/jobs/live`` (or ``/jobs/batch`` for timestamped
batch chunks, so live work goes first wherever jobs queue), QoS 1, its MQTT 5 response
topic ``<prefix>/results/<client id>`` and its id as correlation data; the broker gives each
to one worker of the shared subscription. The call returns when every job is answered.

A job not answered within ``remote.deadline_s`` is sent again with the same id (a worker
that died mid-job loses nothing; one that answers late is heard, the second answer is
dropped). Workers announce themselves on ``<prefix>/workers/<id>`` (retained: model and
capabilities) and ``.../availability`` (online, or offline by their will). With none
online, utterances wait in the pipeline's bounded queues (counted, logged, the rooms' state
says ``workers_online: 0``), or go to the local model when ``remote.fallback_local`` is on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiomqtt
import numpy as np
import structlog

from daemon.broker import payload_bytes
from daemon.outgoing import Outgoing
from daemon.remote_wire import JobHeader, capabilities_from, decode_result, encode_job
from models.api import Capabilities, Recognition, Recognizer

if TYPE_CHECKING:
    from daemon.config_interfaces import RemoteSettings
    from daemon.mqtt import Publisher
    from pipeline.health import BusyWatch

# Until a worker says otherwise: what the default model (Whisper tiny.en) can do.
ASSUMED = Capabilities(multilingual=False, prompt=True, timestamps=True, hotword_bias=True, beam_search=True,
                       max_batch=16, max_audio_s=30.0, sentence_end=True)  # fmt: skip


MAX_REFUSALS = 3  # error results for one job before it fails like a local model call


@dataclass
class RemoteCounters:
    jobs: int = 0
    resent: int = 0  # jobs sent again after their deadline
    late: int = 0  # answers to jobs already answered (a resent job answered twice)
    errors: int = 0  # error results (the job is then recognized locally or sent again)
    local: int = 0  # jobs recognized by the local fallback model
    bytes_sent: int = 0


class RemoteRecognizer:
    device = "remote"
    dtype = "remote"

    def __init__(self, settings: RemoteSettings, publisher: Publisher, watch: BusyWatch,
                 fallback: Recognizer | None = None) -> None:  # fmt: skip
        self.settings, self.publisher, self.watch, self.fallback = settings, publisher, watch, fallback
        self.loop: asyncio.AbstractEventLoop | None = None  # the daemon's, from discover()
        self.prefix = publisher.prefix
        self.reply_topic = f"{self.prefix}/results/{publisher.client_id}"
        self.workers: dict[str, dict[str, Any]] = {}  # id -> its record
        self.online: set[str] = set()
        self.counters = RemoteCounters()
        self.on_change: list[Callable[[], None]] = []  # the number of workers online changed
        self._numbers = itertools.count(1)
        self._run = f"{int(time.time()):x}"
        self._waiting: dict[str, asyncio.Future[Recognition]] = {}
        self.log = structlog.get_logger().bind(component="remote")
        publisher.subscribe(self.reply_topic, self._on_result, qos=1)
        publisher.subscribe(f"{self.prefix}/workers/+", self._on_worker, qos=1)
        publisher.subscribe(f"{self.prefix}/workers/+/availability", self._on_availability, qos=1)
        self._capabilities: Capabilities | None = None
        self.name = self._name()

    def _name(self) -> str:
        models = sorted({str(w.get("model")) for w in self.workers.values()})
        return "remote:" + ("+".join(models) if models else "no worker yet")

    @property
    def capabilities(self) -> Capabilities:
        """Fixed once read (the stages read them when built): a worker's, else the fallback
        model's, else ASSUMED."""
        if self._capabilities is None:
            self._capabilities = self._first_capabilities()
        return self._capabilities

    def _first_capabilities(self) -> Capabilities:
        for record in self.workers.values():
            try:
                return capabilities_from(record.get("capabilities"))
            except ValueError:
                continue
        return self.fallback.capabilities if self.fallback is not None else ASSUMED

    @property
    def workers_online(self) -> int:
        return len(self.online)

    async def discover(self, timeout_s: float) -> bool:
        """At start, before the stages are built: the workers' retained records (what they
        can do), read on a connection of its own (the publisher starts later); whether one
        came within ``timeout_s``."""
        self.loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s), self.publisher.side_client("discover") as client:
                await client.subscribe(f"{self.prefix}/workers/+", qos=1)
                async for message in client.messages:
                    self._on_worker(str(message.topic), payload_bytes(message))
                    if self.workers:
                        return True
        except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
            self.log.warning("remote: no worker has said what it can do", error=str(exc) or "timed out",
                             assumed="fallback model" if self.fallback else "whisper tiny.en")  # fmt: skip
        return False

    # What the broker tells us (on the event loop).

    def _on_worker(self, topic: str, payload: bytes) -> None:
        worker = topic.rsplit("/", 1)[-1]
        try:
            record = json.loads(payload) if payload else None
        except ValueError:
            record = None
        if isinstance(record, dict):
            self.workers[worker] = record
        else:
            self.workers.pop(worker, None)
        self.name = self._name()

    def _on_availability(self, topic: str, payload: bytes) -> None:
        worker = topic.split("/")[-2]
        before = len(self.online)
        if payload == b"online":
            self.online.add(worker)
        else:
            self.online.discard(worker)
        if len(self.online) != before:
            self.log.info("remote workers online", workers=sorted(self.online))
            for call in self.on_change:
                call()

    def _on_result(self, topic: str, payload: bytes) -> None:
        try:
            job_id, worker, recognition, error = decode_result(payload)
        except (ValueError, TypeError, KeyError) as exc:
            self.log.warning("remote: malformed result ignored", error=str(exc))
            return
        future = self._waiting.get(job_id)
        if future is None or future.done():
            self.counters.late += 1
            return
        if recognition is None:
            self.counters.errors += 1
            self.log.error("remote: a worker refused a job", job=job_id, worker=worker, error=error)
            future.set_exception(RuntimeError(f"worker {worker}: {error}"))
        else:
            future.set_result(recognition)

    # The Recognizer protocol (on the model thread).

    def recognize(self, audios: list[np.ndarray], language: str | None = None, prompts: list[str] | None = None,
                  hotwords: list[Sequence[str]] | None = None, timestamps: bool = False,
                  sentence_end: bool | Sequence[str] = False) -> list[Recognition]:  # fmt: skip
        headers = []
        for i in range(len(audios)):
            end = sentence_end if isinstance(sentence_end, bool) else str(sentence_end[i])
            headers.append(JobHeader(id=f"{self.publisher.client_id}-{self._run}-{next(self._numbers)}",
                                     kind="batch" if timestamps else "live", language=language,
                                     prompt=prompts[i] if prompts else "", timestamps=timestamps,
                                     hotwords=list(hotwords[i]) if hotwords else [], sentence_end=end))  # fmt: skip
        assert self.loop is not None, "discover() first"
        asked = asyncio.run_coroutine_threadsafe(self._ask(headers, audios), self.loop)
        results: list[Recognition | None] = asked.result()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing and self.fallback is not None:  # no worker online: the local model, here on the model thread
            local = self.fallback.recognize([audios[i] for i in missing], language,
                                            [prompts[i] for i in missing] if prompts else None,
                                            [hotwords[i] for i in missing] if hotwords else None, timestamps,
                                            sentence_end if isinstance(sentence_end, bool)
                                            else [sentence_end[i] for i in missing])  # fmt: skip
            self.counters.local += len(missing)
            self.log.info("remote: no worker online; recognized here", utterances=len(missing))
            for i, r in zip(missing, local, strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    async def _ask(self, headers: list[JobHeader], audios: list[np.ndarray]) -> list[Recognition | None]:
        return list(await asyncio.gather(*(self._job(h, a) for h, a in zip(headers, audios, strict=True))))

    async def _job(self, header: JobHeader, audio: np.ndarray) -> Recognition | None:
        """One job until answered; None when nobody is online and the local model should do it."""
        payload = encode_job(header, audio)
        self.counters.jobs += 1
        refusals = 0
        for attempt in itertools.count():
            if self.fallback is not None and not self.online:
                return None
            future = asyncio.get_running_loop().create_future()
            self._waiting[header.id] = future
            self._send(header, payload)
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.settings.deadline_s)
            except TimeoutError:
                self.counters.resent += 1
                self.watch.touch("recognize")  # waiting on workers by design, not a stalled model
                self.log.warning("remote: job not answered in time; sending it again", job=header.id,
                                 attempt=attempt + 1, workers_online=len(self.online))  # fmt: skip
            except RuntimeError as exc:  # an error result: another worker may do better, twice
                refusals += 1
                if refusals >= MAX_REFUSALS:  # as a local model's failure: the stage logs and counts it
                    raise RuntimeError(f"job {header.id} refused {refusals} times; last: {exc}") from None
                await asyncio.sleep(min(self.settings.deadline_s, 1.0))
            finally:
                self._waiting.pop(header.id, None)
        raise AssertionError("unreachable")

    def _send(self, header: JobHeader, payload: bytes) -> None:
        topic = f"{self.prefix}/jobs/{header.kind}"
        self.counters.bytes_sent += len(payload)
        self.publisher.submit(Outgoing(topic, "", qos=1, binary=payload, correlation=header.id.encode(),
                                       response_topic=self.reply_topic))  # fmt: skip

    def release_memory(self) -> None:
        if self.fallback is not None:
            self.fallback.release_memory()
