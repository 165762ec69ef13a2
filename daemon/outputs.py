"""What `roomscribe transcribe` writes per file: txt, srt, vtt, json, jsonl.

Timestamps are the VAD's segment bounds in the file's own time. Every file is written to a
temporary name and renamed, so an interrupted job leaves finished outputs or none.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.safe import safe_text
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
    tmp.write_bytes(encode_text(text))
    os.replace(tmp, path)


def encode_text(text: str) -> bytes:
    """UTF-8; a file name that was not UTF-8 (held as surrogate escapes) goes back to its own
    bytes, and any other lone surrogate becomes U+FFFD: writing never fails on text."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return safe_text(text).encode("utf-8")


def output_bases(files: list[tuple[Path, Path]], out_dir: Path | None) -> dict[Path, Path]:
    """Each input's output path without the format's suffix: beside the input, or under
    ``out_dir`` mirroring its place below its root. Inputs whose outputs would share a name
    (``talk.wav`` and ``talk.flac``) keep their own suffix in it (``talk.wav.txt``,
    ``talk.flac.txt``), whatever order they come in, so no output overwrites another."""
    placed: dict[Path, Path] = {}
    for path, root in files:
        if out_dir is None:
            placed[path] = path
            continue
        try:
            placed[path] = out_dir / path.relative_to(root)
        except ValueError:
            placed[path] = out_dir / path.name
    sharing = Counter(p.with_suffix("") for p in placed.values())
    return {path: p.with_suffix("") if sharing[p.with_suffix("")] == 1 else p for path, p in placed.items()}


def shared_names(bases: dict[Path, Path]) -> list[Path]:
    """The inputs whose outputs keep the input's suffix (their names are shared)."""
    return [path for path, base in bases.items() if base.name == path.name]


def output_path(base: Path, fmt: str) -> Path:
    return base.with_name(f"{base.name}.{fmt}")
