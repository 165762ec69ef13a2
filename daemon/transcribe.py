"""``roomscribe transcribe``: files and folders through the same stages as the daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from daemon.app import (
    EXIT_CONFIG_ERROR,
    EXIT_RUNTIME_ERROR,
    EXIT_STARTUP_FAILURE,
    StartupError,
    load_recognizer_in_thread,
    recognize_settings,
    silero_factory,
)
from daemon.config import Config, ConfigError, load_config
from daemon.logs import setup_logging
from pipeline.messages import Transcript, Utterance
from pipeline.recognize import RecognizeStage
from pipeline.room import Room
from pipeline.sources import AudioFileError, FileSource, open_audio
from pipeline.text.processor import TextProcessor
from pipeline.text.stage import TextStage

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus", ".caf", ".w64"}
# Files decoded and segmented at once; enough to keep the recognizer's batches full.
FILES_IN_FLIGHT = 2


def expand_paths(paths: list[Path], recursive: bool) -> list[Path]:
    """Files as given; folders expanded to the audio files they hold, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            out.extend(sorted(p for p in found if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
        else:
            out.append(path)
    return out


def record(t: Transcript) -> dict[str, Any]:
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
        "latency_ms": {"recognize": round(t.recognize_ms)},
        "model": t.model,
    }


class BatchJob:
    def __init__(
        self, config: Config, files: list[Path], fmt: str, language: str | None, config_path: Path | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path or Path.cwd() / "config.toml"
        self.files = files
        self.fmt = fmt
        self.language = language
        self.failures: dict[Path, str] = {}
        self.texts: dict[str, list[str]] = {}

    def readable_files(self) -> list[tuple[int, Path]]:
        """Files that open as audio; the others are recorded as failures with their reason."""
        readable = []
        for index, path in enumerate(self.files):
            try:
                open_audio(path).close()
            except AudioFileError as exc:
                self.failures[path] = str(exc).removeprefix(f"{path}: ")
                continue
            readable.append((index, path))
        return readable

    async def run(self) -> None:
        files = self.readable_files()
        if not files:
            return  # nothing to load the model for
        loop = asyncio.get_running_loop()
        model_executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        vad_executor = ThreadPoolExecutor(1, thread_name_prefix="vad")
        utterances: asyncio.Queue[Utterance | None] = asyncio.Queue(64)
        recognized: asyncio.Queue[Transcript | None] = asyncio.Queue(64)
        transcripts: asyncio.Queue[Transcript | None] = asyncio.Queue(64)
        text = TextStage(TextProcessor(self.config.text.settings(self.config_path)), recognized, transcripts)
        try:
            recognizer = await loop.run_in_executor(model_executor, load_recognizer_in_thread, self.config)
            settings = replace(recognize_settings(self.config), idle_release_s=0.0)
            stage = RecognizeStage(recognizer, model_executor, utterances, recognized, settings)
            async with asyncio.TaskGroup() as group:
                group.create_task(stage.run(), name="recognize")
                group.create_task(text.run(), name="text")
                group.create_task(self._write(transcripts), name="write")
                await self._feed(files, vad_executor, utterances)
                await utterances.put(None)
        finally:
            model_executor.shutdown(wait=False, cancel_futures=True)
            vad_executor.shutdown(wait=False, cancel_futures=True)

    async def _feed(
        self, files: list[tuple[int, Path]], vad_executor: ThreadPoolExecutor, out: asyncio.Queue[Utterance | None]
    ) -> None:
        slots = asyncio.Semaphore(FILES_IN_FLIGHT)
        never = asyncio.Event()

        async def one(index: int, path: Path) -> None:
            async with slots:
                room = Room(
                    name=f"file{index}",
                    source=FileSource(path, realtime=False),
                    vad_params=self.config.vad.params(),
                    speech_prob_factory=silero_factory,
                    vad_executor=vad_executor,
                    out=out,
                    id_prefix=f"{path.stem}",
                    language=self.language,
                    source_label=str(path),
                    priority=1,
                )
                await room.run(never)
                if room.counters.last_error:
                    self.failures[path] = room.counters.last_error.removeprefix(f"{path}: ")

        async with asyncio.TaskGroup() as group:
            for index, path in files:
                group.create_task(one(index, path), name=f"file:{path}")

    async def _write(self, transcripts: asyncio.Queue[Transcript | None]) -> None:
        while (t := await transcripts.get()) is not None:
            if self.fmt == "jsonl":
                print(json.dumps(record(t), ensure_ascii=False), flush=True)
            else:
                self.texts.setdefault(str(t.utterance.source), []).append(t.text)


def transcribe_main(args: argparse.Namespace) -> int:
    setup_logging("info" if args.verbose else "warning", "auto")
    try:
        config = load_config(args.config) if args.config else Config()
    except ConfigError as exc:
        exc.report()
        return EXIT_CONFIG_ERROR
    files = expand_paths(args.paths, args.recursive)
    job = BatchJob(config, files, args.format, args.language, args.config)
    try:
        asyncio.run(job.run())
    except StartupError as exc:
        print(f"roomscribe: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE
    except KeyboardInterrupt:
        print("roomscribe: interrupted", file=sys.stderr)
        return 130
    if args.format == "txt":
        several = len(files) > 1
        for path in files:
            lines = job.texts.get(str(path))
            if lines is None:
                continue
            if several:
                print(f"# {path}")
            print("\n".join(lines))
    for path, reason in job.failures.items():
        print(f"roomscribe: {path}: {reason}", file=sys.stderr)
    if job.failures:
        print(f"roomscribe: {len(job.failures)} of {len(files)} file(s) failed", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    return 0
