"""What the pipeline may ask of a recognizer, without importing torch.

The pipeline sees a model only through ``Recognizer``: a batch of 16 kHz mono float32
utterances in, one ``Recognition`` per utterance out, and ``Capabilities`` that say what
else the model takes (earlier text as a prompt, hotword bias, timestamps, languages). The
Whisper engine (models/recognizer.py) is one implementation; a second model family
implements the same protocol and declares what it cannot do, and the stages adapt (no
prompt is built for a model that takes none, no batch chunks for one without timestamps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Every language code a recognizer family we ship can be told to write (Whisper's 99 and
# Cantonese); the loaded model's own ``Capabilities.languages`` is the final word.
LANGUAGE_CODES = frozenset(
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt "
    "la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc "
    "ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue".split()
)


@dataclass(frozen=True)
class Capabilities:
    """What a recognizer does besides turning audio into text."""

    multilingual: bool  # writes more than English; False: only Latin-script hotwords reach it
    prompt: bool  # takes earlier text (the previous utterance, hotwords) as context
    timestamps: bool  # can return timed segments of a long stretch (batch chunks)
    hotword_bias: bool  # biases decoding towards given hotwords
    beam_search: bool  # decodes with a beam (``recognizer.beam_size``)
    max_batch: int  # most utterances it decodes at once (it splits longer calls itself)
    max_audio_s: float  # longest audio of one item
    languages: tuple[str, ...] = ()  # the language codes it knows (empty: English only)
    sentence_end: bool = False  # can say how sure it is that a text ends a sentence

    @property
    def written_languages(self) -> tuple[str, ...]:
        """The languages it writes: its own list, or English alone for an English-only model."""
        return self.languages if self.multilingual else ("en",)


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode; the defaults are OpenAI's and faster-whisper's, except where noted."""

    beam_size: int = 1
    # (language, beam size) for languages decoded with another beam than ``beam_size``. Beam 5
    # halves Whisper base's Chinese character errors (26% -> 14%, bench/chinese.py) while
    # English tiny.en gains 0.2 points for a slower decode (bench/recognizer.py).
    language_beams: tuple[tuple[str, int], ...] = (("zh", 5),)
    # Fallback: decode again, hotter, when the result looks like a hallucination.
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    # Prompt: at most this many tokens of earlier text (Whisper allows 223).
    max_prompt_tokens: int = 96
    # Added to the logits of tokens that begin or continue a hotword (0: prompt only).
    hotword_weight: float = 2.0
    seed: int = 0

    def beam_for(self, language: str) -> int:
        return dict(self.language_beams).get(language, self.beam_size)

    @property
    def widest_beam(self) -> int:
        return max([self.beam_size, *(beam for _, beam in self.language_beams)])


@dataclass(frozen=True)
class Recognition:
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    confidence: float
    n_tokens: int
    looped: bool
    temperature: float = 0.0
    language_probability: float | None = None
    rejected: str | None = None  # why the text was dropped: no_speech | hallucination
    # With timestamps: (start s, end s, text) per segment, in the audio's own time; a
    # segment the model never closed has end == start (its end is unknown).
    segments: tuple[tuple[float, float, str], ...] = ()
    # With ``sentence_end``: the model's probability that the text ends a sentence where it
    # stops (models/sentence_end.py); the endpointer's evidence. None when not asked.
    sentence_end: float | None = None
    # What else the model heard (SenseVoice): audio events ("Speech", "Laughter", "BGM") and
    # the speaker's emotion ("neutral", "happy"); empty / None from models that do not say.
    audio_events: tuple[str, ...] = ()
    emotion: str | None = None


class Recognizer(Protocol):
    """Turns 16 kHz mono float32 utterances into text.

    Threading contract: an instance is not thread-safe. All calls to ``recognize`` must come
    from one worker thread (the pipeline uses a single-thread executor); the event loop
    never calls it directly.
    """

    name: str
    device: str
    dtype: str

    @property
    def capabilities(self) -> Capabilities: ...

    def recognize(
        self,
        audios: list[np.ndarray],
        language: str | None = None,
        prompts: list[str] | None = None,
        hotwords: list[Sequence[str]] | None = None,
        timestamps: bool = False,
        sentence_end: bool | Sequence[str] = False,
    ) -> list[Recognition]:
        """Recognize a batch of utterances; returns one result per input, in order.

        ``language`` None means the model's own (detected per utterance when multilingual);
        ``prompts`` gives each utterance earlier text as context (ignored without
        ``capabilities.prompt``); ``hotwords`` gives each utterance words to bias decoding
        towards; ``timestamps`` asks for ``Recognition.segments`` (needs
        ``capabilities.timestamps``); ``sentence_end`` True for ``Recognition.sentence_end``
        after the decoded text, or a text per utterance to have it after that text instead
        (the joint decode asks after its first piece's words: does a sentence end there,
        hearing what comes next?).
        """
        ...

    def release_memory(self) -> None:
        """Release cached device memory; called when idle and on command."""
        ...
