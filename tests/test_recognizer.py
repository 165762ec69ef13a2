"""The recognizer on real audio. Bounds were set from measurements (bench/accuracy.py):
8.8% WER on the espeak sentences and 5.6% on the recorded English clips."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest

from models.decoding import MAX_SAMPLE_TOKENS, token_budget
from models.search import REPEAT_COUNT, loop_length
from tests.helpers import SENTENCES, SPEECH_DIR, normalize, speak, wer

if TYPE_CHECKING:
    from models.recognizer import WhisperRecognizer

ESPEAK_WER_BOUND = 0.15
RECORDED_WER_BOUND = 0.10


def test_normalize_for_scoring() -> None:
    assert normalize("Set a timer for 10 minutes.") == "set a timer for ten minutes"
    assert normalize("It's 1,200!") == "its one thousand two hundred"


def test_token_budget_grows_with_audio_and_is_capped() -> None:
    assert token_budget(1.0) < token_budget(5.0) < token_budget(20.0)
    assert token_budget(300.0) == MAX_SAMPLE_TOKENS


def test_loop_detection() -> None:
    assert loop_length([5, 6, 7, 8]) == 0
    assert loop_length([1, 2] + [9] * REPEAT_COUNT) == 1
    assert loop_length([1] + [3, 4, 5] * REPEAT_COUNT) == 3
    assert loop_length([3, 4, 5] * (REPEAT_COUNT - 1)) == 0


def test_espeak_sentences(recognizer: WhisperRecognizer) -> None:
    results = recognizer.recognize([speak(s) for s in SENTENCES])
    hyps = [r.text for r in results]
    error = wer(SENTENCES, hyps)
    assert error <= ESPEAK_WER_BOUND, list(zip(SENTENCES, hyps, strict=True))
    assert all(0.0 < r.confidence <= 1.0 for r in results)
    assert all(r.language == "en" for r in results)


def test_precision_is_as_chosen_and_reported(recognizer: WhisperRecognizer) -> None:
    import torch

    from models.device import choose_encoder_dtype, cpu_flags
    from models.engines import load_recognizer
    from models.recognizer import WhisperRecognizer

    expected = getattr(torch, choose_encoder_dtype("auto", "cpu", "float32", "none", cpu_flags()))
    assert next(recognizer.model.encoder.parameters()).dtype == expected
    assert next(recognizer.model.decoder.parameters()).dtype == torch.float32
    assert recognizer.dtype == ("float32" if expected == torch.float32 else "float32, encoder bfloat16")
    strict = load_recognizer("bundled:tiny.en", device="cpu", dtype="float32")
    assert isinstance(strict, WhisperRecognizer)
    assert strict.dtype == "float32"
    assert next(strict.model.encoder.parameters()).dtype == torch.float32
    # Either way the words are the same on clear speech.
    audios = [speak(s) for s in SENTENCES[:3]]
    assert [r.text for r in strict.recognize(audios)] == [r.text for r in recognizer.recognize(audios)]


def test_batched_equals_one_by_one(recognizer: WhisperRecognizer) -> None:
    audios = [speak(s) for s in SENTENCES[:3]]
    batched = [r.text for r in recognizer.recognize(audios)]
    single = [recognizer.recognize([a])[0].text for a in audios]
    assert batched == single


def test_cpu_encoder_slices_keep_windows_in_order(recognizer: WhisperRecognizer) -> None:
    """On a CPU a batch goes through the encoder a few windows at a time; each window's
    output must be the one it gets alone, in its place."""
    import torch

    from models.mel import log_mel_spectrogram, padded_batch
    from models.recognizer import CPU_ENCODER_SLICE

    audios = [speak(s) for s in SENTENCES[: 2 * CPU_ENCODER_SLICE + 1]]
    with torch.inference_mode():
        mel = log_mel_spectrogram(padded_batch(audios), recognizer.model.dims.n_mels)
        mel = mel.to(next(recognizer.model.encoder.parameters()).dtype)
        sliced = recognizer._encode(mel)
        alone = [recognizer.model.encoder(mel[i : i + 1]) for i in range(len(audios))]
    assert sliced.shape[0] == len(audios)
    for i, out in enumerate(alone):
        assert torch.allclose(sliced[i : i + 1], out, atol=1e-4), i


def test_silence_and_noise_give_no_text(recognizer: WhisperRecognizer) -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros(3 * 16000, dtype=np.float32)
    hiss = (0.003 * rng.standard_normal(3 * 16000)).astype(np.float32)
    assert [r.text for r in recognizer.recognize([silence, hiss])] == ["", ""]


def recorded_clips() -> list[dict[str, object]]:
    manifest = SPEECH_DIR / "manifest.jsonl"
    if not manifest.is_file():
        return []
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    english = sorted((e for e in entries if e["language"] == "en" and e["duration_s"] <= 16), key=lambda e: e["audio"])
    return english[::2]  # every other clip keeps the test under a minute; the bench runs all


@pytest.mark.slow
@pytest.mark.skipif(not recorded_clips(), reason="shared speech clips not present")
def test_recorded_english_clips(recognizer: WhisperRecognizer) -> None:
    import soundfile as sf
    import soxr

    clips = recorded_clips()
    audios = []
    for clip in clips:
        audio, sr = sf.read(str(SPEECH_DIR / str(clip["audio"])), dtype="float32", always_2d=True)
        mono = audio.mean(axis=1).astype(np.float32)
        audios.append(soxr.resample(mono, sr, 16000).astype(np.float32) if sr != 16000 else mono)
    hyps = []
    for i in range(0, len(audios), 8):
        hyps += [r.text for r in recognizer.recognize(audios[i : i + 8])]
    refs = [str(c["text"]) for c in clips]
    assert len(clips) >= 30
    assert wer(refs, hyps) <= RECORDED_WER_BOUND


def test_recognition_builds_no_autograd_graph(recognizer: WhisperRecognizer) -> None:
    import torch

    seen: list[bool] = []
    hook = recognizer.model.encoder.register_forward_hook(
        lambda _m, _i, out: seen.append(torch.is_inference_mode_enabled() and not out.requires_grad)
    )
    try:
        recognizer.recognize([np.zeros(16000, dtype=np.float32)])
    finally:
        hook.remove()
    assert seen == [True]
    assert not any(p.requires_grad for p in recognizer.model.parameters())


def test_sentence_end_evidence_follows_what_was_heard(recognizer: WhisperRecognizer) -> None:
    """P(sentence ends) is high for a finished sentence and low for its first half cut at a
    pause mid-sentence (espeak-ng's SSML break keeps the voice going on); not asked, none."""
    from models.sentence_end import final_mark_tokens

    whole = speak("Please turn on the kitchen lights.")
    paused = speak('<speak>Please turn on the <break time="1500ms"/> kitchen lights.</speak>', ssml=True)
    quiet = np.flatnonzero(np.abs(paused) < 0.01)
    # The first piece: up to 0.2 s into the longest silence (what the VAD's post-roll keeps).
    runs = np.split(quiet, np.flatnonzero(np.diff(quiet) != 1) + 1)
    pause = max((r for r in runs if r[0] > 0 and r[-1] < len(paused) - 1), key=len)
    first = paused[: pause[0] + 3200]
    done, unfinished = recognizer.recognize([whole, first], sentence_end=True)
    assert "kitchen" in done.text.lower() and "kitchen" not in unfinished.text.lower()
    assert done.sentence_end is not None and unfinished.sentence_end is not None
    assert done.sentence_end > 0.5 > unfinished.sentence_end, (done, unfinished)
    assert recognizer.recognize([whole])[0].sentence_end is None
    marks = {recognizer.tokenizer.decode([t]).strip() for t in final_mark_tokens(recognizer.tokenizer)}
    assert {".", "?", "!"} <= marks and not any("..." in m or "…" in m for m in marks)
