"""The daemon's HTTP server (``[http]``, off by default), on aiohttp: the OpenAI-compatible
transcription API, and the live-caption page with its WebSockets (captions.py).

``POST /v1/audio/transcriptions`` takes what OpenAI's takes (multipart: ``file``, ``model``,
``language``, ``prompt``, ``response_format`` json | text | srt | vtt | verbose_json,
``temperature``, ``timestamp_granularities[]`` = segment) and runs the upload through the
batch path (any length, any container ffmpeg reads; the rooms keep priority). ``model`` is
accepted whatever it names: the daemon has one model, and answers with it. ``prompt`` and
``temperature`` are accepted and not used (the batch path has no prompt of its own; decoding
uses its own temperature fallback). ``GET /v1/models`` lists the model, ``GET /health`` says
whether it is loaded. Errors are OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, with a 4xx status for bad input; a request never takes the daemon down.
"""

from __future__ import annotations

import hmac
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import BodyPartReader, web

from daemon.commands import CommandError
from daemon.integrations.captions import CaptionPage
from daemon.outputs import cues, render

if TYPE_CHECKING:
    from daemon.config_interfaces import HttpSettings
    from daemon.control import Controller
    from daemon.jobs import BatchJobs
    from daemon.runtime import Runtime
    from pipeline.batch import FileResult

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain",
                 "srt": "application/x-subrip", "vtt": "text/vtt"}  # fmt: skip
FIELDS = {"model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> web.Response:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status)


def verbose(result: FileResult, language: str) -> dict[str, Any]:
    """OpenAI's verbose_json: the text, the language, the duration and timed segments."""
    timed = cues(result)
    segments = [
        {"id": n, "seek": 0, "start": round(c.start_s, 3), "end": round(c.end_s, 3), "text": c.text, "tokens": [],
         "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
        for n, c in enumerate(timed)
    ]  # fmt: skip
    text = " ".join(c.text for c in timed)
    return {"task": "transcribe", "language": language, "duration": round(result.audio_s, 3), "text": text,
            "segments": segments}  # fmt: skip


class HttpApi:
    def __init__(
        self, settings: HttpSettings, runtime: Runtime, jobs: BatchJobs, controller: Controller, token: str | None
    ) -> None:
        self.settings, self.rt, self.jobs, self.token = settings, runtime, jobs, token
        self.captions = CaptionPage(runtime, controller)
        self.log = structlog.get_logger().bind(component="http")
        self.app = web.Application(
            client_max_size=int(settings.max_upload_mb * 1024 * 1024), middlewares=[self._errors]
        )
        self.app.add_routes(
            [
                web.post("/v1/audio/transcriptions", self.transcriptions),
                web.get("/v1/models", self.models),
                web.get("/health", self.health),
                *self.captions.routes(),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if not self._authorized(request):
                raise ApiError(401, "missing or wrong bearer token", code="invalid_api_key")
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            return exc.response()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large().response()
        except web.HTTPException as exc:
            return ApiError(exc.status, exc.reason, code="http_error").response()
        except Exception:
            self.log.exception("http request failed", path=request.path)
            return ApiError(500, "internal error; see the daemon's log", code="internal").response()

    def _authorized(self, request: web.Request) -> bool:
        """With a token: every request carries it, but /health (for supervisors) and the page
        itself (it holds no data; its WebSockets carry ``?token=``, browsers cannot set the
        header there)."""
        if self.token is None or request.path in ("/health", "/"):
            return True
        if request.path.startswith("/ws") and hmac.compare_digest(request.query.get("token", ""), self.token):
            return True
        return hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {self.token}")

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])  # port 0: the one the system gave
        self.log.info("http api listening", host=self.settings.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:  # once: App stops the doors early, and again on the way out
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        recognizer = self.rt.recognizer
        if recognizer is None:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ok", "model": recognizer.name, "device": recognizer.device})

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.rt.model_name, "object": "model", "created": 0, "owned_by": "roomscribe"}
        return web.json_response({"object": "list", "data": [model]})

    async def transcriptions(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "expected multipart/form-data with a file", "file")
        with tempfile.TemporaryDirectory(prefix="roomscribe-upload-") as folder:
            upload, name, fields = await self._read_form(request, Path(folder))
            fmt, language = self._options(fields)
            try:
                result = await self.jobs.transcribe_file(upload, language)
            except CommandError as exc:
                raise ApiError(503, str(exc), code="not_ready") from None
        if result.error is not None:
            # The reason names our temporary file; the client knows its file by its own name.
            reason = result.error.replace(str(upload), name)
            raise ApiError(400, f"could not read the uploaded audio {name!r}: {reason}", "file", "bad_audio")
        return self._answer(result, fmt, language)

    def _too_large(self) -> ApiError:
        return ApiError(
            413, f"upload over http.max_upload_mb = {self.settings.max_upload_mb:g} MB", "file", "too_large"
        )

    async def _read_form(self, request: web.Request, folder: Path) -> tuple[Path, str, dict[str, str]]:
        """The upload (saved under ``folder``), the client's name for it, the form's fields.
        The size limit is counted here: aiohttp applies client_max_size only to whole-body reads."""
        limit = int(self.settings.max_upload_mb * 1024 * 1024)
        if (request.content_length or 0) > limit + 64 * 1024:
            raise self._too_large()
        fields: dict[str, str] = {}
        upload: Path | None = None
        name = "upload"
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "nested multipart is not accepted")
            if part.name == "file":
                # The client's file name keeps its suffix (ffmpeg or libsndfile by it), no path.
                name = Path(part.filename or "upload").name
                upload = folder / f"upload{Path(name).suffix[:16]}"
                size = 0
                with upload.open("wb") as out:
                    while chunk := await part.read_chunk(1 << 16):
                        size += len(chunk)
                        if size > limit:
                            raise self._too_large()
                        out.write(chunk)
                if size == 0:
                    raise ApiError(400, "the uploaded file is empty", "file", "empty_file")
            elif part.name in FIELDS:
                fields[part.name] = (await part.text()).strip()
        if upload is None:
            raise ApiError(400, "no file in the request", "file", "missing_file")
        return upload, name, fields

    def _options(self, fields: dict[str, str]) -> tuple[str, str | None]:
        fmt = fields.get("response_format") or "json"
        if fmt not in FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(FORMATS)}", "response_format")
        granularity = fields.get("timestamp_granularities[]", "segment") or "segment"
        if granularity != "segment":
            raise ApiError(400, "only segment timestamps are given", "timestamp_granularities[]")
        try:
            temperature = float(fields.get("temperature") or 0.0)
        except ValueError:
            raise ApiError(400, "temperature must be a number", "temperature") from None
        if not 0.0 <= temperature <= 1.0:
            raise ApiError(400, "temperature must be between 0 and 1", "temperature")
        language = (fields.get("language") or "").lower() or None
        recognizer = self.rt.recognizer
        if language is not None and recognizer is not None:
            caps = recognizer.capabilities
            if language not in caps.written_languages:
                raise ApiError(400, f"language {language!r} is not known to {recognizer.name}", "language")
            language = language if caps.multilingual else None
        return fmt, language

    def _answer(self, result: FileResult, fmt: str, language: str | None) -> web.Response:
        timed = cues(result)
        lang = timed[0].transcript.language if timed else (language or "en")
        if fmt == "json":
            return web.json_response({"text": " ".join(c.text for c in timed)})
        if fmt == "verbose_json":
            return web.json_response(verbose(result, lang))
        body = " ".join(c.text for c in timed) + "\n" if fmt == "text" else render(result, fmt)
        return web.Response(text=body, content_type=CONTENT_TYPES[fmt], charset="utf-8")


def read_token(settings: HttpSettings, config_path: Path) -> str | None:
    """The bearer token from ``http.token_file``; None when there is none to check."""
    if not settings.token_file:
        return None
    from daemon.config import credential_path

    token = credential_path(settings.token_file, config_path).read_text(encoding="utf-8").strip()
    return token or None
