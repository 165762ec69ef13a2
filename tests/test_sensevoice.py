"""Our SenseVoice engine against FunASR's reference implementation, random weights.

The reference (``funasr``, test-only) writes the folder; our engine loads it like a
downloaded SenseVoiceSmall and must compute the same features, encoder outputs, CTC
log-probabilities, greedy tokens and text, for every language and ITN query, alone and in
padded batches. A reduced configuration runs by default; the full one is a slow test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.loading import ModelNotFoundError
from models.sensevoice.encoder import SenseVoiceModel
from models.sensevoice.frontend import FrontendConfig, load_cmvn, stack_frames
from models.sensevoice.recognizer import SenseVoiceRecognizer, parse_tags
from tests.helpers import SENTENCES, speak, speak_mandarin
from tests.sensevoice_reference import FULL, SMALL, Reference, make_reference, reference_features, reference_run

TOLERANCE = 1e-4


def _reference(folder: Path, encoder: dict[str, int]) -> Reference:
    pytest.importorskip("funasr.models.sense_voice.model", reason="the reference needs the funasr package")
    pytest.importorskip("kaldi_native_fbank", reason="the reference's fbank needs kaldi-native-fbank")
    return make_reference(folder, encoder)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return _reference(tmp_path_factory.mktemp("sensevoice") / "SenseVoiceSmall", SMALL)


@pytest.fixture(scope="module")
def ours(small: Reference) -> SenseVoiceRecognizer:
    return SenseVoiceRecognizer(small.folder, "cpu", "float32")


@pytest.fixture(scope="module")
def audios() -> list[np.ndarray]:
    # Real speech of different lengths, and one clip shorter than a 60 ms output frame.
    return [speak(SENTENCES[0]), speak_mandarin("今天天气很好"), speak(SENTENCES[3]), np.zeros(700, np.float32)]


def _greedy(logits: torch.Tensor) -> list[int]:
    """The reference's read-out: argmax, repeats merged, blanks (0) dropped."""
    ids = torch.unique_consecutive(logits.argmax(dim=-1))
    return [int(i) for i in ids[ids != 0]]


def test_features_match_the_reference(small: Reference, ours: SenseVoiceRecognizer, audios: list[np.ndarray]) -> None:
    # The reference's fbank (kaldi-native-fbank) works in float32; ours in float64. Where a
    # bin's energy is tiny beside its frame's peak, float32's FFT is itself off from the
    # exact value by up to ~3e-4 in log energy, so a few values differ by more than 1e-4.
    for audio in audios:
        expected = reference_features(small, audio)
        got = ours.frontend(audio)
        assert got.shape == expected.shape
        differences = (got - expected).abs()
        assert float(differences.max()) <= 3e-4
        assert float((differences > TOLERANCE).float().mean()) <= 1e-3  # 0.015% seen


def test_low_frame_rate_stacking_at_every_length() -> None:
    # Lengths around multiples of 6 are where the padding rules differ.
    from funasr.frontends.wav_frontend import apply_lfr

    for count in range(1, 40):
        feats = torch.randn(count, 3)
        assert torch.equal(stack_frames(feats, 7, 6), apply_lfr(feats.clone(), 7, 6))


def _ours(
    ours: SenseVoiceRecognizer, audios: list[np.ndarray], language: str, feats: list[torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Our encoder output and log-probabilities, from our features or the given ones."""
    captured: dict[str, torch.Tensor] = {}
    hook = ours.model.encoder.register_forward_hook(lambda _m, _i, out: captured.__setitem__("encoder", out))
    try:
        with torch.inference_mode():
            if feats is None:
                logprobs, _rows = ours.logprobs(audios, language)
            else:
                logprobs, _rows = ours.logprobs_of_features(feats, language)
    finally:
        hook.remove()
    return captured["encoder"], logprobs


@pytest.mark.parametrize(("language", "text_norm"), [("auto", "woitn"), ("zh", "withitn"), ("en", "woitn")])
def test_encoder_logits_tokens_and_text_match(
    small: Reference, ours: SenseVoiceRecognizer, audios: list[np.ndarray], language: str, text_norm: str
) -> None:
    ours.text_norm = text_norm
    try:
        texts, ref_encoder, ref_logits = reference_run(small, audios, language, itn=text_norm == "withitn")
        # The network on the same features as the reference's (the frontends are compared
        # above); the text from our own frontend, end to end.
        encoder, logprobs = _ours(ours, audios, language, [reference_features(small, a) for a in audios])
        results = ours.recognize_batch(audios, language)
    finally:
        ours.text_norm = "woitn"
    rows = [int(r) for r in torch.tensor([ours.frontend(a).shape[0] for a in audios]) + 4]
    for i, n in enumerate(rows):
        assert float((encoder[i, :n] - ref_encoder[i, :n]).abs().max()) <= TOLERANCE
        ref_logprobs = torch.log_softmax(ref_logits[i, :n], dim=-1)
        assert float((logprobs[i, :n] - ref_logprobs).abs().max()) <= TOLERANCE
        assert _greedy(logprobs[i, :n]) == _greedy(ref_logits[i, :n])
        assert results[i].text == parse_tags(texts[i])[0]
    assert any(r.text for r in results), "random weights should still write something"


def test_query_rows_change_the_output(ours: SenseVoiceRecognizer, audios: list[np.ndarray]) -> None:
    # The language and ITN queries reach the encoder (a wrong row index would not show in
    # a comparison that uses the same index on both sides).
    _, auto = _ours(ours, audios[:1], "auto")
    _, chinese = _ours(ours, audios[:1], "zh")
    assert float((auto - chinese).abs().max()) > 1e-3


def test_a_padded_batch_equals_each_item_alone(ours: SenseVoiceRecognizer, audios: list[np.ndarray]) -> None:
    _, batch = _ours(ours, audios, "auto")
    for i, audio in enumerate(audios):
        _, alone = _ours(ours, [audio], "auto")
        n = alone.shape[1]
        assert float((batch[i, :n] - alone[0]).abs().max()) <= 1e-5
    assert [r.text for r in ours.recognize(audios)] == [ours.recognize([a])[0].text for a in audios]


def test_capabilities_are_declared_honestly(ours: SenseVoiceRecognizer, audios: list[np.ndarray]) -> None:
    caps = ours.capabilities
    assert (caps.prompt, caps.timestamps, caps.hotword_bias, caps.beam_search, caps.sentence_end) == (False,) * 5
    assert caps.multilingual and set(caps.languages) == {"zh", "en", "yue", "ja", "ko"}
    with pytest.raises(ValueError, match="timestamps"):
        ours.recognize(audios[:1], timestamps=True)
    with pytest.raises(ValueError, match="'fr' is not known"):
        ours.recognize(audios[:1], language="fr")


def test_tags_become_fields() -> None:
    text, language, emotion, events = parse_tags("<|en|><|NEUTRAL|><|Speech|><|woitn|>turn on the lights")
    assert (text, language, emotion, events) == ("turn on the lights", "en", "neutral", ("Speech",))
    assert parse_tags("<|zh|><|EMO_UNKNOWN|><|Laughter|><|withitn|>你好。") == ("你好。", "zh", None, ("Laughter",))
    assert parse_tags("<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|><|woitn|>")[:2] == ("", "nospeech")


def test_an_incomplete_folder_names_what_is_missing(small: Reference, tmp_path: Path) -> None:
    folder = tmp_path / "SenseVoiceSmall"
    folder.mkdir()
    for name in ("model.pt", "config.yaml"):
        (folder / name).write_bytes((small.folder / name).read_bytes())
    with pytest.raises(ModelNotFoundError, match=r"missing am\.mvn, chn_jpn_yue_eng_ko_spectok\.bpe\.model"):
        SenseVoiceRecognizer(folder, "cpu", "float32")


def test_the_daemon_loader_picks_the_sensevoice_engine(small: Reference) -> None:
    from models.engines import load_recognizer

    loaded = load_recognizer(str(small.folder), "cpu", "float32")
    assert isinstance(loaded, SenseVoiceRecognizer)
    with pytest.raises(ValueError, match="int8 needs"):
        load_recognizer(str(small.folder), "cpu", "float16", quantize="int8")


def test_int8_quantizes_the_encoder_and_stays_close(
    small: Reference, ours: SenseVoiceRecognizer, audios: list[np.ndarray]
) -> None:
    from models.engines import load_recognizer

    int8 = load_recognizer(str(small.folder), "cpu", "float32", quantize="int8")
    assert isinstance(int8, SenseVoiceRecognizer)
    linears = [type(m) for m in int8.model.modules() if "Linear" in type(m).__name__]
    assert len(linears) > 4 and torch.nn.Linear not in linears  # every one is int8, the head too
    with torch.inference_mode():
        exact, _ = ours.logprobs(audios[:3])
        quantized, _ = int8.logprobs(audios[:3])
    # Random weights give near-uniform CTC distributions, so ids are no measure here; the
    # log-probabilities must move by a fraction of their spread, and not stay identical.
    centred = exact - exact.mean(dim=-1, keepdim=True)
    moved = float((quantized - exact).norm() / centred.norm())
    assert 0.0 < moved < 0.06  # 3.8% here
    assert len(int8.recognize(audios)) == len(audios)


def test_bfloat16_runs_all_of_it_and_stays_close(
    small: Reference, ours: SenseVoiceRecognizer, audios: list[np.ndarray]
) -> None:
    from models.device import choose_encoder_dtype, cpu_flags
    from models.engines import load_recognizer

    auto = load_recognizer(str(small.folder), "cpu", "auto")
    assert auto.dtype == choose_encoder_dtype("auto", "cpu", "float32", "none", cpu_flags())
    half = SenseVoiceRecognizer(small.folder, "cpu", "bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    # Its linear layers are packed for oneDNN where the CPU allows (models/packed.py); the
    # bits are the plain layers'.
    plain = SenseVoiceModel(half.model.config)
    plain.load_state_dict(ours.model.state_dict())
    plain.to(torch.bfloat16).eval()
    feats = [half.frontend(a) for a in audios[:2]]
    lengths = torch.tensor([len(f) for f in feats])
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(half.model(padded, lengths, "auto", "woitn"), plain(padded, lengths, "auto", "woitn"))
    with torch.inference_mode():
        exact, _ = ours.logprobs(audios[:3])
        rounded, _ = half.logprobs(audios[:3])
    assert rounded.dtype == torch.float32  # the log-softmax runs in float32
    centred = exact - exact.mean(dim=-1, keepdim=True)
    moved = float((rounded.float() - exact).norm() / centred.norm())
    assert 0.0 < moved < 0.06
    assert len(half.recognize(audios)) == len(audios)


def test_cmvn_reads_kaldi_text(small: Reference) -> None:
    shift, scale = load_cmvn(small.folder / "am.mvn")
    assert shift.shape == scale.shape == (FrontendConfig().output_size,)
    assert float(shift.max()) < -7 and float(scale.min()) > 0.1


@pytest.mark.slow
def test_the_full_configuration_matches(tmp_path: Path, audios: list[np.ndarray]) -> None:
    # The published encoder (512 wide, 4 heads, 2048 units, 50 + 20 blocks); the CTC head
    # is as wide as the test's own SentencePiece vocabulary, not the published 25055.
    ref = _reference(tmp_path / "SenseVoiceSmall", FULL)
    engine = SenseVoiceRecognizer(ref.folder, "cpu", "float32")
    texts, ref_encoder, ref_logits = reference_run(ref, audios[:3])
    encoder, logprobs = _ours(engine, audios[:3], "auto", [reference_features(ref, a) for a in audios[:3]])
    results = engine.recognize_batch(audios[:3], "auto")
    for i in range(3):
        n = engine.frontend(audios[i]).shape[0] + 4
        assert float((encoder[i, :n] - ref_encoder[i, :n]).abs().max()) <= TOLERANCE
        assert float((logprobs[i, :n] - torch.log_softmax(ref_logits[i, :n], dim=-1)).abs().max()) <= TOLERANCE
        assert _greedy(logprobs[i, :n]) == _greedy(ref_logits[i, :n])
        assert results[i].text == parse_tags(texts[i])[0]


def test_transcribe_reads_with_a_sensevoice_folder(tmp_path: Path) -> None:
    """The batch path adapts to a model without timestamps or prompts: one record per speech
    segment, the model's words, its name, for both the queued and the serial path."""
    import json
    import subprocess
    import sys

    import soundfile as sf

    from tests.helpers import REPO, speech_with_pauses
    from tests.sensevoice_reference import make_own_folder

    folder = make_own_folder(tmp_path / "SenseVoiceSmall", "to")
    audio, spoken = speech_with_pauses(SENTENCES[:2], pauses=[1.5, 1.0])
    sf.write(tmp_path / "talk.wav", audio, 16000)
    (tmp_path / "config.toml").write_text(f'[recognizer]\nmodel = "{folder}"\n')
    command = [sys.executable, "-m", "daemon", "transcribe", str(tmp_path / "talk.wav"), "--format", "jsonl"]
    for jobs in ([], ["--jobs", "1"]):
        result = subprocess.run(
            [*command, "--config", str(tmp_path / "config.toml"), *jobs],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert records and all(r["text"].strip(" .").lower() == "to" for r in records), records
        assert records[0]["start"] <= spoken[0].start_s + 0.5


def test_events_and_emotion_reach_the_payload_and_the_journal() -> None:
    import time

    from daemon.journal import decode_piece, encode_piece
    from pipeline.messages import Transcript, Utterance, utterance_record
    from pipeline.stitch_rules import join
    from tests.helpers import check_schema

    def piece(n: int, events: tuple[str, ...], emotion: str | None) -> Transcript:
        now = time.time()
        utt = Utterance(
            room="kitchen", id=f"kitchen-a1-00000{n}", audio=np.zeros(1600, np.float32), start_s=n, end_s=n + 0.1,
            start_wall=now, end_wall=now + 0.1, reason="silence", decided_at=time.monotonic(),
        )  # fmt: skip
        return Transcript(utt, "你好", "你好", "zh", 0.9, "sensevoice-x", 10.0, audio_events=events, emotion=emotion)

    record = utterance_record(piece(1, ("Speech", "Laughter"), "happy"))
    check_schema("utterance", record)
    assert (record["audio_events"], record["emotion"]) == (["Speech", "Laughter"], "happy")
    plain = utterance_record(piece(2, (), None))
    check_schema("utterance", plain)
    assert "audio_events" not in plain and "emotion" not in plain
    joined = join(piece(1, ("Speech",), "neutral"), piece(2, ("Speech", "Applause"), "happy"))
    assert (joined.audio_events, joined.emotion) == (("Speech", "Applause"), "happy")
    restored = decode_piece(encode_piece(joined))
    assert (restored.audio_events, restored.emotion) == (("Speech", "Applause"), "happy")
