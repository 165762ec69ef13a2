"""The config mapped onto the pipeline: the recognizer, the room states, the rooms' sources
and capture, and the stage graph (pipeline/graph.py builds it). The daemon, ``roomscribe
transcribe`` and the benches all come through here, so a setting means the same in each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from daemon.config import Config, resolve_path
from daemon.config_sources import (
    BrowserSourceSettings,
    FileSourceSettings,
    HermesSourceSettings,
    SourceSettings,
    StreamSourceSettings,
)
from daemon.errors import StartupError
from daemon.integrations import hermes
from pipeline.ffmpeg import StreamSource
from pipeline.graph import Pipeline, build_pipeline
from pipeline.health import BusyWatch
from pipeline.journal import Journal
from pipeline.messages import Utterance
from pipeline.room import Room
from pipeline.roomstate import RoomState, RoomStates
from pipeline.sources import AudioSource, Backoff, FileSource, MicSource, PushSource, Reconnecting
from pipeline.text.processor import TextProcessor

if TYPE_CHECKING:
    from models.api import Recognition, Recognizer


def load_recognizer_in_thread(config: Config) -> Recognizer:
    """Runs on the model thread: allocator and thread settings first, then the model."""
    from models.memory import configure_cuda_allocator

    r = config.recognizer
    configure_cuda_allocator(r.cuda_alloc_conf)  # before anything initializes CUDA

    import torch

    from models.ct2 import ModelFormatError
    from models.engines import load_recognizer
    from models.loading import ModelNotFoundError

    if r.threads:
        torch.set_num_threads(r.threads)
    elif r.device.startswith("cuda") or (r.device == "auto" and torch.cuda.is_available()):
        # With the model on a GPU, torch's CPU threads serve the VAD's small convolutions:
        # a team of one per call. Teams of all cores (the default) spin between calls and
        # starve the model thread, which must launch each decoding step's kernels.
        torch.set_num_threads(1)
    try:
        return load_recognizer(r.model, r.device, r.dtype, r.decoding_options(), r.batch_size, r.quantize)
    except (ModelNotFoundError, ModelFormatError, RuntimeError, ValueError) as exc:
        raise StartupError(str(exc)) from exc


def check_languages(config: Config, recognizer: Recognizer) -> None:
    """Each room's fixed language is one the loaded model writes (StartupError naming the
    key otherwise): an English-only model told "fr" would write English quietly."""
    caps = recognizer.capabilities
    known = set(caps.written_languages)
    for i, room in enumerate(config.rooms):
        if room.enabled and room.language is not None and room.language not in known:
            what = "is English-only" if not caps.multilingual else "does not know it"
            raise StartupError(f"rooms[{i}].language = {room.language!r}: the model {recognizer.name} {what}")


def silero_factory() -> Callable[[np.ndarray], float]:
    from models.vad import SileroVad

    return SileroVad()


def room_states(config: Config) -> RoomStates:
    """Every enabled room's runtime state, from its settings (a disabled room does not exist
    for commands either)."""
    rooms = (
        RoomState(
            r.name,
            tuple(r.hotwords),
            r.language,
            prompt_previous=r.prompt_previous,
            stitch=r.stitch,
            zh_script=r.zh_script,
        )
        for r in config.rooms
        if r.enabled
    )
    return RoomStates.of(config.recognizer.hotwords, rooms)


def pipeline_from_config(
    config: Config,
    config_path: Path,
    recognizer: Recognizer,
    model_executor: Executor,
    rooms: RoomStates,
    *,
    stitch: bool = True,
    on_partial: Callable[[Utterance, Recognition], None] | None = None,
    watch: BusyWatch | None = None,
    journal: Journal | None = None,
) -> Pipeline:
    """The graph with the config's settings; ``stitch`` False for batch work (never stitched)."""
    return build_pipeline(
        recognizer,
        model_executor,
        rooms,
        config.recognizer.stage_settings(config.stitch),
        TextProcessor(config.text.settings(config_path)),
        config.stitch.settings() if stitch else None,
        on_partial=on_partial,
        watch=watch,
        journal=journal,
    )


def build_source(
    settings: SourceSettings,
    config_path: Path,
    room: str,
) -> AudioSource:
    if isinstance(settings, FileSourceSettings):
        return FileSource(resolve_path(settings.path, config_path), settings.realtime, settings.loop)
    if isinstance(settings, HermesSourceSettings):
        return PushSource(f"hermes {hermes.audio_frame_topic(settings.site_id or room)}")
    if isinstance(settings, BrowserSourceSettings):
        return PushSource(f"browser microphone /ws/mic/{room}")
    # Live sources that can go away and come back are reopened with backoff.
    if isinstance(settings, StreamSourceSettings):
        return Reconnecting(StreamSource(settings.url, settings.stall_s), Backoff(max_s=settings.retry_max_s))
    return Reconnecting(MicSource(settings.device), Backoff(max_s=settings.retry_max_s))


def build_rooms(
    config: Config,
    config_path: Path,
    states: RoomStates,
    out: asyncio.Queue[Utterance | None],
    vad_executor: Executor,
    run: str,
    on_state: Callable[[Room], None],
    watch: BusyWatch,
) -> list[Room]:
    """One Room (capture and VAD) per enabled [[rooms]] entry; ``run`` makes ids unique
    across restarts."""
    return [
        Room(
            states[r.name],
            build_source(r.source, config_path, r.name),
            out,
            config.room_vad_params(r),
            speech_prob_factory=silero_factory,
            vad_executor=vad_executor,
            id_prefix=f"{r.name}-{run}",
            partial_interval_ms=r.partial_interval_ms if r.partials else 0,
            on_state=on_state,
            watch=watch,
        )
        for r in config.rooms
        if r.enabled
    ]
