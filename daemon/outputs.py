"""What `roomscribe transcribe` writes per file: txt, srt, vtt, json, jsonl.

Timestamps are the VAD's segment bounds in the file's own time. Every file is written to a
temporary name and renamed, so an interrupted job leaves finished outputs or none.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

from pipeline.batch import FileResult
from pipeline.messages import Transcript

FORMATS = ("txt", "jsonl", "srt", "vtt", "json")
SUBTITLE_LINE_CHARS = 42  # the usual subtitle line length


def segment_record(t: Transcript) -> dict[str, Any]:
    u = t.utterance
    return {
        "file": u.source,
        "id": u.id,
        "text": t.text,
        "raw_text": t.raw_text,
        "language": t.language,
        "start": round(u.start_s, 3),
        "end": round(u.end_s, 3),
        "duration_s": round(u.end_s - u.start_s, 3),
        "confidence": t.confidence,
        "model": t.model,
    }


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _lines(text: str) -> str:
    return "\n".join(textwrap.wrap(text, SUBTITLE_LINE_CHARS)) or text


def spoken(result: FileResult) -> list[Transcript]:
    return [t for t in result.segments if t.text.strip()]


def render(result: FileResult, fmt: str) -> str:
    segments = spoken(result)
    if fmt == "txt":
        return "".join(f"{t.text}\n" for t in segments)
    if fmt == "jsonl":
        return "".join(json.dumps(segment_record(t), ensure_ascii=False) + "\n" for t in segments)
    if fmt == "srt":
        blocks = [
            f"{n}\n{_clock(t.utterance.start_s, ',')} --> {_clock(t.utterance.end_s, ',')}\n{_lines(t.text)}\n"
            for n, t in enumerate(segments, 1)
        ]
        return "\n".join(blocks)
    if fmt == "vtt":
        blocks = [
            f"{_clock(t.utterance.start_s, '.')} --> {_clock(t.utterance.end_s, '.')}\n{_lines(t.text)}\n"
            for t in segments
        ]
        return "WEBVTT\n\n" + "\n".join(blocks)
    if fmt == "json":
        document = {
            "file": str(result.path),
            "audio_s": round(result.audio_s, 3),
            "language": segments[0].language if segments else None,
            "model": segments[0].model if segments else None,
            "text": " ".join(t.text for t in segments),
            "segments": [segment_record(t) for t in segments],
        }
        return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}")


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def output_path(path: Path, root: Path, out_dir: Path | None, fmt: str) -> Path:
    """Beside the input, or under ``out_dir`` mirroring the input's place below its root."""
    if out_dir is None:
        return path.with_suffix(f".{fmt}")
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.name)
    return (out_dir / relative).with_suffix(f".{fmt}")
