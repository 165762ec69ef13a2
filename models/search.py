"""Token choice and stopping for one decoding step.

Token choice: sampling (temperature > 0, one row per item) or greedy/beam search (greedy is
a beam of one): the best continuations of each item's rows, twice the beam width so enough
remain after finished hypotheses leave. Stopping: an item is done once it has ``beams``
finished hypotheses, a row that loops is finished with one copy of its loop, and an item
that reaches its token budget keeps what its live rows hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# A loop is declared when the last REPEAT_COUNT n-grams are identical (n <= MAX_LOOP_NGRAM).
REPEAT_COUNT = 4
MAX_LOOP_NGRAM = 16
NEG_INF = float("-inf")


@dataclass(frozen=True)
class Search:
    """How tokens are chosen: ``temperature`` 0 is greedy (``beam_size`` 1) or beam search;
    above 0 each item draws one sample."""

    beam_size: int = 1
    temperature: float = 0.0
    generator: torch.Generator | None = None

    @property
    def beams(self) -> int:
        return self.beam_size if self.temperature == 0.0 else 1


@dataclass
class Item:
    """One utterance being decoded: its budget and its finished hypotheses."""

    budget: int
    finished: list[tuple[list[int], float, bool]] = field(default_factory=list)  # tokens, sum logprob, looped
    done: bool = False


@dataclass(frozen=True)
class Choice:
    """The step's choice per row: which row it continues, with which token, at what score."""

    rows: Tensor
    tokens: Tensor
    scores: Tensor


def loop_length(tokens: list[int]) -> int:
    """Length n of an n-gram repeated REPEAT_COUNT times at the end of ``tokens``, or 0."""
    for n in range(1, MAX_LOOP_NGRAM + 1):
        if len(tokens) < n * REPEAT_COUNT:
            break
        tail = tokens[-n:]
        if all(tokens[-n * (k + 1) : len(tokens) - n * k] == tail for k in range(1, REPEAT_COUNT)):
            return n
    return 0


def choose_sampled(logits: Tensor, scores: Tensor, search: Search) -> Choice:
    """One sampled token per row (rows are items); the score adds its untempered logprob."""
    logprobs = (logits / search.temperature).log_softmax(-1)
    tokens = torch.multinomial(logprobs.exp(), 1, generator=search.generator)[:, 0]
    rows = torch.arange(logits.shape[0], device=logits.device)
    chosen = logits.log_softmax(-1).gather(1, tokens[:, None])[:, 0]
    return Choice(rows, tokens, scores + chosen)


def choose_beams(
    logits: Tensor, scores: Tensor, items: list[Item], seqs: list[list[int]], beams: int, eot: int
) -> Choice:
    """The ``beams`` best continuations per item over all of its rows. A continuation with
    end-of-text finishes that hypothesis (kept in its item) instead of taking a row; an item
    with too few candidates left fills its rows with dead ones (score -inf)."""
    batch = len(items)
    logprobs = logits.log_softmax(-1)
    total = (scores[:, None] + logprobs).view(batch, -1)
    top_scores, top_index = total.topk(min(2 * beams, total.shape[1]), dim=-1)
    vocab = logprobs.shape[-1]
    rows: list[int] = []
    tokens: list[int] = []
    new_scores: list[float] = []
    for i, (item_scores, item_index) in enumerate(zip(top_scores.tolist(), top_index.tolist(), strict=True)):
        kept = 0
        for score, flat in zip(item_scores, item_index, strict=True):
            if kept == beams:
                break
            source, token = i * beams + flat // vocab, flat % vocab
            if token == eot:
                item = items[i]
                if not item.done and len(item.finished) < beams and score > NEG_INF:
                    item.finished.append((list(seqs[source]), score, False))
                continue
            rows.append(source)
            tokens.append(token)
            new_scores.append(score)
            kept += 1
        for _ in range(beams - kept):  # nothing left worth keeping: a dead beam
            rows.append(i * beams)
            tokens.append(eot)
            new_scores.append(NEG_INF)
    device = logits.device
    return Choice(
        torch.tensor(rows, device=device), torch.tensor(tokens, device=device), torch.tensor(new_scores, device=device)
    )


def finish_sampled(
    items: list[Item], seqs: list[list[int]], token_list: list[int], scores: list[float], eot: int
) -> None:
    """A sampled end-of-text finishes its item's hypothesis (rows are items)."""
    for i, tok in enumerate(token_list):
        if tok == eot and not items[i].done:
            items[i].finished.append((seqs[i], scores[i], False))


def stop(
    items: list[Item], new_seqs: list[list[int]], scores: list[float], beams: int, step: int, eot: int
) -> list[int]:
    """Marks items done (enough finished hypotheses, or the budget reached) and finishes rows
    caught in a loop; returns those rows, whose scores the caller sets to -inf.
    ``scores`` is updated in place for them."""
    stuck: list[int] = []
    for i, item in enumerate(items):
        if item.done:
            continue
        for row in range(i * beams, (i + 1) * beams):
            seq = new_seqs[row]
            if not seq or seq[-1] == eot or scores[row] == NEG_INF:
                continue
            n = loop_length(seq)
            if n:
                # Keep one copy of the repeated n-gram; the rest is the model stuck.
                item.finished.append((seq[: len(seq) - n * (REPEAT_COUNT - 1)], scores[row], True))
                scores[row] = NEG_INF
                stuck.append(row)
        if len(item.finished) >= beams:
            item.done = True
        elif step + 1 >= item.budget:
            for row in range(i * beams, (i + 1) * beams):
                if scores[row] > NEG_INF and new_seqs[row][-1] != eot:
                    item.finished.append((new_seqs[row], scores[row], False))
            item.done = True
    return stuck


def best(item: Item) -> tuple[list[int], float, bool]:
    """The item's best finished hypothesis by average log-probability per token (OpenAI's
    default length normalisation); an empty one when nothing finished."""
    if not item.finished:
        item.finished.append(([], NEG_INF, False))
    return max(item.finished, key=lambda f: f[1] / max(1, len(f[0]) + 1))
