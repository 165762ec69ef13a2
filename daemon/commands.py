"""Commands over MQTT: ``<prefix>/set`` (every room) and ``<prefix>/<room>/set`` (one room).

A command is a JSON object ``{"command": NAME, ..., "transaction": optional string}``; each
one gets exactly one response on ``<prefix>/response``:
``{"status": "ok"|"error", "command", "error", "transaction"}`` (plus ``result`` for
``status``). Payloads are validated strictly with pydantic; anything wrong (not JSON, not an
object, unknown command, a wrong type, too large) is an error response and a log line,
never an exception in the daemon.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from daemon.config_base import Hotword

MAX_COMMAND_BYTES = 64 * 1024


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    transaction: Annotated[str, StringConstraints(max_length=200)] | None = None


class Pause(_Command):
    """Stop listening (the room's audio is not used) until ``resume``."""

    command: Literal["pause"]


class Resume(_Command):
    command: Literal["resume"]


class Hotwords(_Command):
    """Replace the hotwords of the room (on ``<room>/set``) or the global ones (on ``set``)."""

    command: Literal["hotwords"]
    words: list[Hotword] = Field(max_length=1000)


class Language(_Command):
    """Fix the room's language (multilingual models); null: detect it per utterance."""

    command: Literal["language"]
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")] | None


class ClearCache(_Command):
    """Release cached device memory now."""

    command: Literal["clear_cache"]


class Reload(_Command):
    """Re-read the dictionary file and the hotwords from the config file."""

    command: Literal["reload"]


class Status(_Command):
    command: Literal["status"]


class Transcribe(_Command):
    """Queue a file or folder (within batch.allowed_dir) for batch transcription; answered
    when the job is done, with its outputs and failures."""

    command: Literal["transcribe"]
    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    recursive: bool = False


AnyCommand = Annotated[
    Pause | Resume | Hotwords | Language | ClearCache | Reload | Status | Transcribe, Field(discriminator="command")
]
_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(AnyCommand)
KNOWN = ("pause", "resume", "hotwords", "language", "clear_cache", "reload", "status", "transcribe")


class CommandError(ValueError):
    def __init__(self, message: str, command: str | None = None, transaction: str | None = None) -> None:
        super().__init__(message)
        self.command = command
        self.transaction = transaction


def parse(payload: bytes) -> AnyCommand:
    """The command in ``payload``; raises CommandError with a message fit for the response."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes is over the {MAX_COMMAND_BYTES}-byte limit")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CommandError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError(f"expected a JSON object, got {type(data).__name__}")
    name = data.get("command")
    transaction = data.get("transaction") if isinstance(data.get("transaction"), str) else None
    command = name if isinstance(name, str) else None
    if command not in KNOWN:
        raise CommandError(f"unknown command {name!r} (known: {', '.join(KNOWN)})", command, transaction)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'command'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise CommandError(problems, command, transaction) from None


def response(
    status: str,
    command: str | None,
    transaction: str | None,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status, "command": command, "error": error, "transaction": transaction}
    if result is not None:
        out["result"] = result
    return out
