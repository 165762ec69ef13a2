"""What a running daemon is made of: built by App in order, read by the other daemon modules
(control, service, jobs, integrations, publish), so none of them needs the App itself."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import Config
from daemon.events import LocalEvents
from daemon.mqtt import Publisher
from pipeline.graph import QUEUES, Pipeline
from pipeline.health import BusyWatch
from pipeline.room import Room
from pipeline.roomstate import RoomStates

if TYPE_CHECKING:
    from models.api import Recognizer


def run_token() -> str:
    """A short token of the start time, so utterance ids stay unique across restarts."""
    value, digits = int(time.time()), "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, rem = divmod(value, 36)
        out = digits[rem] + out
    return out


@dataclass
class Runtime:
    config: Config
    config_path: Path
    publisher: Publisher
    states: RoomStates
    # One thread owns the recognizer (its threading contract); another runs the VADs so
    # that a long model call never delays voice detection.
    model_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="model")
    )
    vad_executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="vad"))
    watch: BusyWatch = field(default_factory=BusyWatch)
    run: str = field(default_factory=run_token)
    started_at: float = field(default_factory=time.monotonic)
    events: LocalEvents = field(default_factory=LocalEvents)  # the same, for the caption page
    # Built once the model is loaded:
    recognizer: Recognizer | None = None
    pipeline: Pipeline | None = None
    rooms: list[Room] = field(default_factory=list)
    stalled: dict[str, float] = field(default_factory=dict)  # what the watchdog found stuck, for how long

    def room(self, name: str) -> Room | None:
        return next((r for r in self.rooms if r.name == name), None)

    @property
    def model_name(self) -> str:
        return self.recognizer.name if self.recognizer else self.config.recognizer.model

    @property
    def multilingual(self) -> bool:
        return self.recognizer is not None and self.recognizer.capabilities.multilingual

    def publish_state(self, room: Room) -> None:
        """``<prefix>/<room>/state``, retained: listening, speaking, paused. Only the latest
        state waits for the broker; older ones not yet sent are replaced."""
        s = room.counters.state
        state: dict[str, object] = {
            "listening": s in ("listening", "speaking"),
            "speaking": s == "speaking",
            "paused": room.state.paused,
            "state": s,
        }
        if s in ("unavailable", "failed"):
            state["error"] = room.counters.last_error
        if (workers := getattr(self.recognizer, "workers_online", None)) is not None:
            state["workers_online"] = workers  # remote recognition: 0 means utterances wait
        self.events.emit("state", {"room": room.name, **state})
        self.publisher.submit_json(self.publisher.topic(room.name, "state"), state, qos=1, retain=True, replace=True)

    async def release_model_memory(self) -> None:
        if self.recognizer is not None:
            await asyncio.get_running_loop().run_in_executor(self.model_executor, self.recognizer.release_memory)

    def queue_depths(self) -> dict[str, int]:
        depths = self.pipeline.queue_depths() if self.pipeline else dict.fromkeys(QUEUES, 0)
        return {**depths, "mqtt_pending": len(self.publisher.pending)}

    def shutdown_executors(self) -> None:
        self.model_executor.shutdown(wait=False, cancel_futures=True)
        self.vad_executor.shutdown(wait=False, cancel_futures=True)
