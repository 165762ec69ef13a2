"""Speech-to-text over the Wyoming protocol, for Home Assistant's Assist (off by default).

Per connection, as the ``wyoming`` package (1.10) defines the events: ``describe`` gets
``info`` (one ASR program, the loaded model and its languages, transcript streaming);
``transcribe`` {language} then ``audio-start`` / ``audio-chunk``... / ``audio-stop`` gets
``transcript-start``, a ``transcript-chunk`` per recognized slice, the final ``transcript``
and ``transcript-stop`` (clients that do not stream read the ``transcript`` and pass the
others by). Audio of any rate, width and channel count is converted to 16 kHz mono. The
recognition goes through daemon/requests.py: the rooms' recognizer and text stage, the
rooms first.

Bad input gets an ``error`` event and costs only its own connection: a line that is not a
JSON event, an event or payload over the size limits, audio before ``audio-start``, more
audio than ``wyoming.max_audio_s`` (the rest of that audio is passed over, the connection
stays). We read the events ourselves (the package's reader
treats a malformed line as the end of the stream, so the client would hear nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import TYPE_CHECKING

import numpy as np
import structlog
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info

from daemon.requests import RequestError, Requests

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncZeroconf

    from daemon.config_interfaces import WyomingSettings
    from daemon.runtime import Runtime

RATE, WIDTH, CHANNELS = 16000, 2, 1
MAX_LINE = 64 * 1024  # one event's JSON header
MAX_PART = 1 << 20  # its data or payload: a 1 MB audio chunk is 30 s of 16 kHz stereo
ZEROCONF_TYPE = "_wyoming._tcp.local."


def outgoing_address() -> str:
    """The address of the interface multicast leaves by (no packet is sent: a UDP socket's
    connect only picks the route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("224.0.0.251", 5353))
        return str(probe.getsockname()[0])


ATTRIBUTION = Attribution(name="roomscribe", url="https://github.com/roomscribe/roomscribe")


class BadEvent(ValueError):
    """What the client sent cannot be read as a Wyoming event."""


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event; None at the end of the stream; BadEvent with the reason otherwise."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadEvent("the stream ended inside an event") from None
    except asyncio.LimitOverrunError:
        raise BadEvent(f"an event header longer than {MAX_LINE} bytes") from None
    try:
        header = json.loads(line)
        kind = header["type"]
        data = header.get("data") or {}
        data_length, payload_length = int(header.get("data_length") or 0), int(header.get("payload_length") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadEvent("not a Wyoming event (a JSON object with a type)") from None
    if not isinstance(kind, str) or not isinstance(data, dict) or not 0 <= data_length <= MAX_PART:
        raise BadEvent("not a Wyoming event (type, data or data_length malformed)")
    if not 0 <= payload_length <= MAX_PART:
        raise BadEvent(f"payload_length {payload_length} is over the {MAX_PART}-byte limit")
    try:
        if data_length:
            more = json.loads(await reader.readexactly(data_length))
            if not isinstance(more, dict):
                raise BadEvent("the event's data is not a JSON object")
            data.update(more)
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise BadEvent("the stream ended inside an event") from None
    except ValueError:
        raise BadEvent("the event's data is not JSON") from None
    return Event(type=kind, data=data, payload=payload)


class Session:
    """One client connection: its transcribe request and the audio gathered so far."""

    def __init__(self, server: WyomingServer, writer: asyncio.StreamWriter) -> None:
        self.server, self.writer = server, writer
        self.language: str | None = None
        self.converter = AudioChunkConverter(rate=RATE, width=WIDTH, channels=CHANNELS)
        self.audio: list[bytes] | None = None  # None until audio-start
        self.bytes = 0
        self.refused = False  # too much audio: the rest of it is passed over until audio-stop

    async def send(self, event: Event) -> None:
        await async_write_event(event, self.writer)

    async def error(self, text: str, code: str) -> None:
        await self.send(Error(text=text, code=code).event())

    async def handle(self, event: Event) -> bool:
        """False: end the connection (after an error that leaves the stream unusable)."""
        if Describe.is_type(event.type):
            await self.send(self.server.info().event())
        elif Transcribe.is_type(event.type):
            language = Transcribe.from_event(event).language
            self.language = self.server.language(language)
        elif AudioStart.is_type(event.type):
            self.audio, self.bytes, self.refused = [], 0, False
            self.converter = AudioChunkConverter(rate=RATE, width=WIDTH, channels=CHANNELS)
        elif AudioChunk.is_type(event.type):
            return await self._chunk(event)
        elif AudioStop.is_type(event.type):
            return await self._stop()
        return True  # other events (ping, ...) are not for an ASR server

    async def _chunk(self, event: Event) -> bool:
        if self.audio is None:
            if not self.refused:
                await self.error("audio-chunk before audio-start", "audio-not-started")
            return True
        try:
            chunk = self.converter.convert(AudioChunk.from_event(event))
        except Exception as exc:  # a missing field, a width audioop cannot convert (audioop.error)
            await self.error(f"unreadable audio-chunk ({exc!r})", "bad-audio")
            return False
        self.audio.append(chunk.audio)
        self.bytes += len(chunk.audio)
        limit = self.server.settings.max_audio_s
        if self.bytes > limit * RATE * WIDTH:
            # Said once; the connection stays: closing it with the client's chunks unread
            # would reset it, and the client could lose the error before reading it.
            self.audio, self.refused = None, True
            await self.error(f"more than wyoming.max_audio_s = {limit:g} s of audio", "audio-too-long")
        return True

    async def _stop(self) -> bool:
        if self.audio is None:
            if not self.refused:
                await self.error("audio-stop before audio-start", "audio-not-started")
            self.refused = False
            return True
        pcm = b"".join(self.audio)
        self.audio = None
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        language = self.language
        # What the text will be in, when known before recognition (an English-only model).
        expected = language or self.server.fixed_language()
        await self.send(TranscriptStart(language=expected).event())
        text, lang = "", expected or "en"
        if len(samples):
            try:
                answer = await self.server.requests.recognize(samples, language, "wyoming")
            except RequestError as exc:
                await self.error(str(exc), "not-ready")
                return True
            text, lang = answer.text, answer.language
            for piece in answer.pieces:
                await self.send(TranscriptChunk(text=piece).event())
        await self.send(Transcript(text=text, language=lang).event())
        await self.send(TranscriptStop().event())
        self.server.log.info("wyoming transcript", seconds=round(len(samples) / RATE, 2), chars=len(text))
        return True


class WyomingServer:
    def __init__(self, settings: WyomingSettings, runtime: Runtime, requests: Requests) -> None:
        self.settings, self.rt, self.requests = settings, runtime, requests
        self.log = structlog.get_logger().bind(component="wyoming")
        self._server: asyncio.Server | None = None
        self._zeroconf: AsyncZeroconf | None = None
        self.bad_events = 0

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the system gave for port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def info(self) -> Info:
        recognizer = self.rt.recognizer
        caps = recognizer.capabilities if recognizer is not None else None
        languages = list(caps.written_languages) if caps is not None else ["en"]
        model = AsrModel(
            name=self.rt.model_name, attribution=ATTRIBUTION, installed=recognizer is not None,
            description=f"roomscribe: {self.rt.model_name}", version=None, languages=languages,
        )  # fmt: skip
        program = AsrProgram(
            name="roomscribe", attribution=ATTRIBUTION, installed=True, description="roomscribe speech-to-text",
            version=None, models=[model], supports_transcript_streaming=True,
        )  # fmt: skip
        return Info(asr=[program])

    def language(self, asked: str | None) -> str | None:
        """The language to decode in: the client's when the model knows it (Home Assistant
        sends its own code, e.g. "en" or "zh-cn"), else the model's own choice."""
        recognizer = self.rt.recognizer
        if not asked or recognizer is None or not recognizer.capabilities.multilingual:
            return None
        base = asked.lower().replace("_", "-").split("-")[0]
        return base if base in recognizer.capabilities.languages else None

    def fixed_language(self) -> str | None:
        recognizer = self.rt.recognizer
        return "en" if recognizer is not None and not recognizer.capabilities.multilingual else None

    async def start(self) -> None:
        """Binds the port (a port in use fails the start) but answers nobody yet: Home
        Assistant reads ``info`` once when it sets the integration up, and must not get one
        without the model's languages. A client that comes early waits in the backlog."""
        s = self.settings
        self._server = await asyncio.start_server(self._connection, s.host, s.port, limit=MAX_LINE, start_serving=False)

    async def serve(self) -> None:
        """Once the model is loaded."""
        if self._server is None:
            return
        await self._server.start_serving()
        self.log.info("wyoming server listening", host=self.settings.host, port=self.port)
        if self.settings.zeroconf:
            await self._announce()

    async def _announce(self) -> None:
        """``_wyoming._tcp`` by mDNS, what Home Assistant's discovery looks for; withdrawn
        (a goodbye packet) when the server stops, so Home Assistant does not keep a ghost."""
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        name = self.settings.zeroconf_name or f"roomscribe-{socket.gethostname()}"
        if self.settings.host in ("127.0.0.1", "::1", "localhost"):
            # An address only this machine can reach is no use to announce.
            self.log.warning("wyoming: not announced, the server listens on this machine only", host=self.settings.host)
            return
        try:
            host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else outgoing_address()
            info = AsyncServiceInfo(
                ZEROCONF_TYPE, f"{name}.{ZEROCONF_TYPE}", addresses=[socket.inet_aton(host)], port=self.port
            )
            zeroconf = AsyncZeroconf()
            await zeroconf.async_register_service(info)
        except (OSError, ValueError) as exc:  # no multicast route, a name taken: the server still serves
            self.log.error("wyoming: not announced by mDNS", error=str(exc))
            return
        self._zeroconf = zeroconf
        self.log.info("wyoming server announced", name=name, address=host, port=self.port)

    async def stop(self) -> None:
        if self._zeroconf is not None:
            zeroconf, self._zeroconf = self._zeroconf, None
            await zeroconf.async_unregister_all_services()
            await zeroconf.async_close()
        if self._server is not None:  # once: App stops the doors early, and again on the way out
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, writer)
        try:
            while (event := await read_event(reader)) is not None:
                if not await session.handle(event):
                    break
        except BadEvent as exc:
            self.bad_events += 1
            self.log.warning("wyoming: bad event; closing the connection", reason=str(exc))
            with contextlib.suppress(ConnectionError, OSError):
                await session.error(str(exc), "bad-event")
        except (ConnectionError, OSError) as exc:
            self.log.info("wyoming client went away", error=str(exc))
        except Exception:
            # A bug must cost this connection only, never the daemon.
            self.log.exception("wyoming connection failed")
        finally:
            writer.close()
