"""MQTT publisher: holds messages until the broker acknowledges them, reconnects forever.

Messages wait in memory and leave the queue only after the broker's PUBACK (QoS 1), so a
broker that is down at start or goes away loses nothing; they are published in order once
it is back. The memory queue is bounded by ``mqtt.max_pending`` twice over: utterances that
are on disk stop entering it past the bound and wait in the outbox, read back in order as
the queue empties (the outbox's own bounds are the only ones that drop a stored utterance);
anything else past the bound drops the oldest such message, with an error log.

Text from outside (commands, file names, hotwords, device names) reaches payloads and
topics; every one is made valid UTF-8 here (``safe_text``), so no message can fail to
encode. A failing exit (a crash, a cancelled drain) publishes ``offline`` before it
disconnects: a clean DISCONNECT would stop the broker from sending the will.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from daemon.broker import (
    V5,
    V311,
    backoff_delay,
    first_protocol,
    payload_bytes,
    publish_properties,
    read_password,
    refuses_protocol,
    tls_context,
)
from daemon.config_mqtt import MqttSettings
from daemon.durable import Durable
from daemon.outbox import Outbox
from daemon.outgoing import Outgoing, PublisherCounters, with_delayed_flag
from daemon.safe import safe_text

PUBLISH_TIMEOUT_S = 10.0
# A failing exit waits this long at most to publish ``offline``.
OFFLINE_TIMEOUT_S = 2.0


class Publisher:
    def __init__(self, settings: MqttSettings, outbox: Outbox | None = None, config_path: Path | None = None) -> None:
        self.durable = Durable(outbox) if outbox is not None else None
        # Utterances from this seq on wait in the outbox only (the memory queue was full).
        self._on_disk_from: int | None = None
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
        # Topic filter -> (QoS, handler called with (topic, payload), and with the request's
        # Reply too when asked): commands on <prefix>/set, Home Assistant's birth message,
        # Hermes audio frames. Subscribed on every connect.
        self.handlers: dict[str, tuple[int, Callable[..., None], bool]] = {}
        self.protocol = first_protocol(settings)
        # Called after every (re)connect, before anything queued is sent (discovery messages).
        self.on_connect: list[Callable[[], None]] = []
        self.log = structlog.get_logger().bind(broker=f"{settings.host}:{settings.port}")

    @staticmethod
    def encode(payload: dict[str, Any]) -> str:
        return safe_text(json.dumps(payload, ensure_ascii=False))

    async def restore(self) -> int:
        """Queue what the outbox still holds from before this start, oldest first, flagged
        delayed (up to ``max_pending`` of it now, the rest as the queue empties)."""
        if self.durable is None:
            return 0
        self._on_disk_from = 0
        await self._refill()
        return len(self.durable)

    async def _refill(self) -> None:
        """The next utterances waiting in the outbox into the memory queue. Caught up when
        fewer come back than asked for: an insert the read did not see finishes after it,
        so its ``submit`` runs after this and finds ``_on_disk_from`` cleared."""
        assert self.durable is not None and self._on_disk_from is not None
        limit = self.settings.max_pending
        rows = await self.durable.rows(self._on_disk_from, limit)
        self._on_disk_from = rows[-1].seq + 1 if len(rows) >= limit else None
        for row in rows:
            self.pending.append(
                Outgoing(
                    row.topic,
                    row.payload,
                    utterance_id=row.utterance_id,
                    room=row.room,
                    seq=row.seq,
                    delayed=True,
                    durable=True,
                )
            )
        if rows:
            self._wake.set()

    def subscribe(
        self, topic_filter: str, handler: Callable[..., None], qos: int = 1, with_properties: bool = False
    ) -> None:
        """``with_properties``: the handler also gets the message's MQTT 5 properties (paho's
        Properties, None under 3.1.1): a response topic, correlation data."""
        self.handlers[topic_filter] = (qos, handler, with_properties)

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    async def submit_durable(self, message: Outgoing) -> None:
        """An utterance: on disk (on the outbox's thread) before it is queued, so a crash from
        here on loses nothing; then ``submit``. A degraded outbox keeps it in memory only."""
        message.durable = True
        if self.durable is not None and message.seq is None:
            recovering = self.durable.degraded is not None
            if await self._store(message):
                self.log.info("utterance stored", utterance_id=message.utterance_id, room=message.room, seq=message.seq)
                if recovering:  # the disk takes writes again: what waited in memory goes there too
                    for waiting in [m for m in self.pending if m.durable and m.seq is None]:
                        await self._store(waiting)
            else:
                self.log.error("utterance kept in memory only: outbox degraded", utterance_id=message.utterance_id)
        self.submit(message)

    async def _store(self, message: Outgoing) -> bool:
        assert self.durable is not None
        m = message
        stored = await self.durable.store(m.topic, m.payload, m.utterance_id, m.room, m.settles)
        if stored is None:
            return False
        message.seq, gone = stored
        if gone:  # past the outbox's bounds: out of the memory queue too (the outbox logged them)
            dropped = set(gone)
            self.pending = deque(m for m in self.pending if m.seq not in dropped)
            self.counters.dropped += len(dropped)
        return True

    def _forget(self, seq: int | None) -> None:
        """Out of the outbox, on its thread (acknowledged)."""
        if self.durable is not None and seq is not None:
            self.durable.forget(seq)

    def _on_disk_only(self, message: Outgoing) -> bool:
        """A stored utterance past the memory bound waits in the outbox instead (in order:
        once one waits there, the later ones do too until the queue has caught up)."""
        if not message.durable or message.seq is None:
            return False
        if self._on_disk_from is None:
            if sum(1 for m in self.pending if m.seq is not None) < self.settings.max_pending:
                return False
            self._on_disk_from = message.seq
            self.log.warning("publish queue full: utterances wait in the outbox", from_seq=message.seq)
        self.counters.waited_on_disk += 1
        self._wake.set()
        return True

    def submit(self, message: Outgoing) -> None:
        """Queue a message; never blocks. QoS 0 messages (partials) are only worth sending
        now: without a broker they are skipped. Past ``max_pending``: a stored utterance waits
        on disk; any other message drops the oldest message that is not on disk."""
        message.topic, message.payload = safe_text(message.topic), safe_text(message.payload)
        if message.correlation is not None and message.response_topic is not None:  # a request sent again
            self.pending = deque(m for m in self.pending if m.correlation != message.correlation)
        if message.qos == 0 and not self.connected.is_set():
            self.counters.skipped += 1
            return
        if not self.connected.is_set():
            message.delayed = True
        if self._on_disk_only(message):
            return
        in_memory_only = [m for m in self.pending if m.seq is None]
        if message.seq is None and len(in_memory_only) >= self.settings.max_pending:
            lost = in_memory_only[0]
            self.pending.remove(lost)
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
        if self.durable is not None:
            await self.durable.close()

    def _give_up(self) -> None:
        if not self._done.is_set():
            kept = len(self.durable) if self.durable is not None else 0
            lost = sum(1 for m in self.pending if m.seq is None)
            self.log.warning("broker unreachable at shutdown", kept_in_outbox=kept, lost_other=lost)
            self._done.set()

    def side_client(self, purpose: str) -> aiomqtt.Client:
        """A second connection to the same broker with the same credentials (no will)."""
        return self._client(f"{self.client_id}-{purpose}", will=False)

    def _client(self, identifier: str | None = None, will: bool = True) -> aiomqtt.Client:
        s = self.settings
        return aiomqtt.Client(
            s.host,
            s.port,
            identifier=identifier or self.client_id,
            username=s.username or None,
            password=self._password,
            keepalive=s.keepalive_s,
            will=aiomqtt.Will(self.status_topic, "offline", qos=1, retain=True) if will else None,
            timeout=PUBLISH_TIMEOUT_S,
            tls_context=self._tls,
            protocol=self.protocol,
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
                    for topic_filter, (qos, _, _) in self.handlers.items():
                        await client.subscribe(topic_filter, qos=qos)
                    self.connected.set()
                    self.attempted.set()
                    for announce in self.on_connect:
                        announce()
                    version = "5" if self.protocol == V5 else "3.1.1"
                    self.log.info("mqtt connected", client_id=self.client_id, pending=len(self.pending), mqtt=version)
                    try:
                        await self._session(client)
                    except aiomqtt.MqttError:
                        raise  # the connection is gone: the broker sends the will
                    except BaseException:
                        await self._say_offline(client)
                        raise
                    self._done.set()
                    self.log.info("mqtt disconnected cleanly", status="stopped")
                    return
            except (aiomqtt.MqttError, OSError) as exc:  # OSError: TLS refused (ssl.SSLError), no route
                was_connected = self.connected.is_set()
                self.connected.clear()
                for waiting in self.pending:
                    waiting.delayed = True
                self.counters.connect_failures += 1
                auto = self.protocol == V5 and self.settings.protocol == "auto"
                if auto and await refuses_protocol(exc, self.settings.host, self.settings.port):
                    self.protocol = V311  # for this process: the broker answered, it speaks only 3.1.1
                    self.log.warning("broker refused MQTT 5: connecting with 3.1.1", error=str(exc))
                    continue
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

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """Before a failing exit's DISCONNECT; on a dead connection the will does it."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.publish(self.status_topic, "offline", qos=1, retain=True), OFFLINE_TIMEOUT_S)

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
            payload = payload_bytes(message)
            for topic_filter, (_, handler, with_properties) in self.handlers.items():
                if not message.topic.matches(topic_filter):
                    continue
                try:
                    if with_properties:
                        handler(str(message.topic), payload, message.properties)
                    else:
                        handler(str(message.topic), payload)
                except Exception:  # a message must never take the connection (or the daemon) down
                    self.log.exception("message handler failed", topic=str(message.topic))

    async def _send_all(self, client: aiomqtt.Client) -> None:
        while True:
            while self.pending or self._on_disk_from is not None:
                if not self.pending:
                    await self._refill()
                    continue
                item = self.pending[0]
                payload: str | bytes = item.binary if item.binary is not None else item.payload
                if item.delayed and item.utterance_id:
                    payload = with_delayed_flag(item.payload)
                v5 = self.protocol == V5 and (item.correlation or item.response_topic)
                properties = publish_properties(item.correlation, item.response_topic) if v5 else None
                try:
                    await client.publish(item.topic, payload, qos=item.qos, retain=item.retain, properties=properties)
                except (aiomqtt.MqttError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # this message can never go (too large...): it alone is dropped
                    self._unpublishable(item, exc)
                    continue
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

    def _unpublishable(self, item: Outgoing, exc: Exception) -> None:
        if self.pending and self.pending[0] is item:
            self.pending.popleft()
        self._forget(item.seq)
        self.counters.dropped += 1
        self.log.error(
            "message cannot be published: dropped", topic=item.topic, utterance_id=item.utterance_id, error=repr(exc)
        )
