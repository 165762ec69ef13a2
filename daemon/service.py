"""The service loop: READY=1 once the model is loaded, the broker tried and capture
started; then, every few seconds, the watchdog ping (only while nothing is stalled),
STATUS= for ``systemctl status``, and the stats (MQTT and Prometheus)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from daemon.errors import StartupError
from daemon.notify import Notifier, watchdog_interval_s
from daemon.runtime import Runtime
from daemon.stats import serve_metrics
from daemon.status import snapshot, status_line

# READY=1 waits this long at most for the first broker attempt and the rooms' first audio.
STARTUP_WAIT_S = 10.0
# How often the loop looks at progress, updates STATUS= and the stats snapshot.
SERVICE_TICK_S = 5.0


class Service:
    def __init__(self, runtime: Runtime, notifier: Notifier, bad_audio_frames: Callable[[], int]) -> None:
        self.rt = runtime
        self.notifier = notifier
        self.bad_audio_frames = bad_audio_frames
        self.last_snapshot: dict[str, Any] = {}
        self.log = structlog.get_logger().bind(component="service")
        self._stop_metrics: Callable[[], None] | None = None

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.rt, self.bad_audio_frames())

    async def run(self) -> None:
        await self._wait_until_up()
        self.notifier.ready(status_line(self.rt))
        self.log.info("ready", notify=self.notifier.enabled, mqtt_connected=self.rt.publisher.connected.is_set())
        watchdog = watchdog_interval_s()
        daemon = self.rt.config.daemon
        tick = min(watchdog or SERVICE_TICK_S, SERVICE_TICK_S)
        next_stats = time.monotonic() + daemon.stats_interval_s
        last_status = ""
        try:
            self.last_snapshot = self.snapshot()
            while True:
                self._check_stalls(daemon.stall_timeout_s)
                if watchdog is not None and not self.rt.stalled:
                    self.notifier.watchdog()
                if (line := status_line(self.rt)) != last_status:
                    self.notifier.status(line)
                    last_status = line
                self.last_snapshot = self.snapshot()
                if daemon.stats_interval_s and time.monotonic() >= next_stats:
                    next_stats += daemon.stats_interval_s
                    publisher = self.rt.publisher
                    publisher.submit_json(publisher.topic("stats"), self.last_snapshot, qos=0)
                await asyncio.sleep(tick)
        finally:
            self.stop_metrics()

    def stop_metrics(self) -> None:
        if self._stop_metrics is not None:
            self._stop_metrics()
            self._stop_metrics = None

    def start_metrics(self) -> None:
        """The Prometheus endpoint, bound before anything runs: a port in use is a start-up
        error that names it (exit 3), not a service loop that dies unseen."""
        port = self.rt.config.daemon.metrics_port
        if not port:
            return
        try:
            self._stop_metrics = serve_metrics(port, lambda: self.last_snapshot)
        except OSError as exc:
            raise StartupError(
                f"daemon.metrics_port = {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc})"
            ) from None

    async def _wait_until_up(self) -> None:
        rooms = self.rt.rooms
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_WAIT_S):
                await self.rt.publisher.attempted.wait()
                await asyncio.gather(*(room.started.wait() for room in rooms))
        waiting = [room.name for room in rooms if not room.started.is_set()]
        if waiting:
            self.log.warning("rooms still waiting for audio at startup", rooms=waiting)

    def _check_stalls(self, deadline_s: float) -> None:
        stalled = self.rt.watch.stuck(deadline_s)
        if set(stalled) - set(self.rt.stalled):  # something newly stalled
            self.log.error(
                "pipeline stalled: watchdog pings stopped",
                stalled={k: round(v, 1) for k, v in stalled.items()},
                deadline_s=deadline_s,
            )
        elif self.rt.stalled and not stalled:
            self.log.warning("pipeline moving again: watchdog pings resumed")
        self.rt.stalled = stalled
