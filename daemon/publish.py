"""The publish stage: the graph's last stage, in the daemon.

A live transcript becomes the finished-utterance record (docs/mqtt.md), stored in the
durable output (on its own thread) and queued for MQTT; with Hermes on, also
``hermes/asr/textCaptured``; with debug recording on, its WAV and JSON are written on a
worker thread. A batch job's transcript goes back to its job instead. Partials (from the
recognize stage's callback) are written like finished text and published QoS 0.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from daemon.integrations import hermes
from daemon.jobs import BatchJobs
from daemon.outgoing import Outgoing
from daemon.recording import UtteranceRecorder
from daemon.requests import Requests
from daemon.runtime import Runtime
from pipeline.journal import pieces
from pipeline.messages import Transcript, Utterance, iso_utc, utterance_record
from pipeline.partials import PartialTracker
from pipeline.stage import Stage

if TYPE_CHECKING:
    from models.api import Recognition


@dataclass
class PublishCounters:
    utterances: int = 0  # finished utterances handed to MQTT (stored first)
    batch: int = 0  # batch transcripts handed back to their jobs
    recordings_failed: int = 0  # debug recordings that could not be written


class Partials:
    """Interim results from the recognize stage (its ``on_partial``), QoS 0: written like a
    finished text, with the prefix two consecutive ones agreed on."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.tracker = PartialTracker()
        self.published = 0

    def __call__(self, utt: Utterance, result: Recognition) -> None:
        pipeline = self.rt.pipeline
        try:
            text = pipeline.text.write(utt.room, result.text, result.language) if pipeline else result.text
        except Exception:
            text = result.text
        stable = self.tracker.update(utt.room, utt.id, text)
        payload = {
            "id": utt.id,
            "room": utt.room,
            "text": text,
            "stable_text": stable,
            "final": False,
            "start": iso_utc(utt.start_wall),
            "duration_s": round(utt.end_s - utt.start_s, 3),
        }
        self.published += 1
        self.rt.events.emit("partial", payload)
        publisher = self.rt.publisher
        publisher.submit_json(publisher.topic(utt.room, "partial"), payload, qos=0, room=utt.room)


class PublishStage(Stage[Transcript, None, PublishCounters]):
    name: ClassVar[str] = "publish"

    def __init__(
        self,
        inbox: asyncio.Queue[Transcript | None],
        runtime: Runtime,
        *,
        jobs: BatchJobs,
        partials: Partials,
        requests: Requests | None = None,
        hermes_sessions: hermes.HermesSessions | None = None,
    ) -> None:
        super().__init__(inbox, None)
        self.rt = runtime
        self.jobs = jobs
        self.requests = requests
        self.hermes_sessions = hermes_sessions
        self.partials = partials
        self.counters = PublishCounters()
        config = runtime.config
        self.recorder: UtteranceRecorder | None = None
        if config.debug.record:
            state = config.daemon.state_path(runtime.config_path)
            self.recorder = UtteranceRecorder(
                config.debug.record_path(runtime.config_path, state), config.debug.record_max
            )

    async def handle(self, item: Transcript) -> None:
        if item.utterance.batch:  # a batch job's segment or a request's: to its caller, not to MQTT
            self.counters.batch += 1
            if self.requests is None or not self.requests.deliver(item):
                self.jobs.deliver(item)
            return
        u = item.utterance
        publisher = self.rt.publisher
        record = utterance_record(item, published_at=time.monotonic())
        # The one line per utterance that says everything (besides the text).
        summary = {
            "language": item.language,
            "duration_s": record["duration_s"],
            "recognize_ms": record["latency_ms"]["recognize"],
            "parts": item.parts,
            "chars": len(item.text),
            "confidence": item.confidence,
        }
        message = Outgoing(
            publisher.topic(u.room, "utterance"),
            publisher.encode(record),
            qos=1,
            utterance_id=u.id,
            room=u.room,
            decided_at=u.decided_at,
            summary=summary,
            delayed=u.restored,
            settles=pieces(item),
        )
        await publisher.submit_durable(message)
        self.counters.utterances += 1
        self.rt.events.emit("utterance", record)
        if self.rt.config.hermes.enabled:
            site = hermes.site_id(self.rt.config, u.room)
            session = self.hermes_sessions.take(site) if self.hermes_sessions is not None else None
            captured = hermes.text_captured(record, site, session)
            publisher.submit_json(hermes.TEXT_CAPTURED, captured, qos=1, room=u.room)
        if self.recorder is not None:
            self._record(self.recorder, record, u.audio)

    def _record(self, recorder: UtteranceRecorder, record: dict[str, Any], audio: np.ndarray) -> None:
        """Debug recording, on a thread; a full disk or a bad folder is logged, nothing more."""

        def done(task: asyncio.Future[Path]) -> None:
            if (exc := task.exception()) is not None:
                self.counters.recordings_failed += 1
                self.log.warning("debug recording failed", utterance_id=record["id"], error=str(exc))

        future = asyncio.get_running_loop().run_in_executor(None, recorder.save, record, audio)
        future.add_done_callback(done)
