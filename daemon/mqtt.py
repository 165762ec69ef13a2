"""MQTT publisher: holds messages until the broker acknowledges them, reconnects forever.

Messages wait in memory (bounded; the oldest is dropped with an error log when full) and
leave the queue only after the broker's PUBACK (QoS 1), so a broker that is down at start
or goes away loses nothing; they are published in order once it is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from daemon.config import MqttSettings

PUBLISH_TIMEOUT_S = 10.0


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


@dataclass
class PublisherCounters:
    published: int = 0
    dropped: int = 0
    skipped: int = 0  # QoS 0 messages while no broker was connected
    connects: int = 0
    connect_failures: int = 0


def read_password(settings: MqttSettings) -> str | None:
    """The password from its file; a bare file name is looked up in $CREDENTIALS_DIRECTORY."""
    if not settings.password_file:
        return None
    path = Path(settings.password_file)
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and cred_dir and (Path(cred_dir) / path).is_file():
        path = Path(cred_dir) / path
    return path.read_text(encoding="utf-8").strip()


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Full-jitter exponential backoff: uniform in [low, min(high, low * 2**attempt)]."""
    cap = min(high, low * 2 ** min(attempt, 30))
    return random.uniform(low, max(low, cap))


class Publisher:
    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self.prefix = settings.prefix.rstrip("/")
        self.status_topic = f"{self.prefix}/status"
        self.client_id = settings.client_id or f"roomscribe-{socket.gethostname()}"
        self.pending: deque[Outgoing] = deque()
        self.counters = PublisherCounters()
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self._done = asyncio.Event()
        self._password = read_password(settings)
        # Called with (topic, payload) for each command on <prefix>/set and <prefix>/<room>/set.
        self.on_command: Callable[[str, bytes], None] | None = None
        self.log = structlog.get_logger().bind(broker=f"{settings.host}:{settings.port}")

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def submit(self, message: Outgoing) -> None:
        """Queue a message; never blocks. Past ``max_pending`` the oldest one is dropped.
        QoS 0 messages (partials) are only worth sending now: without a broker they are skipped."""
        if message.qos == 0 and not self.connected.is_set():
            self.counters.skipped += 1
            return
        if len(self.pending) >= self.settings.max_pending:
            lost = self.pending.popleft()
            self.counters.dropped += 1
            self.log.error(
                "publish queue full: oldest message dropped",
                topic=lost.topic,
                utterance_id=lost.utterance_id,
                room=lost.room,
                dropped=self.counters.dropped,
            )
        self.pending.append(message)
        self._wake.set()

    def submit_json(self, topic: str, payload: dict[str, Any], **kwargs: Any) -> None:
        self.submit(Outgoing(topic, json.dumps(payload, ensure_ascii=False), **kwargs))

    async def finish(self) -> None:
        """Publish everything pending, then ``stopped``, then disconnect. Await with a timeout."""
        self._closing = True
        self._wake.set()
        await self._done.wait()

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        return aiomqtt.Client(
            s.host,
            s.port,
            identifier=self.client_id,
            username=s.username or None,
            password=self._password,
            keepalive=s.keepalive_s,
            will=aiomqtt.Will(self.status_topic, "offline", qos=1, retain=True),
            timeout=PUBLISH_TIMEOUT_S,
        )

    async def run(self) -> None:
        """Connect, publish, reconnect with jittered backoff; returns after ``finish``."""
        attempt = 0
        while True:
            try:
                async with self._client() as client:
                    attempt = 0
                    self.counters.connects += 1
                    await client.publish(self.status_topic, "online", qos=1, retain=True)
                    if self.on_command is not None:
                        await client.subscribe(self.topic("set"), qos=1)
                        await client.subscribe(self.topic("+", "set"), qos=1)
                    self.connected.set()
                    self.log.info("mqtt connected", client_id=self.client_id, pending=len(self.pending))
                    await self._session(client)
                    self._done.set()
                    self.log.info("mqtt disconnected cleanly", status="stopped")
                    return
            except aiomqtt.MqttError as exc:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self.counters.connect_failures += 1
                delay = backoff_delay(attempt, self.settings.reconnect_min_s, self.settings.reconnect_max_s)
                attempt += 1
                self.log.warning(
                    "mqtt connection lost" if was_connected else "mqtt connect failed",
                    error=str(exc),
                    attempt=attempt,
                    retry_in_s=round(delay, 2),
                    pending=len(self.pending),
                )
                await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Send until closing; a dropped connection (seen by the watcher) ends it with MqttError."""
        sender = asyncio.create_task(self._send_all(client), name="mqtt:send")
        watcher = asyncio.create_task(self._watch(client), name="mqtt:watch")
        try:
            done, _ = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
        if watcher in done:
            raise aiomqtt.MqttError("connection closed")

    async def _watch(self, client: aiomqtt.Client) -> None:
        # Iterating the message stream raises MqttError as soon as the connection drops,
        # even while nothing is being published; that ends the session's task group.
        async for message in client.messages:
            if self.on_command is None:
                continue
            raw = message.payload
            payload = raw if isinstance(raw, bytes | bytearray) else str(raw).encode()
            try:
                self.on_command(str(message.topic), bytes(payload))
            except Exception:  # a command must never take the connection (or the daemon) down
                self.log.exception("command handler failed", topic=str(message.topic))

    async def _send_all(self, client: aiomqtt.Client) -> None:
        while True:
            while self.pending:
                item = self.pending[0]
                await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
                # Acknowledged (PUBACK for QoS 1): only now does it leave the queue.
                if self.pending and self.pending[0] is item:
                    self.pending.popleft()
                self.counters.published += 1
                if item.utterance_id is not None:
                    now = time.monotonic()
                    self.log.info(
                        "utterance published",
                        room=item.room,
                        utterance_id=item.utterance_id,
                        topic=item.topic,
                        end_to_ack_ms=round((now - (item.decided_at or now)) * 1000, 1),
                        queued_ms=round((now - item.queued_at) * 1000, 1),
                    )
            if self._closing:
                await client.publish(self.status_topic, "stopped", qos=1, retain=True)
                return
            self._wake.clear()
            await self._wake.wait()
