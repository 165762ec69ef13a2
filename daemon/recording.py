"""Debug recording: each published utterance's audio as a WAV file beside its JSON record.

Off by default (``[debug] record_dir``). A field problem ("it wrote nonsense at 3 am") then
comes with the exact audio the recognizer heard, ready to become a test case. The folder is
bounded: only the newest ``max_utterances`` pairs are kept, the oldest are deleted as new
ones arrive. Audio never leaves the machine; the folder is as private as the state folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pipeline.messages import SAMPLE_RATE


def _safe_name(utterance_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", utterance_id)[:200] or "utterance"


class UtteranceRecorder:
    def __init__(self, directory: Path, max_utterances: int) -> None:
        self.directory = directory
        self.max_utterances = max_utterances
        self.saved = 0

    def save(self, record: dict[str, Any], audio: np.ndarray) -> Path:
        """Write ``<id>.wav`` (16 kHz mono, 16-bit) and ``<id>.json``; returns the JSON's path.
        Runs off the event loop (file I/O). Each file appears whole or not at all."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        stem = self.directory / _safe_name(str(record["id"]))
        wav, meta = stem.with_suffix(".wav"), stem.with_suffix(".json")
        tmp = stem.with_suffix(".wav.tmp")
        sf.write(tmp, np.asarray(audio, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, wav)
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**record, "audio_file": wav.name}, ensure_ascii=False, indent=1) + "\n")
        os.replace(tmp, meta)  # the JSON last: a pair counts once its JSON exists
        self.saved += 1
        self.prune()
        return meta

    def prune(self) -> int:
        """Delete the oldest pairs beyond ``max_utterances``; returns how many went."""
        records = sorted(self.directory.glob("*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        extra = records[: max(0, len(records) - self.max_utterances)]
        for meta in extra:
            meta.with_suffix(".wav").unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
        return len(extra)
