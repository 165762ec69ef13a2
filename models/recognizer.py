"""The Whisper engine: our own PyTorch Whisper behind the recognizer protocol (models/api.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.api import Capabilities, DecodingOptions, Recognition
from models.decoding import (
    Decoded,
    compression_ratio,
    decode,
    detect_language,
    select_memory,
    split_segments,
    token_budget,
)
from models.device import avoid_per_shape_attention_plans, precision_name, quantize_linear_int8
from models.encoded import EncodedCache
from models.loading import ModelFiles, load_whisper, tokenizer_path
from models.logits import HotwordTokens, LogitRules, hotword_tokens, suppress_mask
from models.mel import SAMPLE_RATE, log_mel_spectrogram, padded_batch
from models.memory import (
    BatchPolicy,
    bytes_per_item,
    free_device_bytes,
    is_out_of_memory,
    release_cached_memory,
    trim_heap,
)
from models.packed import pack_bf16_linears
from models.search import Search
from models.sentence_end import final_mark_tokens, sentence_end_probs, text_tokens
from models.tokenizer import WhisperTokenizer
from models.whisper import KVCache

# Above this no-speech probability the text is dropped whatever its log-probability: on
# silence Whisper confidently writes "you" or "Thank you." (seen: 0.95 with logprob -0.37),
# while real speech stays far below it.
NO_SPEECH_STRONG = 0.8
# Windows per encoder call on a CPU (see WhisperRecognizer._encode).
CPU_ENCODER_SLICE = 2


@dataclass
class _Attempt:
    best: Decoded | None = None
    final: Decoded | None = None
    rejected: str | None = None
    last: Decoded | None = None


class WhisperRecognizer:
    """Implements models.api.Recognizer (see its threading contract)."""

    max_audio_s = 30.0

    def __init__(
        self,
        files: ModelFiles,
        device: str,
        dtype: str,
        options: DecodingOptions | None = None,
        batch_size: int | str = "auto",
        quantize: str = "none",
        encoder_dtype: str | None = None,
    ) -> None:
        self.name = files.name
        self.device = device
        self.dtype = precision_name(dtype, encoder_dtype or dtype)
        self.options = options or DecodingOptions()
        self._torch_device = torch.device(device)
        if self._torch_device.type == "cuda":
            avoid_per_shape_attention_plans()
        self.model = load_whisper(files, self._torch_device, getattr(torch, dtype))
        # The encoder may run in its own dtype (models/device.choose_encoder_dtype); its
        # output is cast to the decoder's.
        self._decoder_dtype = getattr(torch, dtype)
        self._encoder_dtype = getattr(torch, encoder_dtype or dtype)
        if quantize == "int8" and self._encoder_dtype != self._decoder_dtype:
            raise ValueError("quantize = int8 needs one dtype (float32) for the whole model")
        self.model.encoder.to(self._encoder_dtype)
        pack_bf16_linears(self.model.encoder)  # a bfloat16 encoder on a CPU (models/packed.py)
        self.quantize = quantize
        if quantize == "int8":
            quantize_linear_int8(self.model, device, dtype)
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
        self._languages = self.tokenizer.language_tokens() if self.model.dims.multilingual else {}
        self._generator = torch.Generator(device=self._torch_device).manual_seed(self.options.seed)
        dims = self.model.dims
        per_item = bytes_per_item(
            dims.n_audio_ctx,
            dims.width,
            dims.n_heads,
            max(dims.n_encoder_layers, dims.n_decoder_layers),
            dims.n_text_ctx,
            torch.finfo(getattr(torch, dtype)).bits // 8,
            self.options.widest_beam,
        )
        self.batch_policy = BatchPolicy(batch_size, per_item, lambda: free_device_bytes(device))
        self.capabilities = Capabilities(
            multilingual=self.multilingual,
            prompt=True,
            timestamps=True,
            hotword_bias=self.options.hotword_weight > 0,
            beam_search=True,
            # The most it decodes at once; a longer call is split (and halved after an OOM).
            max_batch=batch_size if isinstance(batch_size, int) else self.batch_policy.cap,
            max_audio_s=self.max_audio_s,
            languages=tuple(self._languages),
            sentence_end=True,
        )
        self._owner: int | None = None
        self._hotword_cache: dict[tuple[str, ...], list[HotwordTokens]] = {}
        self._final_marks: torch.Tensor | None = None  # models/sentence_end.final_mark_tokens
        self._encoded = EncodedCache()  # the latest audios' encoder outputs (models/encoded.py)

    @property
    def multilingual(self) -> bool:
        return self.model.dims.multilingual

    def _task_tokens(self, language: str, timestamps: bool = False) -> list[int]:
        special = self.tokenizer.special
        tail = [] if timestamps else [special.no_timestamps]
        if not self.multilingual:
            return [special.sot, *tail]
        lang_token = self.tokenizer.language_token(language)
        if lang_token is None:
            raise ValueError(f"language {language!r} is not known to {self.name}")
        return [special.sot, lang_token, special.transcribe, *tail]

    @property
    def _timestamp_begin(self) -> int:
        return self.tokenizer.special.no_timestamps + 1

    def _prompt_tokens(self, prompt: str | None) -> list[int]:
        if not prompt or not prompt.strip() or self.options.max_prompt_tokens <= 0:
            return []
        tokens = self.tokenizer.encode(" " + prompt.strip())[-self.options.max_prompt_tokens :]
        return [self.tokenizer.special.sot_prev, *tokens]

    def _check_thread(self) -> None:
        # Enforce the threading contract: the first caller's thread owns the model.
        ident = threading.get_ident()
        if self._owner is None:
            self._owner = ident
        elif self._owner != ident:
            raise RuntimeError("WhisperRecognizer used from two threads; use one worker thread")

    def recognize(
        self,
        audios: list[np.ndarray],
        language: str | None = None,
        prompts: list[str] | None = None,
        hotwords: list[Sequence[str]] | None = None,
        timestamps: bool = False,
        sentence_end: bool | Sequence[str] = False,
    ) -> list[Recognition]:
        self._check_thread()
        all_prompts = prompts or [""] * len(audios)
        all_hotwords = hotwords or [()] * len(audios)

        def call(indices: Sequence[int]) -> list[Recognition]:
            return self._recognize_batch(
                [audios[i] for i in indices],
                language,
                [all_prompts[i] for i in indices],
                [self._hotword_tokens(tuple(all_hotwords[i])) for i in indices],
                timestamps,
                [sentence_end[i] for i in indices] if isinstance(sentence_end, Sequence) else sentence_end,
            )

        results = self.batch_policy.run(range(len(audios)), call, is_out_of_memory, self.release_memory)
        if self.device == "cpu":
            trim_heap()
        return results

    def release_memory(self) -> None:
        """Release cached device memory (after an out-of-memory error, when idle, on command)."""
        self._encoded.clear()
        release_cached_memory(self.device)

    def _hotword_tokens(self, words: tuple[str, ...]) -> list[HotwordTokens]:
        if words not in self._hotword_cache:
            self._hotword_cache[words] = hotword_tokens(self.tokenizer, words)
            if len(self._hotword_cache) > 256:
                self._hotword_cache.pop(next(iter(self._hotword_cache)))
        return self._hotword_cache[words]

    @torch.inference_mode()
    def _recognize_batch(
        self,
        audios: list[np.ndarray],
        language: str | None,
        prompts: list[str],
        hotwords: list[list[HotwordTokens]],
        timestamps: bool = False,
        sentence_end: bool | Sequence[str] = False,
    ) -> list[Recognition]:
        if not audios:
            return []
        memory = self._encoded.encode(audios, self._encode_audios)
        memory_kv = self.model.decoder.project_memory(memory)

        languages: list[tuple[str, float | None]]
        if not self.multilingual:
            languages = [("en", None)] * len(audios)
        elif language:
            languages = [(language, None)] * len(audios)
        else:
            languages = list(detect_language(self.model, self.tokenizer, memory_kv, self._languages))
        prefixes = [
            self._prompt_tokens(prompt) + self._task_tokens(lang, timestamps)
            for prompt, (lang, _) in zip(prompts, languages, strict=True)
        ]
        # Timestamps take tokens too: about two per segment, a segment every few seconds.
        budgets = [
            token_budget(len(a) / SAMPLE_RATE) + (int(len(a) / SAMPLE_RATE) if timestamps else 0) for a in audios
        ]
        # Each language with its beam (``DecodingOptions.language_beams``): one decode per beam.
        attempts: list[_Attempt] = [_Attempt() for _ in audios]
        by_beam: dict[int, list[int]] = {}
        for i, (lang, _) in enumerate(languages):
            by_beam.setdefault(self.options.beam_for(lang), []).append(i)
        for beam, items in by_beam.items():
            kv = memory_kv if len(items) == len(audios) else select_memory(memory_kv, self._index(items))
            picked = ([prefixes[i] for i in items], [budgets[i] for i in items], [hotwords[i] for i in items])
            for i, attempt in zip(items, self._decode_with_fallback(kv, *picked, timestamps, beam), strict=True):
                attempts[i] = attempt
        durations = [len(a) / SAMPLE_RATE for a in audios]
        results = [
            self._result(attempt, lang, prob, timestamps, duration)
            for attempt, (lang, prob), duration in zip(attempts, languages, durations, strict=True)
        ]
        if not sentence_end:
            return results
        after = [a.final.tokens if a.final else [] for a in attempts] if sentence_end is True else sentence_end
        return self._with_sentence_end(results, [text_tokens(self.tokenizer, t) for t in after], prefixes, memory_kv)

    def _with_sentence_end(
        self, results: list[Recognition], texts: list[list[int]], prefixes: list[list[int]], memory_kv: KVCache
    ) -> list[Recognition]:
        """Each result with ``sentence_end`` after ``texts`` (models/sentence_end.py)."""
        if self._final_marks is None:
            self._final_marks = torch.tensor(final_mark_tokens(self.tokenizer), device=self._torch_device)
        items = [i for i, r in enumerate(results) if r.text and texts[i]]
        sequences = [prefixes[i] + texts[i] for i in items]
        kv = memory_kv if len(items) == len(results) else select_memory(memory_kv, self._index(items))
        probs = sentence_end_probs(self.model, kv, sequences, self._final_marks)
        out = list(results)
        for i, p in zip(items, probs, strict=True):
            out[i] = dataclasses.replace(results[i], sentence_end=round(p, 4))
        return out

    def _index(self, items: list[int]) -> torch.Tensor:
        return torch.tensor(items, device=self._torch_device)

    def _encode_audios(self, audios: list[np.ndarray]) -> torch.Tensor:
        mel = log_mel_spectrogram(padded_batch(audios).to(self._torch_device), self.model.dims.n_mels)
        return self._encode(mel.to(self._encoder_dtype)).to(self._decoder_dtype)

    def _encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Encoder output for a batch of log-mel windows. On a CPU a few windows at a time:
        a whole batch's activations (147 MB per feed-forward layer for 16 windows) are
        fresh memory-mapped pages on every call, and the page faults made a batch of 16
        cost 410 ms a window against 315 ms in pairs (a third of it system time). A GPU
        takes the batch in one go."""
        encoder = self.model.encoder
        if self.device != "cpu" or mel.shape[0] <= CPU_ENCODER_SLICE:
            out: torch.Tensor = encoder(mel)
            return out
        starts = range(0, mel.shape[0], CPU_ENCODER_SLICE)
        return torch.cat([encoder(mel[i : i + CPU_ENCODER_SLICE]) for i in starts])

    def _decode_with_fallback(
        self,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        prefixes: list[list[int]],
        budgets: list[int],
        hotwords: list[list[HotwordTokens]],
        timestamps: bool,
        beam_size: int,
    ) -> list[_Attempt]:
        o = self.options
        attempts = [_Attempt() for _ in prefixes]
        pending = list(range(len(prefixes)))
        for temperature in o.temperatures:
            sub_kv = memory_kv if len(pending) == len(prefixes) else select_memory(memory_kv, self._index(pending))
            search = Search(beam_size, temperature, self._generator)
            rules = LogitRules(
                self._suppress,
                self._suppress_at_begin,
                self.tokenizer.special.eot,
                search.beams,
                timestamp_begin=self._timestamp_begin if timestamps else None,
                hotwords=[hotwords[i] for i in pending],
                hotword_weight=o.hotword_weight,
            )
            prefix_batch, budget_batch = [prefixes[i] for i in pending], [budgets[i] for i in pending]
            decoded = decode(self.model, self.tokenizer, sub_kv, prefix_batch, budget_batch, rules, search)
            still = []
            for i, item in zip(pending, decoded, strict=True):
                attempt = attempts[i]
                attempt.last = item
                if item.no_speech_prob > NO_SPEECH_STRONG or (
                    item.no_speech_prob > o.no_speech_threshold and item.avg_logprob < o.logprob_threshold
                ):
                    attempt.final, attempt.rejected = item, "no_speech"
                    continue
                text = self.tokenizer.decode(item.tokens)
                repetitive = item.looped or compression_ratio(text) > o.compression_ratio_threshold
                if not repetitive and (attempt.best is None or item.avg_logprob > attempt.best.avg_logprob):
                    attempt.best = item
                if repetitive or item.avg_logprob < o.logprob_threshold:
                    still.append(i)
                else:
                    attempt.final = item
            pending = still
            if not pending:
                break
        for i in pending:
            attempt = attempts[i]
            # Out of temperatures: the least bad non-repetitive attempt, or nothing at all
            # (a repeating text is a hallucination, not a transcript).
            attempt.final = attempt.best
            if attempt.final is None:
                attempt.final, attempt.rejected = attempt.last, "hallucination"
        return attempts

    def _result(
        self,
        attempt: _Attempt,
        language: str,
        language_probability: float | None,
        timestamps: bool = False,
        duration_s: float = 0.0,
    ) -> Recognition:
        item = attempt.final
        assert item is not None
        text = "" if attempt.rejected else self.tokenizer.decode(item.tokens).strip()
        segments: list[tuple[float, float, str]] = []
        if timestamps and text:
            for start, end, ids in split_segments(item.tokens, self._timestamp_begin):
                words = self.tokenizer.decode(ids).strip()
                if words:  # an open segment (no closing timestamp) keeps end == start: unknown
                    segments.append((start, min(end, duration_s), words))
            text = " ".join(words for _, _, words in segments) or text
        return Recognition(
            text=text,
            language=language,
            avg_logprob=item.avg_logprob,
            no_speech_prob=item.no_speech_prob,
            confidence=round(math.exp(item.avg_logprob), 3) if item.tokens else 0.0,
            n_tokens=len(item.tokens),
            looped=item.looped,
            temperature=item.temperature,
            language_probability=language_probability,
            rejected=attempt.rejected,
            segments=tuple(segments),
        )
