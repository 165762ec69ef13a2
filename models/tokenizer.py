"""Whisper's tokenizer: the ``tokenizers`` BPE plus the special tokens decoding needs."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer


@dataclass(frozen=True)
class SpecialTokens:
    eot: int
    sot: int
    transcribe: int
    translate: int
    no_timestamps: int
    no_speech: int
    sot_prev: int


class WhisperTokenizer:
    def __init__(self, path: Path, n_vocab: int) -> None:
        self._tok = Tokenizer.from_file(str(path))
        self.n_vocab = n_vocab

        def tid(*names: str) -> int:
            for name in names:
                value = self._tok.token_to_id(name)
                if value is not None:
                    return int(value)
            raise ValueError(f"{path}: the tokenizer has none of the tokens {names}")

        self.special = SpecialTokens(
            eot=tid("<|endoftext|>"),
            sot=tid("<|startoftranscript|>"),
            transcribe=tid("<|transcribe|>"),
            translate=tid("<|translate|>"),
            no_timestamps=tid("<|notimestamps|>"),
            no_speech=tid("<|nospeech|>", "<|nocaptions|>"),
            sot_prev=tid("<|startofprev|>"),
        )

    def language_tokens(self) -> dict[str, int]:
        """Language code -> token id, for every language token the vocabulary has."""
        out = {}
        for token, index in self._tok.get_vocab(with_added_tokens=True).items():
            code = token[2:-2]
            special = token.startswith("<|") and token.endswith("|>") and index < self.n_vocab
            if special and 2 <= len(code) <= 3 and code.isalpha() and code.islower():
                out[code] = int(index)
        return dict(sorted(out.items(), key=lambda kv: kv[1]))

    def language_token(self, language: str) -> int | None:
        value = self._tok.token_to_id(f"<|{language}|>")
        return None if value is None else int(value)

    def non_speech_tokens(self) -> list[int]:
        """Tokens of symbols that are not speech (brackets, music notes, ...), as OpenAI's
        reference decoder suppresses them; used when a checkpoint carries no suppress list."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += [
            "<<",
            ">>",
            "<<<",
            ">>>",
            "--",
            "---",
            "-(",
            "-[",
            "('",
            '("',
            "((",
            "))",
            "(((",
            ")))",
            "[[",
            "]]",
            "{{",
            "}}",
            "♪♪",
            "♪♪♪",
        ]
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return sorted(result)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        # Every special token has an id at or above end-of-text.
        return str(self._tok.decode([i for i in ids if i < self.special.eot]))


def latin_script(word: str) -> bool:
    """Letters of the Latin script only: what an English-only Whisper can write."""
    return all(not c.isalpha() or c.isascii() or "LATIN" in unicodedata.name(c, "") for c in word)
