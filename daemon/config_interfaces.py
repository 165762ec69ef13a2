"""Config sections of the doors besides MQTT: the Wyoming server (Home Assistant Assist)."""

from __future__ import annotations

from pydantic import Field

from daemon.config_base import Section


class WyomingSettings(Section):
    enabled: bool = Field(False, description="Serve speech-to-text over the Wyoming protocol (Home Assistant Assist).")
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on; 0.0.0.0 for every interface.")
    port: int = Field(10300, ge=1, le=65535, description="TCP port (Wyoming's usual 10300).")
    zeroconf: bool = Field(False, description="Announce the server as _wyoming._tcp by mDNS for Home Assistant.")
    zeroconf_name: str = Field("", max_length=63, description="The announced name; empty: roomscribe-<host name>.")
    max_audio_s: float = Field(
        60.0, gt=0, le=600, description="Longest audio of one request; more is refused with an error event."
    )


class RemoteSettings(Section):
    enabled: bool = Field(False, description="Recognize with `roomscribe worker` nodes through the broker.")
    group: str = Field(
        "roomscribe", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The workers' shared-subscription group."
    )
    deadline_s: float = Field(
        15.0, ge=1, le=600, description="A job not answered this long is sent again (the same job id)."
    )
    wait_for_worker_s: float = Field(
        10.0, ge=0, le=600, description="At start, how long to wait for a worker to say what it can do."
    )
    fallback_local: bool = Field(
        False, description="With no worker online, recognize with recognizer.model here (loaded at start)."
    )


class HttpSettings(Section):
    enabled: bool = Field(False, description="Serve the OpenAI-compatible transcription API over HTTP.")
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on; 0.0.0.0 for every interface.")
    port: int = Field(8765, ge=1, le=65535, description="TCP port.")
    token_file: str = Field(
        "", description="File holding a bearer token every request must carry; empty: none (a bare name is looked up "
        "in $CREDENTIALS_DIRECTORY)."
    )  # fmt: skip
    max_upload_mb: float = Field(200.0, gt=0, le=4096, description="Largest upload; more is refused with 413.")
