"""The recognizer interface and its Whisper implementation."""

from __future__ import annotations

import json
import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from models.decoding import greedy_decode, suppress_mask, token_budget
from models.device import choose_device, choose_dtype
from models.loading import ModelFiles, load_whisper, resolve_model, tokenizer_path
from models.mel import SAMPLE_RATE, log_mel_spectrogram
from models.tokenizer import WhisperTokenizer

# OpenAI's thresholds: an utterance counts as silence when the no-speech probability is
# high *and* the text is not confidently decoded.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
# Above this no-speech probability the text is dropped whatever its log-probability: on
# silence Whisper confidently writes "you" or "Thank you." (seen: 0.95 with logprob -0.37),
# while real speech stays far below it.
NO_SPEECH_STRONG = 0.8


@dataclass(frozen=True)
class Recognition:
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    confidence: float
    n_tokens: int
    looped: bool


class Recognizer(ABC):
    """Turns 16 kHz mono float32 utterances into text.

    Threading contract: an instance is not thread-safe. All calls to ``recognize`` must come
    from one worker thread (the pipeline uses a single-thread executor); the event loop
    never calls it directly.
    """

    name: str
    device: str
    dtype: str
    max_audio_s: float

    @abstractmethod
    def recognize(self, audios: list[np.ndarray], language: str | None = None) -> list[Recognition]:
        """Recognize a batch of utterances; returns one result per input, in order."""


class WhisperRecognizer(Recognizer):
    max_audio_s = 30.0

    def __init__(self, files: ModelFiles, device: str, dtype: str) -> None:
        self.name = files.name
        self.device = device
        self.dtype = dtype
        self._torch_device = torch.device(device)
        self.model = load_whisper(files, self._torch_device, getattr(torch, dtype))
        self.tokenizer = WhisperTokenizer(tokenizer_path(files, self.model.dims.n_vocab), self.model.dims.n_vocab)
        # CTranslate2 models carry their suppress lists; for the others we derive the same
        # list the way OpenAI's decoder does.
        extra_suppress = self.tokenizer.non_speech_tokens()
        self._suppress_at_begin = [self.tokenizer.encode(" ")[0], self.tokenizer.special.eot]
        if files.config is not None:
            config = json.loads(files.config.read_text())
            extra_suppress = list(config.get("suppress_ids", extra_suppress))
            self._suppress_at_begin = list(config.get("suppress_ids_begin", self._suppress_at_begin))
        self._suppress = suppress_mask(self.tokenizer, extra_suppress, self._torch_device)
        self._owner: int | None = None

    def _prefix(self, language: str | None) -> tuple[list[int], str]:
        special = self.tokenizer.special
        if not self.model.dims.multilingual:
            return [special.sot, special.no_timestamps], "en"
        lang = language or "en"
        lang_token = self.tokenizer.language_token(lang)
        if lang_token is None:
            raise ValueError(f"language {lang!r} is not known to {self.name}")
        return [special.sot, lang_token, special.transcribe, special.no_timestamps], lang

    def _check_thread(self) -> None:
        # Enforce the threading contract: the first caller's thread owns the model.
        ident = threading.get_ident()
        if self._owner is None:
            self._owner = ident
        elif self._owner != ident:
            raise RuntimeError("WhisperRecognizer used from two threads; use one worker thread")

    def recognize(self, audios: list[np.ndarray], language: str | None = None) -> list[Recognition]:
        self._check_thread()
        if not audios:
            return []
        prefix, lang = self._prefix(language)
        n_samples = max(len(a) for a in audios)
        batch = torch.zeros(len(audios), n_samples)
        for i, audio in enumerate(audios):
            batch[i, : len(audio)] = torch.from_numpy(np.asarray(audio, dtype=np.float32))
        mel = log_mel_spectrogram(batch.to(self._torch_device), self.model.dims.n_mels)
        mel = mel.to(getattr(torch, self.dtype))
        budgets = [token_budget(len(a) / SAMPLE_RATE) for a in audios]
        decoded = greedy_decode(
            self.model, self.tokenizer, mel, prefix, budgets, self._suppress, self._suppress_at_begin
        )
        results = []
        for item in decoded:
            silent = item.no_speech_prob > NO_SPEECH_STRONG or (
                item.no_speech_prob > NO_SPEECH_THRESHOLD and item.avg_logprob < LOGPROB_THRESHOLD
            )
            text = "" if silent else self.tokenizer.decode(item.tokens).strip()
            results.append(
                Recognition(
                    text=text,
                    language=lang,
                    avg_logprob=item.avg_logprob,
                    no_speech_prob=item.no_speech_prob,
                    confidence=round(math.exp(item.avg_logprob), 3),
                    n_tokens=len(item.tokens),
                    looped=item.looped,
                )
            )
        return results


def load_recognizer(model: str, device: str = "auto", dtype: str = "auto") -> WhisperRecognizer:
    """Load the configured recognizer; raises ModelNotFoundError with a clear message."""
    files = resolve_model(model)
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    chosen = choose_device(device, cuda_count)
    return WhisperRecognizer(files, chosen, choose_dtype(dtype, chosen))
