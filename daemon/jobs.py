"""Batch jobs in the running daemon: the ``transcribe`` command's files and folders go
through the shared recognizer behind the live rooms (pipeline/batch.py), and their
transcripts come back here from the publish stage instead of going to MQTT."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.commands import CommandError
from daemon.outputs import output_bases, output_path, render, write_atomically
from daemon.runtime import Runtime
from daemon.wiring import silero_factory
from pipeline.batch import BatchJob, FileResult, expand_paths
from pipeline.chunks import chunk_seconds, whole_seconds
from pipeline.messages import Transcript


def resolve_batch_path(allowed_dir: str, path_text: str) -> tuple[Path, Path]:
    """(the allowed folder, the requested path), both with symbolic links resolved, so that
    neither ".." nor a link leads outside; CommandError when it does or nothing is there."""
    shown = repr(path_text if len(path_text) <= 200 else path_text[:200] + "...")
    if "\0" in path_text:
        raise CommandError(f"{shown}: a path cannot hold a null byte", "transcribe")
    allowed = Path(allowed_dir).resolve()
    try:
        path = Path(path_text)
        path = (path if path.is_absolute() else allowed / path).resolve()
        if not path.is_relative_to(allowed):
            raise CommandError(f"{shown} is outside batch.allowed_dir ({allowed})", "transcribe")
        if not path.exists():
            raise CommandError(f"{shown}: no such file or folder", "transcribe")
    except OSError as exc:  # a name too long, a loop of links...
        raise CommandError(f"{shown}: {exc.strerror or exc}", "transcribe") from None
    return allowed, path


def inside(allowed: Path, files: list[Path]) -> tuple[list[Path], dict[str, str]]:
    """The files whose real path (every link followed) is below ``allowed``, and the others
    with the reason: a link in the folder must not lead out of it."""
    kept: list[Path] = []
    refused: dict[str, str] = {}
    for file in files:
        real = file.resolve()
        if real.is_relative_to(allowed):
            kept.append(file)
        else:
            refused[str(file)] = f"a link to {real}, outside batch.allowed_dir ({allowed}): not read"
    return kept, refused


class BatchJobs:
    """The jobs running now; each has an id (``job<n>``) carried by its utterances."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.running: dict[str, BatchJob] = {}
        self.started = 0
        self.log = structlog.get_logger().bind(component="jobs")

    def deliver(self, t: Transcript) -> None:
        """A batch transcript, to the job it belongs to (a job already gone: dropped)."""
        job = self.running.get(t.utterance.file.job) if t.utterance.file else None
        if job is not None:
            job.deliver(t)

    async def run(self, path_text: str, recursive: bool) -> dict[str, Any]:
        """A file or folder below ``batch.allowed_dir``; returns when every file is done."""
        rt, b = self.rt, self.rt.config.batch
        if not b.allowed_dir:
            raise CommandError("batch jobs are off: set batch.allowed_dir", "transcribe")
        if rt.pipeline is None or rt.recognizer is None:
            raise CommandError("the model is still loading", "transcribe")
        allowed, path = resolve_batch_path(b.allowed_dir, path_text)
        out_dir = Path(b.output_dir) if b.output_dir else rt.config.daemon.state_path(rt.config_path) / "transcripts"
        files, failed = inside(allowed, [p for p, _ in expand_paths([path], recursive)])
        bases = output_bases([(f, allowed) for f in files], out_dir)
        outputs: list[str] = []

        def file_done(result: FileResult) -> None:
            if result.error is not None:
                failed[str(result.path)] = result.error
                return
            for fmt in b.formats:
                target = output_path(bases[result.path], fmt)
                write_atomically(target, render(result, fmt))
                outputs.append(str(target))

        started = time.monotonic()
        job_id = await self._run_job(files, file_done)
        wall_s = round(time.monotonic() - started, 2)
        self.log.info("batch job done", job=job_id, files=len(files), failed=len(failed), wall_s=wall_s)
        return {"job": job_id, "files": len(files), "outputs": outputs, "failed": failed, "wall_s": wall_s}

    async def transcribe_file(self, path: Path, language: str | None = None) -> FileResult:
        """One file through the batch path (the HTTP API's uploads); its result, or its error."""
        if self.rt.pipeline is None or self.rt.recognizer is None:
            raise CommandError("the model is still loading", "transcribe")
        results: list[FileResult] = []
        await self._run_job([path], results.append, language)
        return results[0]

    async def _run_job(
        self, files: list[Path], file_done: Callable[[FileResult], None], language: str | None = None
    ) -> str:
        rt = self.rt
        assert rt.pipeline is not None and rt.recognizer is not None
        b = rt.config.batch
        self.started += 1
        job_id = f"job{self.started}"
        job = BatchJob(
            job_id,
            files,
            rt.pipeline.utterances,
            rt.config.vad.params(),
            silero_factory,
            rt.vad_executor,
            file_done,
            files_in_flight=b.files_in_flight,
            language=language,
            max_segments_in_flight=rt.config.recognizer.max_batch,
            chunk_s=chunk_seconds(rt.recognizer.device, rt.recognizer.capabilities),
            whole_s=whole_seconds(rt.recognizer.capabilities),
        )
        self.running[job_id] = job
        self.log.info("batch job started", job=job_id, files=len(files))
        try:
            await job.feed()
            await job.finished.wait()
        finally:
            del self.running[job_id]
        return job_id
