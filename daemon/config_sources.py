"""The ``source`` of a room: a file, a microphone, a stream, Hermes audio frames, or the
caption page's browser microphone."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from daemon.config_base import Section


class FileSourceSettings(Section):
    type: Literal["file"]
    path: str = Field(description="WAV or FLAC file; relative paths start at the config file's folder.")
    realtime: bool = Field(True, description="Pace like a microphone (true) or read as fast as possible.")
    loop: bool = Field(False, description="Start again at the end of the file.")


class MicSourceSettings(Section):
    type: Literal["mic"]
    device: str | int = Field("default", description="default, a device index, or part of its name.")
    retry_max_s: float = Field(
        10.0, ge=0.5, le=600, description="A lost device is reopened after 0.5 s, 1 s, 2 s... up to this."
    )


class StreamSourceSettings(Section):
    type: Literal["stream"]
    url: str = Field(min_length=1, description="rtsp://, http(s):// or anything ffmpeg opens; a file plays as live.")
    stall_s: float = Field(10.0, ge=1, le=600, description="No audio for this long counts as a dropped stream.")
    retry_max_s: float = Field(
        10.0, ge=0.5, le=600, description="A dropped stream is reopened after 0.5 s, 1 s, 2 s... up to this."
    )


class HermesSourceSettings(Section):
    type: Literal["hermes"]
    site_id: str = Field(
        "", pattern=r"^[^#+/]*$", description="Hermes siteId whose audio frames to hear; empty: the room's name."
    )


class BrowserSourceSettings(Section):
    """The microphone of a browser showing the caption page (needs [http]): the page sends
    16 kHz PCM every 500 ms over its WebSocket; the newest page to connect is the one heard."""

    type: Literal["browser"]


SourceSettings = Annotated[
    FileSourceSettings | MicSourceSettings | StreamSourceSettings | HermesSourceSettings | BrowserSourceSettings,
    Field(discriminator="type"),
]
SOURCE_TYPES = {
    "file": FileSourceSettings,
    "mic": MicSourceSettings,
    "stream": StreamSourceSettings,
    "hermes": HermesSourceSettings,
    "browser": BrowserSourceSettings,
}
