"""The SenseVoice engine: our own PyTorch SenseVoice-Small behind models.api.Recognizer.

Non-autoregressive: one encoder pass per batch and a greedy CTC read-out (the best token
per 60 ms frame, repeats merged, blanks dropped), so the cost follows the audio's length
(no 30-second window) and there is no decoding loop to search. What it cannot do, it
declares: no prompts, no decoding-time hotword bias (the text stage's pinyin correction
still applies), no timestamps (no CTC alignment here), no beam, no sentence-end score.
Its four tag rows give the language, the emotion and the audio event, kept on the
Recognition; ``<|nospeech|>`` in the language row means nothing was said.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.api import Capabilities, DecodingOptions, Recognition
from models.device import avoid_per_shape_attention_plans, quantize_linear_int8
from models.memory import BatchPolicy, free_device_bytes, is_out_of_memory, release_cached_memory, trim_heap
from models.packed import pack_bf16_linears
from models.sensevoice.encoder import LANGUAGE_QUERIES, QUERY_ROWS, SenseVoiceModel
from models.sensevoice.frontend import Frontend, load_cmvn
from models.sensevoice.loading import configs, read_state_dict, sensevoice_files

LANGUAGES = ("zh", "en", "yue", "ja", "ko")
EMOTIONS = {"HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED"}
UNKNOWN_TAGS = {"EMO_UNKNOWN", "Event_UNK", "withitn", "woitn"}
TAG = re.compile(r"<\|([^|]*)\|>")
BLANK = 0
FRAME_S = 0.06  # one output row per 60 ms (10 ms frames stacked 7, every 6)


def parse_tags(decoded: str) -> tuple[str, str | None, str | None, tuple[str, ...]]:
    """(text, language, emotion, events) from "<|en|><|NEUTRAL|><|Speech|><|woitn|>words"."""
    language = emotion = None
    events: list[str] = []
    for tag in TAG.findall(decoded):
        if tag in LANGUAGES or tag == "nospeech":
            language = language or tag
        elif tag in EMOTIONS:
            emotion = emotion or tag.lower()
        elif tag not in UNKNOWN_TAGS and tag:
            events.append(tag)
    return TAG.sub("", decoded).strip(), language, emotion, tuple(events)


def per_item_bytes(width: int, hidden: int, heads: int, max_audio_s: float, dtype_bytes: int) -> int:
    """A generous estimate of one utterance's activations (no cache: one pass, no loop)."""
    rows = int(max_audio_s / FRAME_S) + QUERY_ROWS
    return rows * (6 * width + hidden) * dtype_bytes * 4 + heads * rows * rows * 4 * 3


class SenseVoiceRecognizer:
    """Implements models.api.Recognizer (one worker thread, see its contract)."""

    max_audio_s = 60.0

    def __init__(
        self,
        path: Path,
        device: str,
        dtype: str,
        options: DecodingOptions | None = None,
        batch_size: int | str = "auto",
        quantize: str = "none",
    ) -> None:
        import sentencepiece

        files = sensevoice_files(path)
        state = read_state_dict(files.weights)
        encoder_config, frontend_config = configs(files, state)
        self.name, self.device, self.dtype = files.name, device, dtype
        self.options = options or DecodingOptions()
        self.text_norm = "woitn"  # our ITN runs in the text stage; "withitn" for the model's own
        self._torch_device = torch.device(device)
        if self._torch_device.type == "cuda":
            avoid_per_shape_attention_plans()
        self.model = SenseVoiceModel(encoder_config)
        self.model.load_state_dict(state, strict=True)
        self.model.to(self._torch_device, getattr(torch, dtype)).eval()
        pack_bf16_linears(self.model)  # bfloat16 on a CPU: weights packed once (models/packed.py)
        self.quantize = quantize
        if quantize == "int8":
            # Linear layers are 80% of a pass on a CPU and int8 halves them. Every one,
            # the CTC head included, as in FunASR's own int8 export (model_quant.onnx) and
            # sherpa-onnx's model.int8.onnx; keeping the head float32 cost 10% more time.
            quantize_linear_int8(self.model, device, dtype)
        self.frontend = Frontend(frontend_config, load_cmvn(files.cmvn))
        self.tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(files.tokenizer))
        self._nospeech = self.tokenizer.piece_to_id("<|nospeech|>")
        dtype_bytes = torch.finfo(getattr(torch, dtype)).bits // 8
        per_item = per_item_bytes(
            encoder_config.output_size,
            encoder_config.linear_units,
            encoder_config.attention_heads,
            self.max_audio_s,
            dtype_bytes,
        )
        self.batch_policy = BatchPolicy(batch_size, per_item, lambda: free_device_bytes(device))
        self.capabilities = Capabilities(
            multilingual=True,
            prompt=False,
            timestamps=False,
            hotword_bias=False,
            beam_search=False,
            max_batch=batch_size if isinstance(batch_size, int) else self.batch_policy.cap,
            max_audio_s=self.max_audio_s,
            languages=LANGUAGES,
            sentence_end=False,
        )
        self._owner: int | None = None

    def recognize(
        self,
        audios: list[np.ndarray],
        language: str | None = None,
        prompts: list[str] | None = None,
        hotwords: list[Sequence[str]] | None = None,
        timestamps: bool = False,
        sentence_end: bool | Sequence[str] = False,
    ) -> list[Recognition]:
        """Prompts and hotwords are ignored (capabilities say so); timestamps refused."""
        if timestamps:
            raise ValueError(f"{self.name} gives no timestamps (capabilities.timestamps is False)")
        query = language or "auto"
        if query not in LANGUAGE_QUERIES:
            raise ValueError(f"language {language!r} is not known to {self.name} (knows {', '.join(LANGUAGES)})")
        ident = threading.get_ident()
        if self._owner not in (None, ident):
            raise RuntimeError("SenseVoiceRecognizer used from two threads; use one worker thread")
        self._owner = ident

        def call(indices: Sequence[int]) -> list[Recognition]:
            return self.recognize_batch([audios[i] for i in indices], query)

        results = self.batch_policy.run(range(len(audios)), call, is_out_of_memory, self.release_memory)
        if self.device == "cpu":
            trim_heap()
        return results

    def release_memory(self) -> None:
        release_cached_memory(self.device)

    def logprobs(self, audios: list[np.ndarray], language: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probabilities (B, 4 + T, vocab) float32 and each item's rows (B,)."""
        return self.logprobs_of_features([self.frontend(audio) for audio in audios], language)

    def logprobs_of_features(self, feats: list[torch.Tensor], language: str) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([f.shape[0] for f in feats], device=self._torch_device)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(self._torch_device)
        logprobs = self.model(padded.to(getattr(torch, self.dtype)), lengths, language, self.text_norm)
        return logprobs, lengths + QUERY_ROWS

    @torch.inference_mode()
    def recognize_batch(self, audios: list[np.ndarray], language: str) -> list[Recognition]:
        if not audios:
            return []
        logprobs, rows = self.logprobs(audios, language)
        return [self._read(logprobs[i, : rows[i]], language) for i in range(len(audios))]

    def _read(self, logprobs: torch.Tensor, asked: str) -> Recognition:
        best, ids = logprobs.max(dim=-1)
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]
        keep &= ids != BLANK
        tokens = ids[keep].tolist()
        text, tag_language, emotion, events = parse_tags(self.tokenizer.decode(tokens))
        spoken = best[QUERY_ROWS:][keep[QUERY_ROWS:]]
        avg_logprob = float(spoken.mean()) if spoken.numel() else 0.0
        no_speech = math.exp(float(logprobs[0, self._nospeech])) if self._nospeech > 0 else 0.0
        rejected = "no_speech" if tag_language == "nospeech" or not text else None
        language = tag_language if tag_language in LANGUAGES else (asked if asked in LANGUAGES else "und")
        return Recognition(
            text=text,
            language=language,
            avg_logprob=avg_logprob,
            no_speech_prob=no_speech,
            confidence=math.exp(avg_logprob),
            n_tokens=max(0, len(tokens) - QUERY_ROWS),
            looped=False,
            rejected=rejected,
            audio_events=events,
            emotion=emotion,
        )
