"""What `roomscribe transcribe` writes per file: txt, srt, vtt, json, jsonl.

Timestamps are the VAD's segment bounds in the file's own time. Every file is written to a
temporary name and renamed, so an interrupted job leaves finished outputs or none.
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.batch import FileResult
from pipeline.messages import Transcript

FORMATS = ("txt", "jsonl", "srt", "vtt", "json")
SUBTITLE_LINE_CHARS = 42  # the usual subtitle line length


@dataclass(frozen=True)
class Cue:
    """One timed piece of a file's transcript: a VAD segment, or a timed segment of a chunk."""

    id: str
    start_s: float  # from the file's start
    end_s: float
    text: str
    raw_text: str
    transcript: Transcript


def cues(result: FileResult) -> list[Cue]:
    out = []
    for t in result.segments:
        u = t.utterance
        if t.segments:
            for k, seg in enumerate(t.segments, 1):
                if seg.text.strip():
                    out.append(
                        Cue(f"{u.id}.{k}", u.start_s + seg.start_s, u.start_s + seg.end_s, seg.text, seg.raw_text, t)
                    )
        elif t.text.strip():
            out.append(Cue(u.id, u.start_s, u.end_s, t.text, t.raw_text, t))
    return sorted(out, key=lambda c: c.start_s)


def segment_record(c: Cue) -> dict[str, Any]:
    t = c.transcript
    return {
        "file": t.utterance.file.path if t.utterance.file else None,
        "id": c.id,
        "text": c.text,
        "raw_text": c.raw_text,
        "language": t.language,
        "start": round(c.start_s, 3),
        "end": round(c.end_s, 3),
        "duration_s": round(c.end_s - c.start_s, 3),
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


def render(result: FileResult, fmt: str) -> str:
    timed = cues(result)
    if fmt == "txt":
        return "".join(f"{c.text}\n" for c in timed)
    if fmt == "jsonl":
        return "".join(json.dumps(segment_record(c), ensure_ascii=False) + "\n" for c in timed)
    if fmt == "srt":
        blocks = [
            f"{n}\n{_clock(c.start_s, ',')} --> {_clock(c.end_s, ',')}\n{_lines(c.text)}\n"
            for n, c in enumerate(timed, 1)
        ]
        return "\n".join(blocks)
    if fmt == "vtt":
        blocks = [f"{_clock(c.start_s, '.')} --> {_clock(c.end_s, '.')}\n{_lines(c.text)}\n" for c in timed]
        return "WEBVTT\n\n" + "\n".join(blocks)
    if fmt == "json":
        first = timed[0].transcript if timed else None
        document = {
            "file": str(result.path),
            "audio_s": round(result.audio_s, 3),
            "language": first.language if first else None,
            "model": first.model if first else None,
            "text": " ".join(c.text for c in timed),
            "segments": [segment_record(c) for c in timed],
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
