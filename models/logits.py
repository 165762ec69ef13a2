"""Logit processors: what decoding does to a step's logits before a token is chosen.

Suppression (special and non-speech tokens; blank and end-of-text at the first step),
Whisper's timestamp grammar, and the hotword bonus. Each works in place on a float32
``[rows, vocab]`` tensor and can be tested alone; ``LogitRules`` applies them in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.tokenizer import WhisperTokenizer

# Timestamp tokens step 0.02 s; the first may be at most 1 s in (OpenAI's max_initial_timestamp).
TIMESTAMP_STEP_S = 0.02
MAX_INITIAL_TIMESTAMP = 50


def suppress_mask(tokenizer: WhisperTokenizer, extra: list[int], device: torch.device) -> Tensor:
    """Boolean mask of tokens never to emit: every special token but end-of-text, plus ``extra``."""
    mask = torch.zeros(tokenizer.n_vocab, dtype=torch.bool)
    mask[tokenizer.special.eot + 1 :] = True
    ids = [i for i in extra if 0 <= i < tokenizer.n_vocab and i != tokenizer.special.eot]
    mask[ids] = True
    return mask.to(device)


def apply_timestamp_rules(logits: Tensor, seqs: list[list[int]], step: int, begin: int, eot: int) -> None:
    """Whisper's timestamp grammar, in place (OpenAI's ApplyTimestampRules): text comes in
    segments opened and closed by timestamp tokens, which never go back in time; the first
    token is a timestamp within the first second; where the timestamps together are likelier
    than any single text token, a timestamp it is."""
    inf = float("-inf")
    for row, seq in enumerate(seqs):
        if step == 0 or not seq:
            logits[row, :begin] = inf
            logits[row, begin + MAX_INITIAL_TIMESTAMP + 1 :] = inf
            continue
        last = seq[-1] >= begin
        penultimate = len(seq) < 2 or seq[-2] >= begin
        if last:
            if penultimate:  # a segment was just closed and the next opened: text now
                logits[row, begin:] = inf
            else:  # text then a timestamp closes a segment: another timestamp or the end
                logits[row, :eot] = inf
        stamps = [t for t in seq if t >= begin]
        if stamps:
            floor = stamps[-1] if (last and not penultimate) else stamps[-1] + 1
            logits[row, begin:floor] = inf
    logprobs = logits.float().log_softmax(-1)
    stamp_mass = logprobs[:, begin:].logsumexp(-1)
    best_text = logprobs[:, :begin].max(-1).values
    force = (stamp_mass > best_text).nonzero().flatten().tolist()
    for row in force:
        logits[row, :begin] = inf


@dataclass(frozen=True)
class HotwordTokens:
    """A hotword as tokens; its continuation is boosted once the text already ends with its
    first ``begun`` tokens (a prefix long enough to mean something: 3 characters or more)."""

    tokens: tuple[int, ...]
    begun: int


def hotword_bonus(
    seqs: list[list[int]], hotwords: list[list[HotwordTokens]], beams: int, weight: float
) -> list[tuple[int, int, float]]:
    """(row, token, bonus) for the logits of each row: the next token of every hotword whose
    beginning the row's text ends with. A hotword not yet begun gets nothing: boosting first
    tokens everywhere pulled hotwords into ordinary speech (measured in bench/hotwords.py)."""
    bonus: dict[tuple[int, int], float] = {}
    for row, seq in enumerate(seqs):
        for word in hotwords[row // beams]:
            tokens = word.tokens
            for k in range(min(len(tokens) - 1, len(seq)), word.begun - 1, -1):
                if tuple(seq[-k:]) == tokens[:k]:
                    bonus[(row, tokens[k])] = weight
                    break
    return [(row, token, value) for (row, token), value in bonus.items()]


@dataclass
class LogitRules:
    """The processors of one decode, in the order they apply. ``hotwords`` is per item (an
    item's beams are consecutive rows); ``keep`` follows the batch when items leave it."""

    suppress: Tensor  # boolean [vocab]
    suppress_at_begin: list[int]
    eot: int
    beams: int
    timestamp_begin: int | None = None  # the first timestamp token: the grammar applies
    hotwords: list[list[HotwordTokens]] | None = None
    hotword_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.timestamp_begin is not None:
            self.suppress = self.suppress.clone()  # timestamps are special tokens: let them through
            self.suppress[self.timestamp_begin :] = False

    def apply(self, logits: Tensor, seqs: list[list[int]], step: int) -> Tensor:
        """The step's logits as float32 with every rule applied (in place when already float32:
        the decoder's logits are a fresh tensor every step)."""
        logits = logits.float().masked_fill_(self.suppress, float("-inf"))
        if step == 0:
            logits[:, self.suppress_at_begin] = float("-inf")
        if self.timestamp_begin is not None:
            apply_timestamp_rules(logits, seqs, step, self.timestamp_begin, self.eot)
        if self.hotwords and self.hotword_weight > 0 and any(self.hotwords):
            # Shallow biasing towards the room's hotwords (as token sequences); the prompt
            # biases too, this helps where the prompt alone is not enough.
            bonus = hotword_bonus(seqs, self.hotwords, self.beams, self.hotword_weight)
            if bonus:
                rows, toks, values = zip(*bonus, strict=True)
                logits[list(rows), list(toks)] += torch.tensor(values, device=logits.device)
        return logits

    def keep(self, order: list[int]) -> None:
        """Items left the batch; ``order`` lists the remaining items' old positions."""
        if self.hotwords:
            self.hotwords = [self.hotwords[i] for i in order]


def hotword_tokens(tokenizer: WhisperTokenizer, words: Sequence[str]) -> list[HotwordTokens]:
    """Each hotword as tokens, in the forms it takes mid-sentence and at the start, with how
    many tokens must be there before its continuation is boosted. The pipeline passes only
    hotwords the model can write (pipeline/roomstate.decoding_hotwords)."""
    out = []
    for word in words:
        word = word.strip()
        if not word:
            continue
        for form in {" " + word, word}:
            tokens = tuple(tokenizer.encode(form))
            begun = next(
                (k for k in range(1, len(tokens)) if len(tokenizer.decode(list(tokens[:k])).strip()) >= 3),
                len(tokens),
            )
            if begun < len(tokens):
                out.append(HotwordTokens(tokens, begun))
    return out
