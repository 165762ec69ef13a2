"""Greedy decoding with a KV cache, batched across utterances with per-item stopping."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.tokenizer import WhisperTokenizer
from models.whisper import Whisper

# Whisper's decoder context is 448 tokens; OpenAI caps the sampled part at half of it.
MAX_SAMPLE_TOKENS = 224
# Token budget per second of audio. Fast English is about 4 tokens/s; 7 leaves room for
# dense speech while stopping a runaway loop on a short utterance early.
TOKENS_PER_SECOND = 7.0
MIN_TOKEN_BUDGET = 12
# A loop is declared when the last REPEAT_COUNT n-grams are identical (n <= MAX_LOOP_NGRAM).
REPEAT_COUNT = 4
MAX_LOOP_NGRAM = 16


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float
    looped: bool

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / max(1, len(self.tokens) + 1)


def token_budget(duration_s: float) -> int:
    """How many tokens an utterance of this length may produce."""
    return min(MAX_SAMPLE_TOKENS, MIN_TOKEN_BUDGET + int(TOKENS_PER_SECOND * duration_s + 0.999))


def loop_length(tokens: list[int]) -> int:
    """Length n of an n-gram repeated REPEAT_COUNT times at the end of ``tokens``, or 0."""
    for n in range(1, MAX_LOOP_NGRAM + 1):
        if len(tokens) < n * REPEAT_COUNT:
            break
        tail = tokens[-n:]
        if all(tokens[-n * (k + 1) : len(tokens) - n * k] == tail for k in range(1, REPEAT_COUNT)):
            return n
    return 0


def suppress_mask(tokenizer: WhisperTokenizer, extra: list[int], device: torch.device) -> Tensor:
    """Boolean mask of tokens never to emit: every special token but end-of-text, plus ``extra``."""
    mask = torch.zeros(tokenizer.n_vocab, dtype=torch.bool)
    mask[tokenizer.special.eot + 1 :] = True
    ids = [i for i in extra if 0 <= i < tokenizer.n_vocab and i != tokenizer.special.eot]
    mask[ids] = True
    return mask.to(device)


@torch.inference_mode()
def greedy_decode(
    model: Whisper,
    tokenizer: WhisperTokenizer,
    mel: Tensor,
    prefix: list[int],
    budgets: list[int],
    suppress: Tensor,
    suppress_at_begin: list[int],
) -> list[Decoded]:
    """Decode a batch of mel windows [batch, n_mels, 3000] greedily.

    Every item starts from the same ``prefix`` (start-of-transcript ... no-timestamps) and
    stops at end-of-text, at its own token budget, or when it starts to loop.
    """
    eot = tokenizer.special.eot
    batch = mel.shape[0]
    memory = model.encoder(mel)
    memory_kv = model.decoder.project_memory(memory)
    tokens = torch.tensor([prefix] * batch, device=mel.device)
    logits, cache = model.decoder(tokens, memory_kv, None)
    sot_index = prefix.index(tokenizer.special.sot)
    no_speech = logits[:, sot_index].softmax(-1)[:, tokenizer.special.no_speech].tolist()
    step_logits = logits[:, -1]

    out: list[list[int]] = [[] for _ in range(batch)]
    sum_logprob = [0.0] * batch
    done = [False] * batch
    looped = [False] * batch
    for step in range(max(budgets)):
        step_logits = step_logits.masked_fill(suppress, float("-inf"))
        if step == 0:
            step_logits[:, suppress_at_begin] = float("-inf")
        logprobs = step_logits.log_softmax(-1)
        next_tokens = logprobs.argmax(-1)
        chosen = logprobs.gather(1, next_tokens[:, None])[:, 0].tolist()
        next_list = next_tokens.tolist()
        for i in range(batch):
            if done[i]:
                next_list[i] = eot
                continue
            sum_logprob[i] += chosen[i]
            if next_list[i] == eot:
                done[i] = True
                continue
            out[i].append(next_list[i])
            n = loop_length(out[i])
            if n:
                # Keep one copy of the repeated n-gram; the rest is the model stuck.
                del out[i][-n * (REPEAT_COUNT - 1) :]
                looped[i] = done[i] = True
            elif len(out[i]) >= budgets[i]:
                done[i] = True
        if all(done):
            break
        step_tokens = torch.tensor(next_list, device=mel.device)[:, None]
        step_logits, cache = model.decoder(step_tokens, memory_kv, cache)
        step_logits = step_logits[:, -1]
    return [Decoded(out[i], sum_logprob[i], no_speech[i], looped[i]) for i in range(batch)]
