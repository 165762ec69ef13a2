"""What recognition jobs and their results look like on the broker (daemon/remote.py sends
them, daemon/worker.py answers them).

A job is one utterance: a JSON header line, then the audio as FLAC (16 kHz mono 16-bit:
about half the bytes of raw PCM, and every worker's libsndfile reads it). The header
carries what ``Recognizer.recognize`` takes for that utterance: the language, the prompt,
the hotwords, whether to give timestamps, the sentence-end question. The job's MQTT 5
properties say where the answer goes (response topic) and its id again (correlation data).
A result is JSON: the job's id, the worker's id, and the ``Recognition`` (or an ``error``).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from models.api import Capabilities, Recognition

RATE = 16000
MAX_JOB_BYTES = 4 * 1024 * 1024  # a 30 s utterance is about 0.5 MB of FLAC
MAX_JOB_AUDIO_S = 60.0


class JobError(ValueError):
    """A job that cannot be done: the reason, fit for the error result."""


class JobHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    kind: Literal["live", "batch"] = "live"
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")] | None = None
    prompt: Annotated[str, StringConstraints(max_length=4000)] = ""
    hotwords: list[Annotated[str, StringConstraints(max_length=100)]] = Field(default_factory=list, max_length=1000)
    timestamps: bool = False
    sentence_end: bool | Annotated[str, StringConstraints(max_length=4000)] = False


@dataclass(frozen=True)
class Job:
    header: JobHeader
    audio: np.ndarray = field(repr=False)  # 16 kHz mono float32


def encode_job(header: JobHeader, audio: np.ndarray) -> bytes:
    flac = io.BytesIO()
    sf.write(flac, np.clip(audio, -1.0, 1.0), RATE, format="FLAC", subtype="PCM_16")
    return header.model_dump_json().encode() + b"\n" + flac.getvalue()


def decode_job(payload: bytes) -> Job:
    """The job in ``payload``; JobError says what is wrong with it."""
    if len(payload) > MAX_JOB_BYTES:
        raise JobError(f"job of {len(payload)} bytes is over the {MAX_JOB_BYTES}-byte limit")
    line, sep, audio = payload.partition(b"\n")
    if not sep:
        raise JobError("no header line")
    try:
        header = JobHeader.model_validate_json(line)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'header'}: {e['msg']}" for e in exc.errors())
        raise JobError(f"bad header: {problems}") from None
    try:
        samples, rate = sf.read(io.BytesIO(audio), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise JobError(f"job {header.id}: unreadable audio ({exc})") from None
    if rate != RATE or samples.shape[1] != 1:
        raise JobError(f"job {header.id}: audio must be 16 kHz mono, not {rate} Hz x {samples.shape[1]}")
    if len(samples) > MAX_JOB_AUDIO_S * RATE or len(samples) == 0:
        raise JobError(f"job {header.id}: {len(samples) / RATE:.1f} s of audio (1 sample to {MAX_JOB_AUDIO_S:g} s)")
    return Job(header, samples[:, 0])


def job_id_of(payload: bytes) -> str | None:
    """The id of a job that failed to decode, when its header says (for the error result)."""
    try:
        value = json.loads(payload.partition(b"\n")[0]).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


def encode_result(job_id: str, worker: str, recognition: Recognition | None, error: str | None = None) -> bytes:
    body: dict[str, Any] = {"id": job_id, "worker": worker}
    if recognition is not None:
        body["recognition"] = asdict(recognition)
    else:
        body["error"] = error or "failed"
    return json.dumps(body, ensure_ascii=False).encode()


def decode_result(payload: bytes) -> tuple[str, str, Recognition | None, str | None]:
    """(job id, worker, recognition or None, error or None); ValueError when malformed."""
    body = json.loads(payload)
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ValueError("a result is a JSON object with an id")
    worker = str(body.get("worker", "?"))
    if "recognition" not in body:
        return body["id"], worker, None, str(body.get("error", "failed"))
    r = dict(body["recognition"])
    r["segments"] = tuple((float(a), float(b), str(t)) for a, b, t in r.get("segments", ()))
    r["audio_events"] = tuple(r.get("audio_events", ()))
    return body["id"], worker, Recognition(**r), None


def capabilities_record(capabilities: Capabilities) -> dict[str, Any]:
    return asdict(capabilities)


def capabilities_from(record: Any) -> Capabilities:
    """A worker's announced capabilities; ValueError when they are not that."""
    if not isinstance(record, dict):
        raise ValueError("capabilities are a JSON object")
    try:
        return Capabilities(**{**record, "languages": tuple(record.get("languages", ()))})
    except TypeError as exc:
        raise ValueError(f"capabilities: {exc}") from None
