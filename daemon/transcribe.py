"""``roomscribe transcribe``: files and folders through the daemon's own stages.

An async job queue (pipeline/batch.py): several files are decoded and segmented while the
recognizer works, their segments share its batches, and each file's outputs are written the
moment its last segment is recognized. ``--jobs 1`` is the plain serial loop for comparison:
one file at a time, one segment per recognizer call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from daemon.config import Config
from daemon.config_file import ConfigError, load_config
from daemon.errors import EXIT_CONFIG_ERROR, EXIT_INTERRUPTED, EXIT_RUNTIME_ERROR, EXIT_STARTUP_FAILURE, StartupError
from daemon.logs import setup_logging
from daemon.outputs import FORMATS, output_bases, output_path, render, shared_names, write_atomically
from daemon.wiring import load_recognizer_in_thread, pipeline_from_config, room_states, silero_factory
from pipeline.batch import BatchJob, FileResult, expand_paths, open_source
from pipeline.chunks import chunk_seconds, whole_seconds
from pipeline.graph import Pipeline
from pipeline.sources import AudioFileError

if TYPE_CHECKING:
    from models.api import Recognizer


def default_jobs() -> int:
    """Files in flight by default: enough to keep the recognizer fed while files decode."""
    return min(8, max(2, os.cpu_count() or 2))


def vad_threads(device: str, jobs: int) -> int:
    """Threads for the files' VAD, given the recognizer's device. With the model on a CPU
    one is best (more would take cores from the model); with it on a GPU the VAD is what
    the CPU does, so files in flight get up to a quarter of the cores."""
    if device.startswith("cpu"):
        return 1
    return max(1, min(jobs, (os.cpu_count() or 1) // 4))


@dataclass
class Plan:
    files: list[tuple[Path, Path]]  # (file, root for output paths)
    formats: list[str]
    out_dir: Path | None
    force: bool
    bases: dict[Path, Path] = field(init=False)  # output path without the format, per input

    def __post_init__(self) -> None:
        self.bases = output_bases(self.files, self.out_dir)

    def outputs(self, path: Path, root: Path) -> list[Path]:
        if self.streaming:
            return []
        return [output_path(self.bases[path], fmt) for fmt in self.formats]

    @property
    def streaming(self) -> bool:
        """jsonl without --out: segments go to stdout, nothing is written (nor skipped)."""
        return self.formats == ["jsonl"] and self.out_dir is None

    def todo(self) -> tuple[list[tuple[Path, Path]], list[Path]]:
        """Files still to do, and those whose outputs all exist (skipped unless --force)."""
        todo, done = [], []
        for path, root in self.files:
            outputs = self.outputs(path, root)
            if outputs and not self.force and all(p.exists() for p in outputs):
                done.append(path)
            else:
                todo.append((path, root))
        return todo, done


class Runner:
    def __init__(self, config: Config, config_path: Path, plan: Plan, jobs: int, language: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.plan = plan
        self.jobs = jobs
        self.language = language
        self.failures: dict[Path, str] = {}
        self.done: list[Path] = []
        self.audio_done_s = 0.0
        self.console = Console(stderr=True)
        self.roots: dict[Path, Path] = {}
        self.summary: dict[str, float | int] = {}

    def file_done(self, result: FileResult) -> None:
        if result.error is not None:
            self.failures[result.path] = result.error
        elif self.plan.streaming:
            sys.stdout.write(render(result, "jsonl"))
            sys.stdout.flush()
        else:
            for fmt, target in zip(
                self.plan.formats, self.plan.outputs(result.path, self.roots[result.path]), strict=True
            ):
                write_atomically(target, render(result, fmt))
        self.done.append(result.path)
        self.audio_done_s += result.audio_s

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]transcribing"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[hours]}"),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
            transient=False,
        )

    def _graph(
        self, recognizer: Recognizer, model_executor: Executor, vad_executor: Executor, paths: list[Path]
    ) -> tuple[Pipeline, BatchJob]:
        """The daemon's graph without a stitcher, and the job that feeds it."""
        # No idle memory release in a run that ends by itself; --jobs 1 is the plain serial
        # loop, one segment per model call.
        changes: dict[str, float | int] = {"idle_release_s": 0.0, **({"max_batch": 1} if self.jobs == 1 else {})}
        config = self.config.model_copy(update={"recognizer": self.config.recognizer.model_copy(update=changes)})
        # Files are never stitched (so no joint decoding); the hotwords apply as in rooms.
        pipeline = pipeline_from_config(
            config, self.config_path, recognizer, model_executor, room_states(config), stitch=False
        )
        job = BatchJob(
            "batch",
            paths,
            pipeline.utterances,
            self.config.vad.params(),
            silero_factory,
            vad_executor,
            self.file_done,
            files_in_flight=self.jobs,
            language=self.language,
            # The serial loop recognizes each VAD segment on its own; the queue recognizes a
            # short file whole and merges a long file's segments into chunks recognized with
            # timestamps where that pays (CPU).
            chunk_s=0.0 if self.jobs == 1 else chunk_seconds(recognizer.device, recognizer.capabilities),
            whole_s=0.0 if self.jobs == 1 else whole_seconds(recognizer.capabilities),
        )
        return pipeline, job

    async def _run_job(self, pipeline: Pipeline, job: BatchJob, total_s: float) -> None:
        started = time.monotonic()
        with self._progress() as progress:
            task = progress.add_task("files", total=total_s or None, files="", hours="", speed="")

            def refresh() -> None:
                elapsed = time.monotonic() - started
                speed = f"{self.audio_done_s / elapsed:.1f}x real time" if elapsed > 0 and self.audio_done_s else ""
                hours = f"{self.audio_done_s / 3600:.2f}/{total_s / 3600:.2f} h audio"
                progress.update(task, completed=self.audio_done_s, files=f"{len(self.done)}/{len(job.files)} files",
                                hours=hours, speed=speed)  # fmt: skip

            async def collect() -> None:
                while (t := await pipeline.transcripts.get()) is not None:
                    job.deliver(t)
                    refresh()

            async with asyncio.TaskGroup() as group:
                pipeline.tasks(group)
                collector = group.create_task(collect(), name="collect")
                await job.feed()
                refresh()
                await pipeline.utterances.put(None)
                await collector
            await job.finished.wait()  # every file's outputs written
            refresh()

    async def run(self, files: list[tuple[Path, Path]]) -> None:
        self.roots = dict(files)
        paths = [p for p, _ in files]
        total_s = 0.0
        for path in paths:
            with contextlib.suppress(AudioFileError):  # a bad file is reported when its turn comes
                total_s += open_source(path)[1] or 0.0
        loop = asyncio.get_running_loop()
        model_executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        vad_executor: ThreadPoolExecutor | None = None  # sized once the model's device is known
        run_started = time.monotonic()
        try:
            recognizer = await loop.run_in_executor(model_executor, load_recognizer_in_thread, self.config)
            load_s = time.monotonic() - run_started
            vad_executor = ThreadPoolExecutor(vad_threads(recognizer.device, self.jobs), thread_name_prefix="vad")
            pipeline, job = self._graph(recognizer, model_executor, vad_executor, paths)
            await self._run_job(pipeline, job, total_s)
            # Where the time went (--verbose): wall = load + the rest, in which the model
            # thread and the VAD thread worked this long.
            counters = pipeline.recognize.counters
            self.summary = {
                "files": len(self.done), "audio_s": round(self.audio_done_s, 1),
                "wall_s": round(time.monotonic() - run_started, 2), "load_s": round(load_s, 2),
                "model_s": round(counters.model_seconds, 2), "vad_s": round(job.vad_seconds, 2),
                "model_calls": counters.batches, "segments": counters.utterances, "gaps_filled": counters.gaps_filled,
            }  # fmt: skip
            structlog.get_logger().info("transcribe done", **self.summary)
        finally:
            model_executor.shutdown(wait=False, cancel_futures=True)
            if vad_executor is not None:
                vad_executor.shutdown(wait=False, cancel_futures=True)


def transcribe_main(args: argparse.Namespace) -> int:
    # Every problem with a file is listed at the end; log lines only with --verbose.
    setup_logging("info" if args.verbose else "critical", "auto")
    try:
        config = load_config(args.config) if args.config else Config()
    except ConfigError as exc:
        exc.report()
        return EXIT_CONFIG_ERROR
    formats = list(dict.fromkeys(f.strip() for f in args.format.split(",")))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        print(f"roomscribe: unknown format {', '.join(unknown)}; choose from {', '.join(FORMATS)}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.jobs is not None and args.jobs < 1:
        print("roomscribe: --jobs must be at least 1", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    plan = Plan(expand_paths(args.paths, args.recursive), formats, args.out, args.force)
    todo, skipped = plan.todo()
    runner = Runner(config, args.config or Path.cwd() / "config.toml", plan, args.jobs or default_jobs(), args.language)
    console = runner.console
    if (shared := shared_names(plan.bases)) and not plan.streaming:
        names = ", ".join(output_path(plan.bases[path], formats[0]).name for path in shared[:4])
        console.print(
            f"roomscribe: {len(shared)} input(s) share a name: their outputs keep the input's suffix ({names})"
        )
    if skipped:
        console.print(f"roomscribe: {len(skipped)} file(s) already done (outputs exist; --force redoes them)")
    code = 0
    try:
        if todo:
            asyncio.run(runner.run(todo))
    except StartupError as exc:
        print(f"roomscribe: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE
    except KeyboardInterrupt:
        left = len(todo) - len(runner.done)
        print(f"roomscribe: interrupted; {len(runner.done)} file(s) done and kept, {left} left: run again to resume",
              file=sys.stderr)  # fmt: skip
        code = EXIT_INTERRUPTED
    for path, reason in runner.failures.items():
        print(f"roomscribe: failed: {path}: {reason}", file=sys.stderr)
    if runner.failures:
        print(f"roomscribe: {len(runner.failures)} of {len(plan.files)} file(s) failed", file=sys.stderr)
        code = code or EXIT_RUNTIME_ERROR
    return code
