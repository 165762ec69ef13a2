"""Configuration: strict pydantic models, one per TOML section.

Unknown keys are errors; every field has a description (config.toml documents the same
keys with comments). Problems are reported as one line each, naming the dotted key, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from daemon.config_base import Hotword, Section, by_keyword
from daemon.config_interfaces import HttpSettings, RemoteSettings, WyomingSettings
from daemon.config_mqtt import HermesSettings, HomeAssistantSettings, MqttSettings
from daemon.config_sources import SourceSettings
from models.api import LANGUAGE_CODES, DecodingOptions
from pipeline.recognize_settings import RecognizeSettings
from pipeline.stitch import StitchSettings
from pipeline.text.processor import TextSettings
from pipeline.text.script import Script
from pipeline.vad import VadParams

# Every default below is read from the dataclass that the setting feeds (VadParams,
# StitchSettings, TextSettings, RecognizeSettings, DecodingOptions), so a default lives in
# one place; the sections map onto those dataclasses by keyword (``settings()``).
D, R, V, T, S = DecodingOptions, RecognizeSettings, VadParams, TextSettings, StitchSettings

ROOM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Whisper sees at most 30 s at once.
MAX_UTTERANCE_LIMIT_MS = 30000


class DaemonSettings(Section):
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of log lines written."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON otherwise (journald)."
    )
    drain_timeout_s: float = Field(
        20.0, gt=0, le=600, description="On SIGTERM, how long to finish and publish what was already cut."
    )
    state_dir: str = Field(
        "", description="Where the outbox lives; empty: $STATE_DIRECTORY (systemd), else ./state by the config."
    )
    stall_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="A model or VAD call running longer stops the systemd watchdog pings."
    )
    stats_interval_s: float = Field(60.0, ge=0, le=86400, description="Publish <prefix>/stats this often; 0: never.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus text on 127.0.0.1:<port>/metrics; 0: off.")

    def state_path(self, config_path: Path) -> Path:
        if self.state_dir:
            return resolve_path(self.state_dir, config_path)
        if env := os.environ.get("STATE_DIRECTORY"):
            return Path(env.split(":")[0])
        return config_path.parent / "state"


class RecognizerSettings(Section):
    model: str = Field(
        "bundled:tiny.en",
        description="bundled:tiny.en, or a CTranslate2 folder, an OpenAI .pt file or a Hugging Face folder.",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description=(
            "auto: float16 on a GPU; float32 on a CPU, the encoder bfloat16 where the CPU"
            " multiplies bfloat16 natively (AMX or AVX-512 BF16)."
        ),
    )
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: dynamic int8 linear layers (CPU, float32; Whisper and SenseVoice)."
    )
    threads: int = Field(0, ge=0, le=256, description="CPU threads for the model; 0 lets torch decide.")
    beam_size: int = Field(D.beam_size, ge=1, le=16, description="1 is greedy decoding; more is beam search.")
    language_beams: dict[str, int] = Field(
        dict(D.language_beams),
        description="Beam size per language where it differs from beam_size (measured: zh 5).",
    )
    temperatures: list[float] = Field(
        list(D.temperatures), min_length=1, description="Fallback temperatures, tried in order."
    )
    compression_ratio_threshold: float = Field(
        D.compression_ratio_threshold, gt=1, description="Above: repetitive text, decode again."
    )
    logprob_threshold: float = Field(D.logprob_threshold, le=0, description="Below: unsure text, decode again.")
    no_speech_threshold: float = Field(
        D.no_speech_threshold, gt=0, lt=1, description="Above (and unsure): no speech, no text."
    )
    batch_size: int | Literal["auto"] = Field("auto", description="Utterances per model call; auto: from free memory.")
    max_batch: int = Field(R.max_batch, ge=1, le=256, description="Most utterances the recognize stage takes at once.")
    max_wait_ms: int = Field(R.max_wait_ms, ge=0, le=5000, description="How long a lone utterance waits for company.")
    prompt_previous: bool = Field(R.prompt_previous, description="Give the room's previous utterance as context.")
    prompt_max_gap_s: float = Field(
        R.prompt_max_gap_s, ge=0, description="Forget the previous utterance after this silence."
    )
    max_prompt_tokens: int = Field(
        D.max_prompt_tokens, ge=0, le=223, description="Most tokens of context (prompt + hotwords)."
    )
    hotwords: list[Hotword] = Field(
        [], max_length=1000, description="Words to expect in every room (names, jargon); 50 reach the model."
    )
    hotword_weight: float = Field(
        D.hotword_weight,
        ge=0,
        le=10,
        description="Logit boost for tokens that begin or continue a hotword; 0: prompt only.",
    )
    idle_release_s: float = Field(
        R.idle_release_s, ge=0, description="Release cached device memory after this idle time."
    )
    cuda_alloc_conf: str = Field(
        "garbage_collection_threshold:0.8,max_split_size_mb:128",
        description="PYTORCH_CUDA_ALLOC_CONF unless set in the environment.",
    )

    def decoding_options(self) -> DecodingOptions:
        return by_keyword(DecodingOptions, self, language_beams=tuple(sorted(self.language_beams.items())))

    @field_validator("language_beams")
    @classmethod
    def _language_beams(cls, values: dict[str, int]) -> dict[str, int]:
        for language, beam in values.items():
            if language not in LANGUAGE_CODES:
                raise ValueError(f"{language!r} is not a language code (en, zh, de, ...)")
            if not 1 <= beam <= 16:
                raise ValueError(f"the beam size for {language!r} must be 1 to 16")
        return values

    def stage_settings(self, stitch: StitchSettingsSection) -> RecognizeSettings:
        """The recognize stage's settings; what it does for the stitcher comes from [stitch]."""
        return by_keyword(RecognizeSettings, self, **stitch.recognize_settings())

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, values: list[float]) -> list[float]:
        if any(t < 0 or t > 2 for t in values) or values != sorted(values):
            raise ValueError("temperatures must be increasing values between 0 and 2")
        return values

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("batch_size must be auto or between 1 and 256")
        return value


class VadSettings(Section):
    threshold: float = Field(V.threshold, gt=0, lt=1, description="Silero speech probability that starts speech.")
    min_speech_ms: int = Field(V.min_speech_ms, ge=32, le=2000, description="Speech needed before an utterance starts.")
    pre_roll_ms: int = Field(V.pre_roll_ms, ge=0, le=2000, description="Audio kept before the detected start.")
    hangover_ms: int = Field(V.hangover_ms, ge=100, le=5000, description="Silence that ends an utterance.")
    post_roll_ms: int = Field(V.post_roll_ms, ge=0, le=2000, description="Silence kept after the last speech.")
    min_utterance_ms: int = Field(V.min_utterance_ms, ge=0, le=10000, description="Shorter speech is discarded.")
    max_utterance_ms: int = Field(
        V.max_utterance_ms, ge=2000, le=MAX_UTTERANCE_LIMIT_MS, description="Longer speech is cut at a quiet point."
    )
    cut_search_ms: int = Field(V.cut_search_ms, ge=500, le=10000, description="Window searched for that quiet point.")

    @model_validator(mode="after")
    def _lengths(self) -> VadSettings:
        if self.cut_search_ms >= self.max_utterance_ms:
            raise ValueError("cut_search_ms must be shorter than max_utterance_ms")
        if self.post_roll_ms > self.hangover_ms:
            raise ValueError("post_roll_ms cannot exceed hangover_ms")
        return self

    def params(self) -> VadParams:
        return by_keyword(VadParams, self)


class TextSettingsSection(Section):
    itn: bool = Field(T.itn, description="Spoken numbers, dates, times, money to written form (docs/itn.md).")
    fillers: bool = Field(T.fillers, description="Remove filler words (um, uh; 呃, 嗯 ...).")
    fillers_zh: list[str] = Field(list(T.fillers_zh), description="Chinese fillers (besides clause-opening 啊/那个).")
    fillers_en: list[str] = Field(list(T.fillers_en), description="English fillers, matched as whole words.")
    dictionary: str = Field(
        "", description="File of 'wrong => right' lines applied last; re-read when it changes. Empty: none."
    )
    hotword_correction: bool = Field(
        T.hotword_correction, description="Rewrite near misses of the hotwords to the hotword."
    )
    hotword_threshold: float = Field(
        T.hotword_threshold, ge=0.5, le=1.0, description="Similarity (0-1) a near miss needs; higher rewrites less."
    )
    zh_script: Script = Field(
        T.zh_script, description="Chinese output in one script: simplified, traditional or as-is (the model's mix)."
    )

    def settings(self, config_path: Path) -> TextSettings:
        path = resolve_path(self.dictionary, config_path) if self.dictionary else None
        return by_keyword(TextSettings, self, dictionary=path)


class StitchSettingsSection(Section):
    enabled: bool = Field(S.enabled, description="Join pieces of one sentence that a pause split.")
    endpoint_ms: int = Field(
        S.endpoint_ms, ge=100, le=5000, description="Silence that cuts a piece in a room the stitcher serves."
    )
    end_threshold: float = Field(
        S.end_threshold, ge=0.0, le=1.0, description="Publish a piece at once when P(sentence ends) is this high."
    )
    joint_threshold: float = Field(
        S.joint_threshold, ge=0.0, le=1.0, description="Keep pieces apart when the joint P(sentence ends) is this high."
    )
    max_gap_ms: int = Field(S.max_gap_ms, ge=0, le=10000, description="Never join across a longer silence.")
    max_hold_ms: int = Field(S.max_hold_ms, ge=0, le=30000, description="Never hold a piece longer, waiting for more.")
    complete_wait_ms: int = Field(
        S.complete_wait_ms, ge=0, le=10000, description="How long a piece that ends its sentence waits for more."
    )
    joint_decode: bool = Field(
        True, description="Recognize a piece together with an unfinished one before it, to join their words."
    )
    speculate_ms: int = Field(
        S.speculate_ms,
        ge=0,
        le=5000,
        description="Silence after which a live piece is recognized ahead of its endpoint (0: never).",
    )

    @model_validator(mode="after")
    def _hold_covers_gap(self) -> StitchSettingsSection:
        if self.enabled and self.max_hold_ms < self.max_gap_ms:
            raise ValueError("max_hold_ms must be at least max_gap_ms")
        # With the stitcher off no room cuts at endpoint_ms: each speculates before its own
        # hangover (Config.room_vad_params), so the bound is the stitched rooms' alone.
        if self.enabled and self.speculate_ms and self.speculate_ms >= self.endpoint_ms:
            raise ValueError("speculate_ms must be below endpoint_ms (or 0: no speculation)")
        return self

    def settings(self) -> StitchSettings:
        return by_keyword(StitchSettings, self)

    def recognize_settings(self) -> dict[str, Any]:
        """What the recognize stage does for the stitcher (sentence-end evidence, joint decodes)."""
        return {
            "stitch_max_gap_s": self.max_gap_ms / 1000 if self.enabled else 0.0,
            "end_threshold": self.end_threshold,
            "joint_decode": self.joint_decode,
        }


# Per-room changes to [vad]: the same keys and bounds, each optional; what a room leaves out
# comes from [vad].
_room_vad_fields: dict[str, Any] = {
    key: (Annotated[info.annotation, *info.metadata] | None, Field(None, description=info.description))
    for key, info in VadSettings.model_fields.items()
}
RoomVadSettings: type[Section] = create_model("RoomVadSettings", __base__=Section, **_room_vad_fields)


class RoomSettings(Section):
    name: str = Field(pattern=ROOM_NAME_PATTERN, description="Room name; used in MQTT topics.")
    enabled: bool = Field(True, description="A disabled room is not started.")
    language: str | None = Field(None, description="Language code for multilingual models.")
    hotwords: list[Hotword] = Field(
        [], max_length=1000, description="Words to expect in this room, besides recognizer.hotwords."
    )
    zh_script: Script | None = Field(None, description="Overrides text.zh_script for this room.")

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is not None and value not in LANGUAGE_CODES:
            raise ValueError("not a language code a model knows (two letters like en, zh, de; or yue, haw)")
        return value

    prompt_previous: bool | None = Field(None, description="Overrides recognizer.prompt_previous for this room.")
    stitch: bool = Field(True, description="false: publish every piece as it is, never joined.")
    partials: bool = Field(False, description="Publish interim text to <prefix>/<room>/partial while speaking.")
    partial_interval_ms: int = Field(1000, ge=200, le=10000, description="How often a partial is made.")
    vad: RoomVadSettings = Field(RoomVadSettings(), description="This room's changes to [vad].")
    source: SourceSettings


class BatchSettings(Section):
    allowed_dir: str = Field("", description="The transcribe command reads only below this folder; empty: refused.")
    output_dir: str = Field("", description="Where job outputs go; empty: <state_dir>/transcripts.")
    formats: list[Literal["txt", "srt", "vtt", "json", "jsonl"]] = Field(
        ["json", "srt"], min_length=1, description="Files written per input."
    )
    files_in_flight: int = Field(2, ge=1, le=16, description="Files decoded and segmented at once per job.")


class DebugSettings(Section):
    record: bool = Field(False, description="Keep each published utterance's audio (WAV) beside its JSON.")
    record_dir: str = Field("", description="Where; empty: <state_dir>/recordings.")
    record_max: int = Field(200, ge=1, le=100000, description="Keep the newest this many; older ones are deleted.")

    def record_path(self, config_path: Path, state_path: Path) -> Path:
        return resolve_path(self.record_dir, config_path) if self.record_dir else state_path / "recordings"


class Config(Section):
    daemon: DaemonSettings = DaemonSettings()
    debug: DebugSettings = DebugSettings()
    mqtt: MqttSettings = MqttSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    hermes: HermesSettings = HermesSettings()
    wyoming: WyomingSettings = WyomingSettings()
    http: HttpSettings = HttpSettings()
    remote: RemoteSettings = RemoteSettings()
    batch: BatchSettings = BatchSettings()
    recognizer: RecognizerSettings = RecognizerSettings()
    vad: VadSettings = VadSettings()
    text: TextSettingsSection = TextSettingsSection()
    stitch: StitchSettingsSection = StitchSettingsSection()
    rooms: list[RoomSettings] = Field(default_factory=list, description="The rooms to listen to.")

    @field_validator("rooms")
    @classmethod
    def _unique_names(cls, rooms: list[RoomSettings]) -> list[RoomSettings]:
        seen: set[str] = set()
        for room in rooms:
            if room.name in seen:
                raise ValueError(f"room name {room.name!r} is used twice")
            seen.add(room.name)
        return rooms

    @model_validator(mode="after")
    def _browser_rooms_need_http(self) -> Config:
        for i, room in enumerate(self.rooms):
            if room.source.type == "browser" and not self.http.enabled:
                raise ValueError(f'rooms[{i}].source: type = "browser" needs http.enabled = true (the caption page)')
        return self

    @model_validator(mode="after")
    def _room_vad(self) -> Config:
        for i, room in enumerate(self.rooms):
            try:
                self.room_vad(room)
            except ValidationError as exc:
                problems = [e["msg"].removeprefix("Value error, ") for e in exc.errors()]
                raise ValueError(f"rooms[{i}].vad with [vad]: " + "; ".join(problems)) from None
        return self

    def room_vad(self, room: RoomSettings) -> VadSettings:
        """[vad] with the room's own changes, checked like [vad] itself."""
        changes = room.vad.model_dump(exclude_none=True)
        return VadSettings.model_validate({**self.vad.model_dump(), **changes}) if changes else self.vad

    def room_vad_params(self, room: RoomSettings) -> VadParams:
        """The room's VAD: in a room the stitcher serves, a piece ends after stitch.endpoint_ms
        of silence (the recognizer then says whether the sentence ended), unless the room sets
        its own hangover_ms. Every room speculates after stitch.speculate_ms of silence (live
        sources only, pipeline/room.py) when that comes before its endpoint: a room without
        the stitcher waits its hangover (700 ms by default), and its text is then ready at
        the endpoint instead of being recognized after it."""
        params = self.room_vad(room).params()
        own_hangover = room.vad.model_dump(exclude_none=True).get("hangover_ms")
        if self.stitch.enabled and room.stitch and not own_hangover:
            endpoint = self.stitch.endpoint_ms
            params = dataclasses.replace(params, hangover_ms=endpoint, post_roll_ms=min(params.post_roll_ms, endpoint))
        speculate = self.stitch.speculate_ms
        return dataclasses.replace(params, speculate_ms=speculate if speculate < params.hangover_ms else 0)


def credential_path(value: str, config_path: Path) -> Path:
    """A secret's file: absolute; or a bare name in $CREDENTIALS_DIRECTORY (systemd
    LoadCredential=) when it is there; else relative to the config file's folder."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / candidate).is_file():
        return Path(cred_dir) / candidate
    return config_path.parent / candidate


def resolve_path(value: str, config_path: Path) -> Path:
    """Paths in the config are relative to the folder of the config file."""
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else config_path.parent / candidate
