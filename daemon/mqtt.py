"""MQTT publisher: holds messages until the broker acknowledges them, reconnects forever.

Messages wait in memory (bounded; the oldest is dropped with an error log when full) and
leave the queue only after the broker's PUBACK (QoS 1), so a broker that is down at start
or goes away loses nothing; they are published in order once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from daemon.config import MqttSettings, credential_path
from daemon.outbox import Outbox

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
    seq: int | None = None  # its row in the durable outbox
    delayed: bool = False  # it waited for the broker (an outage, or from before a restart)
    summary: dict[str, Any] | None = None  # more fields for the "utterance published" log line


@dataclass
class PublisherCounters:
    published: int = 0
    dropped: int = 0
    skipped: int = 0  # QoS 0 messages while no broker was connected
    connects: int = 0
    connect_failures: int = 0


def read_password(settings: MqttSettings, config_path: Path) -> str | None:
    """The password from its file (first line); never logged."""
    if not settings.password_file:
        return None
    return credential_path(settings.password_file, config_path).read_text(encoding="utf-8").strip()


def tls_context(settings: MqttSettings, config_path: Path) -> ssl.SSLContext | None:
    """TLS with the broker's certificate and host name verified (unless tls_insecure)."""
    if not settings.tls:
        return None
    ca = credential_path(settings.ca_file, config_path) if settings.ca_file else None
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if settings.cert_file:
        context.load_cert_chain(
            str(credential_path(settings.cert_file, config_path)), str(credential_path(settings.key_file, config_path))
        )
    if settings.tls_insecure:
        context.check_hostname = False
    return context


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Full-jitter exponential backoff: uniform in [low, min(high, low * 2**attempt)]."""
    cap = min(high, low * 2 ** min(attempt, 30))
    return random.uniform(low, max(low, cap))


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


class Publisher:
    def __init__(self, settings: MqttSettings, outbox: Outbox | None = None, config_path: Path | None = None) -> None:
        self.outbox = outbox
        config_path = config_path or Path.cwd() / "config.toml"
        self.settings = settings
        self.prefix = settings.prefix.rstrip("/")
        self.status_topic = f"{self.prefix}/status"
        self.client_id = settings.client_id or f"roomscribe-{socket.gethostname()}"
        self.pending: deque[Outgoing] = deque()
        self.counters = PublisherCounters()
        self.connected = asyncio.Event()
        self.attempted = asyncio.Event()  # the first connection was tried (and made, or not)
        self._wake = asyncio.Event()
        self._closing = False
        self._closing_event = asyncio.Event()
        self._done = asyncio.Event()
        self._password = read_password(settings, config_path)
        self._tls = tls_context(settings, config_path)
        # Topic filter -> (QoS, handler called with (topic, payload)): commands on <prefix>/set,
        # Home Assistant's birth message, Hermes audio frames. Subscribed on every connect.
        self.handlers: dict[str, tuple[int, Callable[[str, bytes], None]]] = {}
        # Called after every (re)connect, before anything queued is sent (discovery messages).
        self.on_connect: list[Callable[[], None]] = []
        self.log = structlog.get_logger().bind(broker=f"{settings.host}:{settings.port}")
        # The outbox's disk work (an fsync per insert) runs here, in order, off the event loop.
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="outbox")

    @staticmethod
    def encode(payload: dict[str, Any]) -> str:
        return json.dumps(payload, ensure_ascii=False)

    async def restore(self) -> int:
        """Queue what the outbox still holds from before this start, oldest first, flagged delayed."""
        if self.outbox is None:
            return 0
        stored = await asyncio.wrap_future(self._disk.submit(self.outbox.pending))
        for row in stored:
            self.pending.append(
                Outgoing(
                    row.topic,
                    row.payload,
                    qos=1,
                    utterance_id=row.utterance_id,
                    room=row.room,
                    seq=row.seq,
                    delayed=True,
                )
            )
        return len(stored)

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None], qos: int = 1) -> None:
        self.handlers[topic_filter] = (qos, handler)

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    async def submit_durable(self, message: Outgoing) -> None:
        """An utterance: on disk (on the outbox's thread) before it is queued, so a crash from
        here on loses nothing; then ``submit``."""
        if self.outbox is not None and message.seq is None:
            add = self.outbox.add
            stored = self._disk.submit(add, message.topic, message.payload, message.utterance_id, message.room)
            seq, gone = await asyncio.wrap_future(stored)
            message.seq = seq
            if gone:  # past the outbox's bounds: out of the memory queue too (the outbox logged them)
                dropped = set(gone)
                self.pending = deque(m for m in self.pending if m.seq not in dropped)
                self.counters.dropped += len(dropped)
            self.log.info("utterance stored", utterance_id=message.utterance_id, room=message.room, seq=message.seq)
        self.submit(message)

    def _forget(self, seq: int | None) -> None:
        """Out of the outbox, on its thread (acknowledged, or dropped from a full queue)."""
        if self.outbox is not None and seq is not None:
            self._disk.submit(self.outbox.remove, seq).add_done_callback(self._disk_done)

    def _disk_done(self, future: Future[None]) -> None:
        if (exc := future.exception()) is not None:
            self.log.error("outbox update failed", error=str(exc))

    def submit(self, message: Outgoing) -> None:
        """Queue a message; never blocks. Past ``max_pending`` the oldest one is dropped.
        QoS 0 messages (partials) are only worth sending now: without a broker they are skipped."""
        if message.qos == 0 and not self.connected.is_set():
            self.counters.skipped += 1
            return
        if not self.connected.is_set():
            message.delayed = True
        if len(self.pending) >= self.settings.max_pending:
            lost = self.pending.popleft()
            self._forget(lost.seq)
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

    def submit_json(self, topic: str, payload: dict[str, Any], replace: bool = False, **kwargs: Any) -> None:
        """``replace``: drop messages to the same topic still waiting (a state: only the latest counts)."""
        if replace:
            self.pending = deque(m for m in self.pending if m.topic != topic or m.utterance_id is not None)
        self.submit(Outgoing(topic, self.encode(payload), **kwargs))

    async def finish(self) -> None:
        """Publish everything pending, then ``stopped``, then disconnect. Await with a timeout.
        Without a broker there is nothing to wait for: the utterances stay in the outbox."""
        self._closing = True
        self._closing_event.set()
        self._wake.set()
        if not self.connected.is_set():
            self._give_up()
        await self._done.wait()
        # The outbox's last removals are on disk before the process goes.
        await asyncio.wrap_future(self._disk.submit(lambda: None))
        self._disk.shutdown(wait=False)

    def _give_up(self) -> None:
        if not self._done.is_set():
            kept = len(self.outbox) if self.outbox is not None else 0
            self.log.warning("broker unreachable at shutdown", kept_in_outbox=kept, lost_other=len(self.pending) - kept)
            self._done.set()

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
            tls_context=self._tls,
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
                    for topic_filter, (qos, _) in self.handlers.items():
                        await client.subscribe(topic_filter, qos=qos)
                    self.connected.set()
                    self.attempted.set()
                    for announce in self.on_connect:
                        announce()
                    self.log.info("mqtt connected", client_id=self.client_id, pending=len(self.pending))
                    await self._session(client)
                    self._done.set()
                    self.log.info("mqtt disconnected cleanly", status="stopped")
                    return
            except (aiomqtt.MqttError, OSError) as exc:  # OSError: TLS refused (ssl.SSLError), no route
                was_connected = self.connected.is_set()
                self.connected.clear()
                for waiting in self.pending:
                    waiting.delayed = True
                self.counters.connect_failures += 1
                self.attempted.set()
                delay = backoff_delay(attempt, self.settings.reconnect_min_s, self.settings.reconnect_max_s)
                attempt += 1
                self.log.warning(
                    "mqtt connection lost" if was_connected else "mqtt connect failed",
                    error=str(exc),
                    attempt=attempt,
                    retry_in_s=round(delay, 2),
                    pending=len(self.pending),
                )
                if self._closing:
                    self._give_up()
                    return
                with contextlib.suppress(TimeoutError):  # a shutdown ends the wait at once
                    await asyncio.wait_for(self._closing_event.wait(), delay)
                if self._closing:
                    self._give_up()
                    return

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
            raw = message.payload
            payload = raw if isinstance(raw, bytes | bytearray) else str(raw).encode()
            for topic_filter, (_, handler) in self.handlers.items():
                if not message.topic.matches(topic_filter):
                    continue
                try:
                    handler(str(message.topic), bytes(payload))
                except Exception:  # a message must never take the connection (or the daemon) down
                    self.log.exception("message handler failed", topic=str(message.topic))

    async def _send_all(self, client: aiomqtt.Client) -> None:
        while True:
            while self.pending:
                item = self.pending[0]
                payload = with_delayed_flag(item.payload) if item.delayed and item.utterance_id else item.payload
                await client.publish(item.topic, payload, qos=item.qos, retain=item.retain)
                # Acknowledged (PUBACK for QoS 1): only now does it leave the queue and the outbox.
                if self.pending and self.pending[0] is item:
                    self.pending.popleft()
                self._forget(item.seq)
                self.counters.published += 1
                if item.utterance_id is not None:
                    now = time.monotonic()
                    self.log.info(
                        "utterance published",
                        room=item.room,
                        utterance_id=item.utterance_id,
                        topic=item.topic,
                        end_to_ack_ms=round((now - (item.decided_at or now)) * 1000, 1),
                        delayed=item.delayed,
                        queued_ms=round((now - item.queued_at) * 1000, 1),
                        **(item.summary or {}),
                    )
            if self._closing:
                await client.publish(self.status_topic, "stopped", qos=1, retain=True)
                return
            self._wake.clear()
            await self._wake.wait()
