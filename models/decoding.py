"""Decoding: greedy, beam search and sampling with a KV cache, batched across utterances.

Every item of a batch has its own prefix (an optional prompt, then start-of-transcript,
language, task, no-timestamps), its own token budget and its own stopping; prefixes of
different lengths are left-padded and masked. Beam search keeps ``beam_size`` hypotheses per
item and stops an item once it has that many finished ones (patience 1), like
faster-whisper.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from models.tokenizer import WhisperTokenizer
from models.whisper import KVCache, Whisper

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


def loop_length(tokens: list[int]) -> int:
    """Length n of an n-gram repeated REPEAT_COUNT times at the end of ``tokens``, or 0."""
    for n in range(1, MAX_LOOP_NGRAM + 1):
        if len(tokens) < n * REPEAT_COUNT:
            break
        tail = tokens[-n:]
        if all(tokens[-n * (k + 1) : len(tokens) - n * k] == tail for k in range(1, REPEAT_COUNT)):
            return n
    return 0


# Timestamp tokens step 0.02 s; the first may be at most 1 s in (OpenAI's max_initial_timestamp).
TIMESTAMP_STEP_S = 0.02
MAX_INITIAL_TIMESTAMP = 50


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


def split_segments(tokens: list[int], begin: int) -> list[tuple[float, float, list[int]]]:
    """(start s, end s, text tokens) per segment of a timestamped decode. Text after the last
    timestamp (the budget ran out) is a segment whose end is unknown: it ends where it
    starts, and the caller extends it to the end of the audio."""
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


def suppress_mask(tokenizer: WhisperTokenizer, extra: list[int], device: torch.device) -> Tensor:
    """Boolean mask of tokens never to emit: every special token but end-of-text, plus ``extra``."""
    mask = torch.zeros(tokenizer.n_vocab, dtype=torch.bool)
    mask[tokenizer.special.eot + 1 :] = True
    ids = [i for i in extra if 0 <= i < tokenizer.n_vocab and i != tokenizer.special.eot]
    mask[ids] = True
    return mask.to(device)


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
    best = probs.argmax(-1).tolist()
    names = list(language_tokens)
    return [(names[b], float(probs[i, b])) for i, b in enumerate(best)]


@dataclass
class _Item:
    budget: int
    finished: list[tuple[list[int], float, bool]]  # tokens, sum logprob, looped
    done: bool = False


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


@torch.inference_mode()
def decode(
    model: Whisper,
    tokenizer: WhisperTokenizer,
    memory_kv: KVCache,
    prefixes: list[list[int]],
    budgets: list[int],
    suppress: Tensor,
    suppress_at_begin: list[int],
    beam_size: int = 1,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    hotwords: list[list[HotwordTokens]] | None = None,
    hotword_weight: float = 0.0,
    timestamp_begin: int | None = None,
) -> list[Decoded]:
    """Decode a batch whose encoder output (cross-attention keys/values) is ``memory_kv``.

    ``temperature`` 0 is greedy (``beam_size`` 1) or beam search; above 0 each item draws one
    sample. ``timestamp_begin`` (the first timestamp token) asks for timestamps: the prefix
    must not hold <|notimestamps|>, and the timestamp grammar applies. Returns the best
    hypothesis per item.
    """
    eot, sot = tokenizer.special.eot, tokenizer.special.sot
    batch = len(prefixes)
    beams = beam_size if temperature == 0.0 else 1
    device = memory_kv[0][0].device
    width = max(len(p) for p in prefixes)
    pads = [width - len(p) for p in prefixes]

    # Prefix pass, left-padded, one row per item (beams are expanded afterwards).
    tokens = torch.tensor([[eot] * pad + p for pad, p in zip(pads, prefixes, strict=True)], device=device)
    valid = torch.tensor([[False] * pad + [True] * len(p) for pad, p in zip(pads, prefixes, strict=True)])
    valid = valid.to(device)
    positions = (torch.arange(width, device=device)[None, :] - torch.tensor(pads, device=device)[:, None]).clamp(min=0)
    # Without padding the decoder's plain path is exact and faster (no attention mask).
    uniform = not any(pads)
    logits, cache = model.decoder(
        tokens, memory_kv, None, positions=None if uniform else positions, key_valid=None if uniform else valid
    )
    sot_at = torch.tensor([pad + p.index(sot) for pad, p in zip(pads, prefixes, strict=True)], device=device)
    no_speech = logits[torch.arange(batch), sot_at].softmax(-1)[:, tokenizer.special.no_speech].tolist()
    step_logits = logits[:, -1]
    next_position = torch.tensor([len(p) for p in prefixes], device=device)

    if beams > 1:
        # The encoder output stays one per item: the decoder's cross-attention groups the
        # beams of an item (consecutive rows) onto it.
        expand = torch.arange(batch, device=device).repeat_interleave(beams)
        cache = [(k.index_select(0, expand), v.index_select(0, expand)) for k, v in cache]
        step_logits = step_logits.index_select(0, expand)
        valid = valid.index_select(0, expand)
        next_position = next_position.index_select(0, expand)

    every_item = items = [_Item(budget, []) for budget in budgets]  # items: those still decoding
    owned_memory = False  # memory_kv is still the caller's (see leave_batch)
    seqs: list[list[int]] = [[] for _ in range(batch * beams)]
    scores = torch.zeros(batch * beams, device=device)
    if beams > 1:
        # Only the first beam of each item is live at the start; the copies must not be
        # chosen too, or every beam would hold the same hypothesis.
        scores.view(batch, beams)[:, 1:] = float("-inf")

    if timestamp_begin is not None:
        suppress = suppress.clone()
        suppress[timestamp_begin:] = False
    for step in range(max(budgets)):
        # In place: the decoder's logits are a fresh float32 tensor every step (a copy of
        # batch x vocab floats per step otherwise).
        step_logits = step_logits.float().masked_fill_(suppress, float("-inf"))
        if step == 0:
            step_logits[:, suppress_at_begin] = float("-inf")
        if timestamp_begin is not None:
            apply_timestamp_rules(step_logits, seqs, step, timestamp_begin, eot)
        if hotwords and hotword_weight > 0 and any(hotwords):
            # Shallow biasing towards the room's hotwords (as token sequences); the prompt
            # biases too, this helps where the prompt alone is not enough.
            bonus = hotword_bonus(seqs, hotwords, beams, hotword_weight)
            if bonus:
                rows, toks, values = zip(*bonus, strict=True)
                step_logits[list(rows), list(toks)] += torch.tensor(values, device=device)
        if temperature > 0.0:
            logprobs = (step_logits / temperature).log_softmax(-1)
            chosen_tokens = torch.multinomial(logprobs.exp(), 1, generator=generator)[:, 0]
            chosen_from = torch.arange(batch, device=device)
            chosen_logprob = step_logits.log_softmax(-1).gather(1, chosen_tokens[:, None])[:, 0]
            new_scores = scores + chosen_logprob
        else:
            logprobs = step_logits.log_softmax(-1)
            total = (scores[:, None] + logprobs).view(batch, -1)
            # Twice the beam width, so enough candidates remain after finished ones leave.
            top_scores, top_index = total.topk(min(2 * beams, total.shape[1]), dim=-1)
            vocab = logprobs.shape[-1]
            chosen_from_list: list[int] = []
            chosen_token_list: list[int] = []
            new_score_list: list[float] = []
            top_scores_l, top_index_l = top_scores.tolist(), top_index.tolist()
            for i in range(batch):
                kept = 0
                for score, flat in zip(top_scores_l[i], top_index_l[i], strict=True):
                    if kept == beams:
                        break
                    source = i * beams + flat // vocab
                    token = flat % vocab
                    if token == eot:
                        item = items[i]
                        if not item.done and len(item.finished) < beams and score > float("-inf"):
                            item.finished.append((list(seqs[source]), score, False))
                        continue
                    chosen_from_list.append(source)
                    chosen_token_list.append(token)
                    new_score_list.append(score)
                    kept += 1
                while kept < beams:  # nothing left worth keeping: a dead beam
                    chosen_from_list.append(i * beams)
                    chosen_token_list.append(eot)
                    new_score_list.append(float("-inf"))
                    kept += 1
            chosen_from = torch.tensor(chosen_from_list, device=device)
            chosen_tokens = torch.tensor(chosen_token_list, device=device)
            new_scores = torch.tensor(new_score_list, device=device)

        # The per-row bookkeeping below reads Python lists: one device sync per step, not one
        # per row (on a GPU each element read of a tensor is a sync of its own).
        from_list, token_list = chosen_from.tolist(), chosen_tokens.tolist()
        score_list: list[float] = new_scores.tolist()
        new_seqs = [seqs[src] + [tok] for src, tok in zip(from_list, token_list, strict=True)]
        if temperature > 0.0:
            for i, tok in enumerate(token_list):
                if tok == eot and not items[i].done:
                    items[i].finished.append((seqs[i], score_list[i], False))
        stuck: list[int] = []
        for i, item in enumerate(items):
            if item.done:
                continue
            for b in range(beams):
                row = i * beams + b
                seq = new_seqs[row]
                if not seq or seq[-1] == eot or score_list[row] == float("-inf"):
                    continue
                n = loop_length(seq)
                if n:
                    # Keep one copy of the repeated n-gram; the rest is the model stuck.
                    item.finished.append((seq[: len(seq) - n * (REPEAT_COUNT - 1)], score_list[row], True))
                    score_list[row] = float("-inf")
                    stuck.append(row)
            if len(item.finished) >= beams:
                item.done = True
            elif step + 1 >= item.budget:
                for b in range(beams):
                    row = i * beams + b
                    if score_list[row] > float("-inf") and new_seqs[row][-1] != eot:
                        item.finished.append((new_seqs[row], score_list[row], False))
                item.done = True
        if stuck:
            new_scores[stuck] = float("-inf")
        if all(item.done for item in items):
            break
        seqs, scores = new_seqs, new_scores
        if beams > 1:  # beams were reordered; a greedy or sampled row stays where it is
            cache = [(k.index_select(0, chosen_from), v.index_select(0, chosen_from)) for k, v in cache]
            valid = valid.index_select(0, chosen_from)
            next_position = next_position.index_select(0, chosen_from)
        live = [i for i, item in enumerate(items) if not item.done]
        if len(live) < len(items):
            # Finished items leave the batch: their rows would be computed to the end of the
            # longest item for nothing (a quarter of the row-steps for chunks of a batch job).
            memory_kv, order = leave_batch(memory_kv, live, owned_memory)
            owned_memory = True
            keep_rows = [i * beams + b for i in order for b in range(beams)]
            keep = torch.tensor(keep_rows, device=device)
            cache = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in cache]
            valid, next_position = valid.index_select(0, keep), next_position.index_select(0, keep)
            chosen_tokens, scores = chosen_tokens.index_select(0, keep), scores.index_select(0, keep)
            seqs = [seqs[r] for r in keep_rows]
            items = [items[i] for i in order]
            if hotwords:
                hotwords = [hotwords[i] for i in order]
            batch = len(live)
        if uniform:
            step_logits, cache = model.decoder(chosen_tokens[:, None], memory_kv, cache)
        else:
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
            step_logits, cache = model.decoder(
                chosen_tokens[:, None], memory_kv, cache, positions=next_position[:, None], key_valid=valid
            )
        step_logits = step_logits[:, -1]
        next_position = next_position + 1

    results = []
    for i, item in enumerate(every_item):
        if not item.finished:
            item.finished.append(([], float("-inf"), False))
        # Rank by average log-probability per token (OpenAI's default length normalisation).
        best, total, looped = max(item.finished, key=lambda f: f[1] / max(1, len(f[0]) + 1))
        results.append(Decoded(best, total, no_speech[i], looped, temperature))
    return results
