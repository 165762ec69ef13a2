"""What each MQTT command does to the running daemon (parsing is in daemon/commands.py),
and the reload that the ``reload`` command and SIGHUP share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from daemon import __version__
from daemon.broker import BadReply, Reply, reply_address
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
from daemon.config_file import ConfigError, changed_keys, load_config
from daemon.jobs import BatchJobs
from daemon.runtime import Runtime
from pipeline.text.dictionary import DictionaryError


async def reload_config(rt: Runtime) -> dict[str, Any]:
    """The dictionary and the hotwords now; any other change is reported and waits for a
    restart. Raises ConfigError/DictionaryError and leaves everything as it was."""
    log = structlog.get_logger()
    config = load_config(rt.config_path)
    entries = rt.pipeline.text.reload_dictionary()["entries"] if rt.pipeline else 0
    rt.states.set_hotwords(None, config.recognizer.hotwords)
    for r in config.rooms:
        if r.name in rt.states:
            rt.states.set_hotwords(r.name, r.hotwords)
    pending = changed_keys(rt.config, config)
    if pending:
        log.warning("config changes need a restart", keys=pending)
    hotwords = list(rt.states.hotwords)
    log.info("config reloaded", dictionary_entries=entries, hotwords=hotwords)
    return {"dictionary_entries": entries, "hotwords": hotwords, "needs_restart": pending}


class Controller:
    """Runs commands against the running daemon and answers each on ``<prefix>/response``;
    ``status`` builds the ``status`` command's result."""

    def __init__(self, runtime: Runtime, jobs: BatchJobs, status: Callable[[], dict[str, Any]]) -> None:
        self.rt = runtime
        self.jobs = jobs
        self.status = status
        self.log = structlog.get_logger().bind(component="control")
        self._tasks: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.rejected = 0
        publisher = runtime.publisher
        publisher.subscribe(publisher.topic("set"), self.on_message, with_properties=True)
        publisher.subscribe(publisher.topic("+", "set"), self.on_message, with_properties=True)

    def on_message(self, topic: str, payload: bytes, properties: Any = None) -> None:
        """Called by the publisher for every message on the command topics; never raises.
        An MQTT 5 request's answer goes to its response topic with its correlation data."""
        publisher = self.rt.publisher
        rest = topic[len(publisher.prefix) + 1 :]
        room = rest[: -len("/set")] if rest.endswith("/set") else None
        try:
            reply: Reply | BadReply | None = reply_address(properties)
        except BadReply as exc:
            reply = exc
        try:
            command = parse(payload)
            if isinstance(reply, BadReply):
                raise CommandError(str(reply), command.command, command.transaction)
        except CommandError as exc:
            self._reply("error", exc.command, exc.transaction, str(exc), topic=topic, reply=_good(reply))
            return
        task = asyncio.get_running_loop().create_task(self._run(command, room, topic, _good(reply)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, command: AnyCommand, room: str | None, topic: str, reply: Reply | None) -> None:
        c = command
        try:
            result = await self.execute(command, room)
        except (CommandError, ConfigError, DictionaryError) as exc:
            self._reply("error", c.command, c.transaction, str(exc), topic=topic, reply=reply)
            return
        except Exception as exc:  # a failing command must not take the daemon down
            self.log.exception("command failed", command=command.command, topic=topic)
            self._reply("error", c.command, c.transaction, f"internal error: {exc}", topic=topic, reply=reply)
            return
        self._reply("ok", c.command, c.transaction, None, result, topic=topic, reply=reply)

    async def execute(self, command: AnyCommand, room: str | None) -> dict[str, Any] | None:
        """Runs one command (from MQTT, or another door: the caption page); raises CommandError."""
        if room is not None and room not in self.rt.states:
            raise CommandError(f"no room named {room!r}", command.command, command.transaction)
        return await self._execute(command, room)

    async def _execute(self, command: AnyCommand, room: str | None) -> dict[str, Any] | None:
        rt = self.rt
        names = [room] if room is not None else rt.states.names()
        if isinstance(command, Pause | Resume):
            for name in names:
                rt.states[name].paused = isinstance(command, Pause)
                if (running := rt.room(name)) is not None:
                    rt.publish_state(running)
            return {"rooms": names, "paused": isinstance(command, Pause)}
        if isinstance(command, Hotwords):
            words = rt.states.set_hotwords(room, command.words)
            return {"room": room, "hotwords": list(words)}
        if isinstance(command, Language):
            if command.language is not None and not rt.multilingual:
                raise CommandError(f"the model {rt.model_name} is English-only", command.command, command.transaction)
            for name in names:
                rt.states[name].language = command.language
            return {"rooms": names, "language": command.language}
        if isinstance(command, ClearCache):
            await rt.release_model_memory()
            return None
        if isinstance(command, Reload):
            return await reload_config(rt)
        if isinstance(command, Transcribe):
            if room is not None:
                raise CommandError(
                    "transcribe goes to <prefix>/set, not to a room", command.command, command.transaction
                )
            try:
                return await self.jobs.run(command.path, command.recursive)
            except CommandError as exc:
                raise CommandError(str(exc), command.command, command.transaction) from None
        if isinstance(command, Status):
            return {"version": __version__, **self.status()}
        raise CommandError("not handled", command.command, command.transaction)  # unreachable: parse knows all

    def _reply(
        self,
        status: str,
        command: str | None,
        transaction: str | None,
        error: str | None,
        result: dict[str, Any] | None = None,
        topic: str = "",
        reply: Reply | None = None,
    ) -> None:
        if status == "ok":
            self.handled += 1
            self.log.info("command done", command=command, topic=topic, transaction=transaction)
        else:
            self.rejected += 1
            self.log.warning("command refused", command=command, topic=topic, error=error, transaction=transaction)
        publisher = self.rt.publisher
        answer = response(status, command, transaction, error, result)
        if reply is None:
            publisher.submit_json(publisher.topic("response"), answer, qos=1)
        else:
            publisher.submit_json(reply.topic, answer, qos=1, correlation=reply.correlation)


def _good(reply: Reply | BadReply | None) -> Reply | None:
    """A bad response topic is answered on <prefix>/response instead."""
    return reply if isinstance(reply, Reply) else None
