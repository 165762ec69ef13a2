"""Hermes protocol compatibility (Rhasspy and other Snips-style voice stacks), off by default.

- Out: each finished utterance also goes to ``hermes/asr/textCaptured``.
- In: a room with ``source = { type = "hermes" }`` hears the WAV chunks an audio server
  publishes on ``hermes/audioServer/<siteId>/audioFrame``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import structlog

from daemon.config import Config
from daemon.config_sources import HermesSourceSettings

if TYPE_CHECKING:
    from daemon.mqtt import Publisher
    from pipeline.room import Room
    from pipeline.sources import PushSource

TEXT_CAPTURED = "hermes/asr/textCaptured"
START_LISTENING = "hermes/asr/startListening"
STOP_LISTENING = "hermes/asr/stopListening"
DEFAULT_SITE = "default"  # Rhasspy's siteId when a message names none


def audio_frame_topic(site_id: str) -> str:
    return f"hermes/audioServer/{site_id}/audioFrame"


def text_captured(record: dict[str, Any], site_id: str, session_id: str | None = None) -> dict[str, Any]:
    """The Hermes ASR result for one utterance record of our contract: the written text, our
    confidence as its likelihood, the speech's length in seconds (Rhasspy's own ASR services
    put their processing time there; ours is in the utterance payload's latency_ms); the
    dialogue session the site's ``startListening`` opened, else the utterance's id (stable,
    and unique per utterance)."""
    return {
        "text": record["text"],
        "likelihood": record["confidence"],
        "seconds": record["duration_s"],
        "siteId": site_id,
        "sessionId": session_id or record["id"],
        "lang": record["language"],
    }


class HermesSessions:
    """The ASR sessions a dialogue manager opens: ``startListening`` {siteId, sessionId} makes
    the site's next utterance that session's ``textCaptured`` (stock Rhasspy drops a
    textCaptured that no session of its own carries); ``stopListening`` ends it unused."""

    def __init__(self) -> None:
        self.by_site: dict[str, str] = {}
        self.bad = 0
        self.log = structlog.get_logger().bind(component="hermes")

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            message = json.loads(payload)
            site = str(message.get("siteId") or DEFAULT_SITE)
            session = message.get("sessionId")
        except (ValueError, AttributeError):
            self.bad += 1
            self.log.warning("hermes message ignored: not a JSON object", topic=topic)
            return
        if topic == START_LISTENING and isinstance(session, str) and session:
            self.by_site[site] = session
        elif topic == STOP_LISTENING and (session is None or self.by_site.get(site) == session):
            self.by_site.pop(site, None)  # a stop for an older session leaves the newer one open

    def take(self, site: str) -> str | None:
        """The site's open session, now used by an utterance (one textCaptured per session)."""
        return self.by_site.pop(site, None)


def decode_audio_frame(payload: bytes) -> tuple[np.ndarray, int]:
    """One audioFrame (a complete WAV file) as mono float32 samples and their rate; a payload
    that is not WAV audio raises ValueError with the reason."""
    if not payload.startswith(b"RIFF"):
        raise ValueError("not a WAV file (no RIFF header)")
    try:
        data, rate = sf.read(io.BytesIO(payload), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"unreadable WAV ({exc})") from None
    return data.mean(axis=1, dtype=np.float32), int(rate)


def site_id(config: Config, room: str) -> str:
    """The Hermes siteId of a room: its Hermes source's, else the room's name."""
    for r in config.rooms:
        if r.name == room and isinstance(r.source, HermesSourceSettings) and r.source.site_id:
            return r.source.site_id
    return room


class HermesIngress:
    """Audio frames from an audio server into the rooms whose source is ``hermes``."""

    def __init__(self, config: Config, publisher: Publisher) -> None:
        self.config = config
        self.publisher = publisher
        self.bad_frames = 0  # frames that were not WAV audio (in the stats)
        self.sessions = HermesSessions()
        self.log = structlog.get_logger().bind(component="hermes")

    def attach(self, rooms: list[Room]) -> None:
        from pipeline.sources import PushSource

        if self.config.hermes.enabled:
            for topic in (START_LISTENING, STOP_LISTENING):
                self.publisher.subscribe(topic, self.sessions.handle, qos=1)
        hermes_rooms = {r.name for r in self.config.rooms if isinstance(r.source, HermesSourceSettings)}
        for room in rooms:
            if room.name in hermes_rooms and isinstance(room.source, PushSource):
                topic = audio_frame_topic(site_id(self.config, room.name))
                self.publisher.subscribe(topic, self._handler(room.name, room.source), qos=0)

    def _handler(self, room: str, source: PushSource) -> Callable[[str, bytes], None]:
        def handle(topic: str, payload: bytes) -> None:
            try:
                samples, rate = decode_audio_frame(payload)
            except ValueError as exc:
                self.bad_frames += 1
                if self.bad_frames == 1 or self.bad_frames % 1000 == 0:
                    self.log.warning(
                        "audio frame ignored", room=room, topic=topic, error=str(exc), count=self.bad_frames
                    )
                return
            source.push(samples, rate)

        return handle
