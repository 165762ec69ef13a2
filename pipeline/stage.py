"""The one shape every stage has: a name, an inbox, an output, ``run()``, and counters.

``None`` in a queue is the end of the stream: a stage that takes it finishes what it holds
(``finish``) and passes ``None`` on, so a shutdown drains the graph front to back. A stage
with its own way of receiving (the recognize stage gathers batches, the stitcher wakes on
deadlines) overrides ``run`` and ends the same way, with ``end()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import structlog

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

In = TypeVar("In")
Out = TypeVar("Out")
C = TypeVar("C", bound="DataclassInstance")


class Stage(Generic[In, Out, C]):
    name: ClassVar[str]
    counters: C  # one dataclass per stage; the status command and the stats read it

    def __init__(self, inbox: asyncio.Queue[In | None], output: asyncio.Queue[Out | None] | None) -> None:
        self.inbox = inbox
        self.output = output  # None: the last stage (it hands its items on some other way)
        self.log = structlog.get_logger().bind(stage=self.name)

    async def run(self) -> None:
        """Until the end marker: each item through ``handle``; then ``end()``."""
        while (item := await self.inbox.get()) is not None:
            await self.handle(item)
        await self.end()

    async def handle(self, item: In) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        """Hand on whatever is held before the end marker goes on (the stitcher's pieces)."""

    async def emit(self, item: Out) -> None:
        if self.output is not None:
            await self.output.put(item)

    async def end(self) -> None:
        await self.finish()
        if self.output is not None:
            await self.output.put(None)

    def counters_dict(self) -> dict[str, Any]:
        """The stage's counters, for the status command and the stats."""
        return dataclasses.asdict(self.counters)
