"""What each MQTT command does to the running daemon (parsing is in daemon/commands.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from daemon import __version__
from daemon.commands import (
    AnyCommand,
    ClearCache,
    CommandError,
    Hotwords,
    Language,
    Pause,
    Reload,
    Resume,
    Status,
    Transcribe,
    parse,
    response,
)
from daemon.config import ConfigError
from pipeline.text.dictionary import DictionaryError

if TYPE_CHECKING:
    from daemon.app import App


class Controller:
    """Runs commands against ``app`` and answers each on ``<prefix>/response``."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.log = structlog.get_logger().bind(component="control")
        self._tasks: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.rejected = 0

    def on_message(self, topic: str, payload: bytes) -> None:
        """Called by the publisher for every message on the command topics; never raises."""
        publisher = self.app.publisher
        rest = topic[len(publisher.prefix) + 1 :]
        room = rest[: -len("/set")] if rest.endswith("/set") else None
        try:
            command = parse(payload)
            if room is not None and room not in self.app.rooms_by_name:
                raise CommandError(f"no room named {room!r}", command.command, command.transaction)
        except CommandError as exc:
            self._reply("error", exc.command, exc.transaction, str(exc), topic=topic)
            return
        task = asyncio.get_running_loop().create_task(self._run(command, room, topic))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, command: AnyCommand, room: str | None, topic: str) -> None:
        try:
            result = await self._execute(command, room)
        except (CommandError, ConfigError, DictionaryError) as exc:
            self._reply("error", command.command, command.transaction, str(exc), topic=topic)
            return
        except Exception as exc:  # a failing command must not take the daemon down
            self.log.exception("command failed", command=command.command, topic=topic)
            self._reply("error", command.command, command.transaction, f"internal error: {exc}", topic=topic)
            return
        self._reply("ok", command.command, command.transaction, None, result, topic=topic)

    async def _execute(self, command: AnyCommand, room: str | None) -> dict[str, Any] | None:
        app = self.app
        rooms = [app.rooms_by_name[room]] if room is not None else list(app.rooms_by_name.values())
        if isinstance(command, Pause | Resume):
            for r in rooms:
                r.paused = isinstance(command, Pause)
                app.publish_state(r)
            return {"rooms": [r.name for r in rooms], "paused": isinstance(command, Pause)}
        if isinstance(command, Hotwords):
            words = tuple(dict.fromkeys(command.words))
            if room is None:
                app.global_hotwords = words
            else:
                app.room_hotwords[room] = words
            return {"room": room, "hotwords": list(words)}
        if isinstance(command, Language):
            if command.language is not None and not app.multilingual:
                raise CommandError(f"the model {app.model_name} is English-only", command.command, command.transaction)
            for r in rooms:
                r.language = command.language
            return {"rooms": [r.name for r in rooms], "language": command.language}
        if isinstance(command, ClearCache):
            await app.release_model_memory()
            return None
        if isinstance(command, Reload):
            return await app.reload_config()
        if isinstance(command, Transcribe):
            if room is not None:
                raise CommandError(
                    "transcribe goes to <prefix>/set, not to a room", command.command, command.transaction
                )
            try:
                return await app.run_batch(command.path, command.recursive)
            except CommandError as exc:
                raise CommandError(str(exc), command.command, command.transaction) from None
        if isinstance(command, Status):
            return {"version": __version__, **app.status()}
        raise CommandError("not handled", command.command, command.transaction)  # unreachable: parse knows all

    def _reply(
        self,
        status: str,
        command: str | None,
        transaction: str | None,
        error: str | None,
        result: dict[str, Any] | None = None,
        topic: str = "",
    ) -> None:
        if status == "ok":
            self.handled += 1
            self.log.info("command done", command=command, topic=topic, transaction=transaction)
        else:
            self.rejected += 1
            self.log.warning("command refused", command=command, topic=topic, error=error, transaction=transaction)
        publisher = self.app.publisher
        publisher.submit_json(publisher.topic("response"), response(status, command, transaction, error, result), qos=1)
