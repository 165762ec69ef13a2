"""Hermes protocol compatibility (Rhasspy and other Snips-style voice stacks), off by default.

- Out: each finished utterance also goes to ``hermes/asr/textCaptured``.
- In: a room with ``source = { type = "hermes" }`` hears the WAV chunks an audio server
  publishes on ``hermes/audioServer/<siteId>/audioFrame``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import soundfile as sf

TEXT_CAPTURED = "hermes/asr/textCaptured"


def audio_frame_topic(site_id: str) -> str:
    return f"hermes/audioServer/{site_id}/audioFrame"


def text_captured(record: dict[str, Any], site_id: str) -> dict[str, Any]:
    """The Hermes ASR result for one utterance record of our contract: the written text, our
    confidence as its likelihood, its length in seconds; no Hermes dialogue session exists
    here, so the session id is the utterance's id (stable, and unique per utterance)."""
    return {
        "text": record["text"],
        "likelihood": record["confidence"],
        "seconds": record["duration_s"],
        "siteId": site_id,
        "sessionId": record["id"],
        "lang": record["language"],
    }


def decode_audio_frame(payload: bytes) -> tuple[np.ndarray, int]:
    """One audioFrame (a complete WAV file) as mono float32 samples and their rate; a payload
    that is not WAV audio raises ValueError with the reason."""
    if not payload.startswith(b"RIFF"):
        raise ValueError("not a WAV file (no RIFF header)")
    try:
        data, rate = sf.read(io.BytesIO(payload), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"unreadable WAV ({exc})") from None
    return data.mean(axis=1, dtype=np.float32), int(rate)
