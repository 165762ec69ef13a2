"""Decoding: greedy, beam search and sampling with a KV cache, batched across utterances.

Every item of a batch has its own prefix (an optional prompt, then start-of-transcript,
language, task, no-timestamps), its own token budget and its own stopping; prefixes of
different lengths are left-padded and masked. Beam search keeps ``beam_size`` hypotheses per
item and stops an item once it has that many finished ones (patience 1), like
faster-whisper.

A step is four parts, each in its own place: the logit processors (models/logits.py:
suppression, timestamp grammar, hotword bonus), token choice and stopping
(models/search.py), and the batch's decoder state here (``DecoderBatch``: KV cache,
masks, positions, and compaction when items finish).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from models.logits import LogitRules
from models.search import Choice, Item, Search, best, choose_beams, choose_sampled, finish_sampled, stop
from models.tokenizer import SpecialTokens, WhisperTokenizer
from models.whisper import KVCache, Whisper

# Whisper's decoder context is 448 tokens; OpenAI caps the sampled part at half of it.
MAX_SAMPLE_TOKENS = 224
# Token budget per second of audio. Fast English is about 4 tokens/s; 7 leaves room for
# dense speech while stopping a runaway loop on a short utterance early.
TOKENS_PER_SECOND = 7.0
MIN_TOKEN_BUDGET = 12


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float
    looped: bool
    temperature: float = 0.0

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / max(1, len(self.tokens) + 1)


def token_budget(duration_s: float) -> int:
    """How many tokens an utterance of this length may produce."""
    return min(MAX_SAMPLE_TOKENS, MIN_TOKEN_BUDGET + int(TOKENS_PER_SECOND * duration_s + 0.999))


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes: above ~2.4 the text repeats itself (a hallucination)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def split_segments(tokens: list[int], begin: int) -> list[tuple[float, float, list[int]]]:
    """(start s, end s, text tokens) per segment of a timestamped decode. Text after the last
    timestamp (the budget ran out) is a segment whose end is unknown: it ends where it
    starts, and the caller extends it to the end of the audio."""
    from models.logits import TIMESTAMP_STEP_S

    segments: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    text: list[int] = []
    for token in tokens:
        if token >= begin:
            t = (token - begin) * TIMESTAMP_STEP_S
            if start is not None and text:
                segments.append((start, t, text))
                text = []
                start = None
            else:
                start = t
        else:
            text.append(token)
    if text:
        segments.append((start or 0.0, start or 0.0, text))
    return segments


def select_memory(memory_kv: KVCache, index: Tensor) -> KVCache:
    return [(k.index_select(0, index), v.index_select(0, index)) for k, v in memory_kv]


def leave_batch(memory_kv: KVCache, live: list[int], owned: bool) -> tuple[KVCache, list[int]]:
    """The encoder outputs of the ``live`` items (positions in the batch) only, and the order
    the items now have (old positions, in their new places).

    Not ``owned`` (the caller's tensors, which a fallback decode may need again): a copy of
    the live items. Owned: in place, each place below the new size that a finished item held
    is filled from a live item beyond it, so that one item's keys and values move per
    finished item. Copying every live item at every finish cost 10% of a batch of 16
    timestamped chunks on a CPU (each item's keys and values are 18 MB for tiny.en).
    """
    device = memory_kv[0][0].device
    if not owned:
        return select_memory(memory_kv, torch.tensor(live, device=device)), live
    size, alive = len(live), set(live)
    holes = [p for p in range(size) if p not in alive]
    movers = [p for p in live if p >= size]
    order = list(range(size))
    for hole, mover in zip(holes, movers, strict=True):
        order[hole] = mover
    if holes:
        src, dst = torch.tensor(movers, device=device), torch.tensor(holes, device=device)
        for k, v in memory_kv:
            k.index_copy_(0, dst, k.index_select(0, src))
            v.index_copy_(0, dst, v.index_select(0, src))
    return [(k[:size], v[:size]) for k, v in memory_kv], order


@torch.inference_mode()
def detect_language(
    model: Whisper, tokenizer: WhisperTokenizer, memory_kv: KVCache, language_tokens: dict[str, int]
) -> list[tuple[str, float]]:
    """Most likely language per item, with its probability, from one decoder step on <|sot|>."""
    batch = memory_kv[0][0].shape[0]
    device = memory_kv[0][0].device
    sot = torch.full((batch, 1), tokenizer.special.sot, device=device)
    logits, _ = model.decoder(sot, memory_kv, None)
    ids = torch.tensor(list(language_tokens.values()), device=device)
    probs = logits[:, 0, ids].softmax(-1)
    best_index = probs.argmax(-1).tolist()
    names = list(language_tokens)
    return [(names[b], float(probs[i, b])) for i, b in enumerate(best_index)]


class DecoderBatch:
    """The decoder's state for the rows still decoding: self-attention cache, key mask and
    positions (left-padded prefixes), the rows' tokens and scores, and the encoder output of
    the items still live. Rows are ``beams`` consecutive ones per item."""

    def __init__(
        self, model: Whisper, memory_kv: KVCache, prefixes: list[list[int]], beams: int, special: SpecialTokens
    ) -> None:
        self.model = model
        self.beams = beams
        self.memory_kv = memory_kv
        self.owned_memory = False  # memory_kv is still the caller's (see leave_batch)
        batch = len(prefixes)
        device = self.device = memory_kv[0][0].device
        width = max(len(p) for p in prefixes)
        pads = [width - len(p) for p in prefixes]
        sot = special.sot
        tokens = torch.tensor([[special.eot] * pad + p for pad, p in zip(pads, prefixes, strict=True)], device=device)
        valid = torch.tensor([[False] * pad + [True] * len(p) for pad, p in zip(pads, prefixes, strict=True)])
        self.valid = valid.to(device)
        positions = torch.arange(width, device=device)[None, :] - torch.tensor(pads, device=device)[:, None]
        # Without padding the decoder's plain path is exact and faster (no attention mask).
        self.uniform = not any(pads)
        logits, self.cache = model.decoder(
            tokens,
            memory_kv,
            None,
            positions=None if self.uniform else positions.clamp(min=0),
            key_valid=None if self.uniform else self.valid,
        )
        sot_at = torch.tensor([pad + p.index(sot) for pad, p in zip(pads, prefixes, strict=True)], device=device)
        no_speech = logits[torch.arange(batch, device=device), sot_at].softmax(-1)[:, special.no_speech]
        self.no_speech: list[float] = no_speech.tolist()
        self.step_logits = logits[:, -1]
        self.next_position = torch.tensor([len(p) for p in prefixes], device=device)
        self.tokens = torch.empty(0, dtype=torch.long, device=device)
        self.seqs: list[list[int]] = [[] for _ in range(batch * beams)]
        self.scores = torch.zeros(batch * beams, device=device)
        if beams > 1:
            self._expand(batch)

    def _expand(self, batch: int) -> None:
        """Beam rows from the prefix pass's one row per item. The encoder output stays one
        per item: the decoder's cross-attention groups the beams of an item onto it."""
        expand = torch.arange(batch, device=self.device).repeat_interleave(self.beams)
        self.cache = [(k.index_select(0, expand), v.index_select(0, expand)) for k, v in self.cache]
        self.step_logits = self.step_logits.index_select(0, expand)
        self.valid = self.valid.index_select(0, expand)
        self.next_position = self.next_position.index_select(0, expand)
        # Only the first beam of each item is live at the start; the copies must not be
        # chosen too, or every beam would hold the same hypothesis.
        self.scores.view(batch, self.beams)[:, 1:] = float("-inf")

    def advance(self, choice: Choice, seqs: list[list[int]]) -> None:
        """The chosen rows continue; beam search reorders the cache (a greedy or sampled row
        stays where it is)."""
        self.seqs, self.scores, self.tokens = seqs, choice.scores, choice.tokens
        if self.beams > 1:
            rows = choice.rows
            self.cache = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cache]
            self.valid = self.valid.index_select(0, rows)
            self.next_position = self.next_position.index_select(0, rows)

    def compact(self, items: list[Item], rules: LogitRules) -> list[Item]:
        """Finished items leave the batch: their rows would be computed to the end of the
        longest item for nothing (a quarter of the row-steps for chunks of a batch job).
        Returns the items still decoding, in their new order."""
        live = [i for i, item in enumerate(items) if not item.done]
        if len(live) == len(items):
            return items
        self.memory_kv, order = leave_batch(self.memory_kv, live, self.owned_memory)
        self.owned_memory = True
        keep_rows = [i * self.beams + b for i in order for b in range(self.beams)]
        keep = torch.tensor(keep_rows, device=self.device)
        self.cache = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in self.cache]
        self.valid, self.next_position = self.valid.index_select(0, keep), self.next_position.index_select(0, keep)
        self.tokens, self.scores = self.tokens.index_select(0, keep), self.scores.index_select(0, keep)
        self.seqs = [self.seqs[r] for r in keep_rows]
        rules.keep(order)
        return [items[i] for i in order]

    def step(self) -> None:
        """One decoder step on the rows' last tokens: the next step's logits."""
        if self.uniform:
            logits, self.cache = self.model.decoder(self.tokens[:, None], self.memory_kv, self.cache)
        else:
            self.valid = torch.cat([self.valid, torch.ones_like(self.valid[:, :1])], dim=1)
            logits, self.cache = self.model.decoder(
                self.tokens[:, None],
                self.memory_kv,
                self.cache,
                positions=self.next_position[:, None],
                key_valid=self.valid,
            )
        self.step_logits = logits[:, -1]
        self.next_position = self.next_position + 1


@torch.inference_mode()
def decode(
    model: Whisper,
    tokenizer: WhisperTokenizer,
    memory_kv: KVCache,
    prefixes: list[list[int]],
    budgets: list[int],
    rules: LogitRules,
    search: Search,
) -> list[Decoded]:
    """Decode a batch whose encoder output (cross-attention keys/values) is ``memory_kv``;
    ``rules.beams`` must be ``search.beams``. Returns the best hypothesis per item."""
    eot = tokenizer.special.eot
    beams = search.beams
    state = DecoderBatch(model, memory_kv, prefixes, beams, tokenizer.special)
    every_item = items = [Item(budget) for budget in budgets]  # items: those still decoding
    for step in range(max(budgets)):
        logits = rules.apply(state.step_logits, state.seqs, step)
        if search.temperature > 0.0:
            choice = choose_sampled(logits, state.scores, search)
        else:
            choice = choose_beams(logits, state.scores, items, state.seqs, beams, eot)
        # The per-row bookkeeping reads Python lists: one device sync per step, not one per
        # row (on a GPU each element read of a tensor is a sync of its own).
        rows, tokens, scores = choice.rows.tolist(), choice.tokens.tolist(), choice.scores.tolist()
        new_seqs = [state.seqs[src] + [tok] for src, tok in zip(rows, tokens, strict=True)]
        if search.temperature > 0.0:
            finish_sampled(items, state.seqs, tokens, scores, eot)
        stuck = stop(items, new_seqs, scores, beams, step, eot)
        if stuck:
            choice.scores[stuck] = float("-inf")
        if all(item.done for item in items):
            break
        state.advance(choice, new_seqs)
        items = state.compact(items, rules)
        state.step()
    results = []
    for i, item in enumerate(every_item):
        hyp_tokens, total, looped = best(item)
        results.append(Decoded(hyp_tokens, total, state.no_speech[i], looped, search.temperature))
    return results
