"""How sure the model is that a text ends a sentence: the endpointer's evidence.

After a decode, the text's tokens (without the punctuation it ended with) are fed back to
the decoder with the same audio, and the probability it gives a sentence-final mark next
(. ? ! and their CJK forms, not an ellipsis) is read off. Whisper writes punctuation from
the audio as well as the words, so a piece cut at a pause inside a sentence ("Please turn
on the") gets a comma, an ellipsis or a word there, and a finished sentence a full stop.
One teacher-forced decoder pass per item: a few milliseconds next to the decode itself.
"""

from __future__ import annotations

import torch

from models.decoding import select_memory
from models.tokenizer import WhisperTokenizer
from models.whisper import KVCache, Whisper

FINAL_MARKS = ".?!。？！"
# Marks that may close a sentence along with the final mark (a quote, a bracket).
CLOSERS = "\"'”’)」』"
ELLIPSIS = ("..", "…")


def final_mark_tokens(tokenizer: WhisperTokenizer) -> list[int]:
    """Tokens that are a sentence-final mark, maybe with closing quotes; not an ellipsis."""
    out = []
    for token in range(tokenizer.special.eot):
        text = tokenizer.decode([token]).strip()
        if not text or any(e in text for e in ELLIPSIS):
            continue
        if all(c in FINAL_MARKS + CLOSERS for c in text) and any(c in FINAL_MARKS for c in text):
            out.append(token)
    return out


def strip_final_punctuation(tokenizer: WhisperTokenizer, tokens: list[int]) -> list[int]:
    """``tokens`` without the punctuation-only tokens at their end."""
    end = len(tokens)
    while end:
        text = tokenizer.decode([tokens[end - 1]]).strip()
        if any(c.isalnum() for c in text):
            break
        end -= 1
    return tokens[:end]


def text_tokens(tokenizer: WhisperTokenizer, text: str | list[int]) -> list[int]:
    """A text (or decoded tokens) as the decoder writes it, without the punctuation it ends
    with; Latin-script text with the leading space Whisper's tokens carry."""
    if isinstance(text, str):
        text = text.strip()
        text = tokenizer.encode(" " + text if text[:1].isascii() else text) if text else []
    return strip_final_punctuation(tokenizer, text)


@torch.inference_mode()
def sentence_end_probs(
    model: Whisper,
    memory_kv: KVCache,
    sequences: list[list[int]],
    final_marks: torch.Tensor,
) -> list[float]:
    """P(a sentence-final mark next) after each sequence (its prompt, task tokens and text),
    each with its own row of ``memory_kv``. One decoder pass per item."""
    device = final_marks.device
    out = []
    for i, sequence in enumerate(sequences):
        kv = select_memory(memory_kv, torch.tensor([i], device=device))
        logits, _ = model.decoder(torch.tensor([sequence], device=device), kv, None)
        out.append(float(logits[0, -1].softmax(-1)[final_marks].sum()))
    return out
