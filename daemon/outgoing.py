"""What the publisher queues (Outgoing), its counters, and the flag on what waited."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outgoing:
    topic: str
    payload: str
    qos: int = 1
    retain: bool = False
    utterance_id: str | None = None
    room: str | None = None
    decided_at: float | None = None  # monotonic time the VAD cut the utterance
    queued_at: float = field(default_factory=time.monotonic)
    seq: int | None = None  # its row in the durable outbox
    durable: bool = False  # an utterance: stored in the outbox when the disk takes it
    settles: tuple[str, ...] = ()  # the journal's pieces it is made of (settled as it is stored)
    delayed: bool = False  # it waited for the broker (an outage, or from before a restart)
    summary: dict[str, Any] | None = None  # more fields for the "utterance published" log line
    correlation: bytes | None = None  # MQTT 5: the correlation data of the request it answers (or asks)
    response_topic: str | None = None  # MQTT 5: where the answer to this request goes
    binary: bytes | None = None  # sent instead of ``payload`` (a recognition job's FLAC)


@dataclass
class PublisherCounters:
    published: int = 0
    dropped: int = 0
    skipped: int = 0  # QoS 0 messages while no broker was connected
    waited_on_disk: int = 0  # utterances that waited in the outbox while the memory queue was full
    connects: int = 0
    connect_failures: int = 0


def with_delayed_flag(payload: str) -> str:
    """The JSON payload with ``"delayed": true`` added (unchanged if it is not a JSON object)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(data, dict):
        return payload
    data["delayed"] = True
    return json.dumps(data, ensure_ascii=False)
