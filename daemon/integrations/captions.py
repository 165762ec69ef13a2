"""The live-caption page and its WebSockets, on the HTTP server of ``[http]``.

- ``GET /``: the page (daemon/assets/captions.html): every room's partials and finished
  utterances as they come, large text, the daemon's status, pause/resume and release of
  cached GPU memory; and, for a room whose source is ``browser``, the browser's microphone.
- ``GET /ws``: JSON events out (``hello``, ``status`` every 2 s, ``partial``, ``utterance``,
  ``state``: the MQTT payloads, with ``type``); commands in, ``{"command": "pause" | "resume"
  | "clear_cache" | "status", "room": optional}``, each answered by one ``response`` (the
  MQTT command response). Garbage gets an ``error`` event; the socket stays open.
- ``GET /ws/mic/<room>``: binary messages of 16-bit little-endian mono PCM at ``?rate=``
  (default 16000) into that room's push source; the newest page to connect is the one heard
  (a reloaded page takes over from the old one). When the last page goes away the room gets
  enough silence for its VAD to finish the utterance it holds, so nothing said is lost.

A browser sends no Authorization header on a WebSocket: with ``http.token_file`` set the
page passes the token as ``?token=`` (open the page as ``/?token=...``). Sockets from
another site's page (an ``Origin`` that is not this server) are refused, so a web page the
user visits cannot listen in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import structlog
from aiohttp import WSMsgType, web

from daemon.commands import ClearCache, CommandError, Pause, Resume, Status, parse, response
from daemon.config_sources import BrowserSourceSettings
from daemon.status import status_line
from pipeline.messages import SAMPLE_RATE
from pipeline.sources import PushSource

if TYPE_CHECKING:
    from daemon.control import Controller
    from daemon.runtime import Runtime

PAGE_COMMANDS = (Pause, Resume, ClearCache, Status)
STATUS_EVERY_S = 2.0
MAX_MESSAGE_BYTES = 1 << 20  # a 500 ms chunk at 48 kHz is 48 kB
MIN_RATE, MAX_RATE = 8000, 192_000


def same_origin(request: web.Request) -> bool:
    """No Origin (not a browser) or this server's own: a WebSocket another site opens from
    the user's browser is refused."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


class CaptionPage:
    def __init__(self, runtime: Runtime, controller: Controller) -> None:
        self.rt, self.controller = runtime, controller
        self.log = structlog.get_logger().bind(component="captions")
        self.page = (resources.files("daemon") / "assets" / "captions.html").read_bytes()
        self.mics: dict[str, web.WebSocketResponse] = {}  # room -> the page whose microphone it hears
        self.bad_messages = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.index), web.get("/ws", self.events), web.get("/ws/mic/{room}", self.microphone)]

    def mic_rooms(self) -> list[str]:
        return [r.name for r in self.rt.config.rooms if r.enabled and isinstance(r.source, BrowserSourceSettings)]

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})  # fmt: skip

    def status(self) -> dict[str, Any]:
        rt = self.rt
        rooms = {r.name: {"state": r.counters.state, "paused": r.state.paused} for r in rt.rooms}
        return {
            "model": rt.model_name,
            "device": rt.recognizer.device if rt.recognizer else None,
            "queue": rt.queue_depths(),
            "utterances": rt.pipeline.recognize.counters.utterances if rt.pipeline else 0,  # pieces recognized
            "rooms": rooms,
            "line": status_line(rt),
        }

    async def _open(self, request: web.Request) -> web.WebSocketResponse:
        if not same_origin(request):
            raise web.HTTPForbidden(reason="WebSocket from another origin")
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        return ws

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)
        queue = self.rt.events.listen()
        await ws.send_json({"type": "hello", "mic_rooms": self.mic_rooms(), **self.status()})
        sender = asyncio.get_running_loop().create_task(self._send_events(ws, queue))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await ws.send_json(await self._command(message.data))
                elif message.type == WSMsgType.BINARY:
                    await ws.send_json(self._bad("binary messages go to /ws/mic/<room>"))
        finally:
            self.rt.events.forget(queue)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    async def _send_events(self, ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        next_status = loop.time() + STATUS_EVERY_S
        with contextlib.suppress(ConnectionError):  # the page went away; the reader ends too
            while not ws.closed:
                try:
                    event = await asyncio.wait_for(queue.get(), max(0.0, next_status - loop.time()))
                except TimeoutError:
                    next_status = loop.time() + STATUS_EVERY_S
                    event = {"type": "status", **self.status()}
                await ws.send_json(event)

    def _bad(self, error: str) -> dict[str, Any]:
        self.bad_messages += 1
        return {"type": "error", "error": error}

    async def _command(self, text: str) -> dict[str, Any]:
        """One command from the page, answered like an MQTT command."""
        try:
            data = json.loads(text)
            room = data.pop("room", None) if isinstance(data, dict) else None
            if room is not None and not isinstance(room, str):
                raise CommandError("room must be a string")
            command = parse(json.dumps(data).encode())
            if not isinstance(command, PAGE_COMMANDS):
                raise CommandError(f"{command.command!r} is not available from the page", command.command)
        except (ValueError, RecursionError) as exc:  # CommandError is a ValueError
            cmd = exc if isinstance(exc, CommandError) else CommandError(f"malformed JSON: {exc}")
            self.bad_messages += 1
            return {"type": "response", **response("error", cmd.command, cmd.transaction, str(cmd))}
        try:
            result = await self.controller.execute(command, room)
        except CommandError as exc:
            return {"type": "response", **response("error", command.command, command.transaction, str(exc))}
        return {"type": "response", **response("ok", command.command, command.transaction, None, result)}

    async def microphone(self, request: web.Request) -> web.WebSocketResponse:
        name = request.match_info["room"]
        room = self.rt.room(name)
        source = room.source if room is not None and name in self.mic_rooms() else None
        if not isinstance(source, PushSource):  # a browser room's source always is one
            source = None
        try:
            rate = int(request.query.get("rate", "16000"))
        except ValueError:
            rate = 0
        ws = await self._open(request)
        if source is None or not MIN_RATE <= rate <= MAX_RATE:
            why = (
                f"no browser microphone room named {name!r}"
                if source is None
                else f"rate {rate} out of {MIN_RATE}-{MAX_RATE}"
            )
            await ws.send_json(self._bad(why))
            await ws.close(code=4404 if source is None else 4400, message=why.encode()[:120])
            return ws
        if (older := self.mics.get(name)) is not None:
            await older.send_json({"type": "error", "error": "another page took this microphone room"})
            await older.close(code=4409, message=b"another page took this microphone room")
        self.mics[name] = ws
        self.log.info("browser microphone connected", room=name, rate=rate)
        try:
            await self._hear(ws, source, rate)
        finally:
            if self.mics.get(name) is ws:
                del self.mics[name]
                self._flush(name, source)
            self.log.info("browser microphone disconnected", room=name)
        return ws

    async def _hear(self, ws: web.WebSocketResponse, source: PushSource, rate: int) -> None:
        async for message in ws:
            if message.type != WSMsgType.BINARY:
                await ws.send_json(self._bad("expected binary 16-bit PCM"))
            elif len(message.data) % 2:
                await ws.send_json(self._bad("16-bit PCM has an even number of bytes"))
            elif message.data:
                samples = np.frombuffer(message.data, dtype="<i2").astype(np.float32) / 32768.0
                source.push(samples, rate)

    def _flush(self, room: str, source: PushSource) -> None:
        """Silence past the room's hangover, so the VAD ends the utterance the page cut off."""
        settings = next(r for r in self.rt.config.rooms if r.name == room)
        params = self.rt.config.room_vad_params(settings)
        seconds = (params.hangover_ms + params.post_roll_ms) / 1000 + 1.0
        source.push(np.zeros(int(SAMPLE_RATE * seconds), dtype=np.float32), SAMPLE_RATE)
