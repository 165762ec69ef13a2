from __future__ import annotations

import numpy as np
import pytest

from pipeline.vad import WINDOW, Segment, UtteranceAssembler, VadParams
from tests.helpers import speech_with_pauses

SR = 16000


def pattern(*runs: tuple[float, float]) -> np.ndarray:
    """Audio whose every sample is the speech probability the fake VAD will report:
    runs of (seconds, probability), rounded to whole 32 ms windows."""
    return np.concatenate([np.full(round(s * SR / WINDOW) * WINDOW, p, dtype=np.float32) for s, p in runs])


def fake_prob(window: np.ndarray) -> float:
    return float(window[0])


def assemble(
    audio: np.ndarray, params: VadParams | None = None, chunk: int = 8000
) -> tuple[list[Segment], UtteranceAssembler]:
    assembler = UtteranceAssembler(params or VadParams(), fake_prob)
    segments = []
    for i in range(0, len(audio), chunk):
        segments += assembler.push(audio[i : i + chunk])
    segments += assembler.flush()
    return segments, assembler


def windows(seconds: float) -> int:
    return round(seconds * SR / WINDOW) * WINDOW


def test_one_utterance_with_pre_roll_and_post_roll() -> None:
    audio = pattern((2.0, 0.0), (1.5, 0.9), (2.0, 0.0))
    (seg,), _ = assemble(audio)
    speech_start, speech_end = windows(2.0), windows(2.0) + windows(1.5)
    assert seg.start == speech_start - 300 * 16
    assert seg.end == speech_end + 200 * 16
    assert seg.reason == "silence"
    np.testing.assert_array_equal(seg.audio, audio[seg.start : seg.end])


def test_a_click_shorter_than_min_speech_is_ignored() -> None:
    segments, assembler = assemble(pattern((1.0, 0.0), (0.1, 0.95), (2.0, 0.0)))
    assert segments == []
    assert assembler.discarded == 0


def test_speech_shorter_than_min_utterance_is_discarded_and_counted() -> None:
    params = VadParams(min_speech_ms=100, min_utterance_ms=600)
    segments, assembler = assemble(pattern((1.0, 0.0), (0.3, 0.9), (2.0, 0.0)), params)
    assert segments == []
    assert assembler.discarded == 1


@pytest.mark.parametrize(("pause_s", "expected"), [(0.4, 1), (1.2, 2)])
def test_hangover_decides_whether_a_pause_splits(pause_s: float, expected: int) -> None:
    audio = pattern((1.0, 0.0), (1.0, 0.9), (pause_s, 0.05), (1.0, 0.9), (2.0, 0.0))
    segments, _ = assemble(audio, VadParams(hangover_ms=700))
    assert len(segments) == expected


def test_wavering_probability_between_thresholds_keeps_speech_going() -> None:
    audio = pattern((1.0, 0.0), (1.0, 0.9), (1.5, 0.4), (1.0, 0.9), (2.0, 0.0))
    segments, _ = assemble(audio)
    assert len(segments) == 1


def test_long_speech_is_cut_at_the_quietest_point() -> None:
    # 24 s of speech with a dip (still "speech" to the VAD) 18 s in: the cut lands in it.
    audio = pattern((1.0, 0.0), (18.0, 0.9), (0.128, 0.5), (6.0, 0.9), (2.0, 0.0))
    params = VadParams(max_utterance_ms=20000, cut_search_ms=4000)
    first, second = assemble(audio, params)[0]
    dip_start = windows(1.0) + windows(18.0)
    assert first.reason == "max_length"
    assert dip_start <= first.end <= dip_start + windows(0.128)
    assert second.start == first.end
    assert second.reason == "silence"
    assert (first.end - first.start) / SR <= 20.0


def test_end_of_stream_flushes_the_utterance_in_progress() -> None:
    audio = pattern((1.0, 0.0), (2.0, 0.9))
    (seg,), _ = assemble(audio)
    assert seg.reason == "end_of_stream"
    assert seg.end == len(audio)


def test_chunking_does_not_change_the_result() -> None:
    audio = pattern((0.7, 0.0), (1.3, 0.8), (1.0, 0.0), (0.9, 0.9), (1.0, 0.0))
    a, _ = assemble(audio, chunk=8000)
    b, _ = assemble(audio, chunk=777)
    assert [(s.start, s.end) for s in a] == [(s.start, s.end) for s in b]


def test_silero_finds_each_spoken_sentence() -> None:
    from models.vad import SileroVad

    audio, spoken = speech_with_pauses(
        ["Please turn on the kitchen lights.", "Set a timer for ten minutes.", "Open the garage door please."]
    )
    assembler = UtteranceAssembler(VadParams(), SileroVad())
    segments = []
    for i in range(0, len(audio), 8000):
        segments += assembler.push(audio[i : i + 8000])
    segments += assembler.flush()
    assert len(segments) == len(spoken)
    for seg, said in zip(segments, spoken, strict=True):
        # espeak pads each sentence with a little silence of its own, hence the tolerance.
        assert said.start_s - 0.4 <= seg.start / SR <= said.start_s + 0.25
        assert said.end_s - 0.25 <= seg.end / SR <= said.end_s + 0.4


def test_our_silero_matches_the_packaged_model() -> None:
    import warnings

    import torch

    from models.vad import SileroVad

    audio, _ = speech_with_pauses(["Open the garage door please."], pause_s=0.5)
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load inside silero_vad
            from silero_vad import load_silero_vad

            reference = load_silero_vad()
        ours = SileroVad()
        starts = range(0, len(audio) - WINDOW + 1, WINDOW)
        expected = [reference(torch.from_numpy(audio[i : i + WINDOW]), SR).item() for i in starts]
        got = [ours(audio[i : i + WINDOW]) for i in starts]
    finally:
        torch.set_num_threads(threads)  # importing silero_vad sets it to 1 process-wide
    assert max(expected) > 0.9  # the sample does contain speech
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_silero_probs_for_many_windows_match_one_by_one() -> None:
    from models.vad import SileroVad

    audio, _ = speech_with_pauses(["Open the garage door please.", "Set a timer for ten minutes."], pause_s=0.6)
    windows = audio[: len(audio) // WINDOW * WINDOW].reshape(-1, WINDOW)
    one = SileroVad()
    expected = np.array([one(w) for w in windows])
    many = SileroVad()
    # Uneven blocks, as a room's frames arrive: state and context carry across calls.
    got = np.concatenate([many.probs(windows[i : i + 7]) for i in range(0, len(windows), 7)])
    assert expected.max() > 0.9 and expected.min() < 0.1
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert many.probs(np.zeros((0, WINDOW), np.float32)).shape == (0,)
    with pytest.raises(ValueError, match="windows"):
        many.probs(np.zeros((3, 100), np.float32))


def test_a_speculation_goes_out_when_silence_begins_and_stands_for_its_piece() -> None:
    # 1 s of speech, then silence: after speculate_ms the piece so far goes out once; the
    # finished piece (after the hangover) names it, as no speech came in between.
    audio = pattern((1.0, 0.0), (1.0, 0.9), (1.5, 0.0))
    params = VadParams(hangover_ms=400, post_roll_ms=200, speculate_ms=160)
    spec, final = assemble(audio, params, chunk=WINDOW)[0]
    speech_end = windows(1.0) + windows(1.0)
    assert spec.speculative and not final.speculative
    assert spec.start == final.start
    assert speech_end + 160 * 16 <= spec.end < speech_end + 160 * 16 + WINDOW
    assert final.speculated_end == spec.end
    np.testing.assert_array_equal(spec.audio, audio[spec.start : spec.end])


def test_speech_after_a_speculation_voids_it() -> None:
    # A 250 ms pause (speculated on, shorter than the hangover), then more speech: the
    # finished piece names only the speculation made after the last speech.
    audio = pattern((1.0, 0.0), (1.0, 0.9), (0.25, 0.0), (0.8, 0.9), (1.5, 0.0))
    params = VadParams(hangover_ms=400, post_roll_ms=200, speculate_ms=160)
    segments = assemble(audio, params, chunk=WINDOW)[0]
    assert [s.speculative for s in segments] == [True, True, False]
    first, second, final = segments
    assert first.end < second.end and final.speculated_end == second.end


def test_no_speculation_when_the_endpoint_comes_in_the_same_block() -> None:
    audio = pattern((1.0, 0.0), (1.0, 0.9), (1.5, 0.0))
    params = VadParams(hangover_ms=400, post_roll_ms=200, speculate_ms=160)
    (final,) = assemble(audio, params, chunk=len(audio))[0]
    assert final.reason == "silence" and final.speculated_end > 0


def test_the_stitcher_is_told_where_the_next_piece_would_start_and_how_far_it_heard() -> None:
    """While idle, nothing is under way and no piece can start before position - pre_roll;
    a run of speech windows (even one too short to be speech yet) is under way from its
    start less the pre-roll, which is where its piece starts if it becomes one; a click that
    comes to nothing is under way no more."""
    assembler = UtteranceAssembler(VadParams(), fake_prob)
    assembler.push(pattern((1.0, 0.0)))
    assert assembler.pending_start is None
    assert assembler.settled == windows(1.0) - 300 * 16
    assembler.push(pattern((0.1, 0.95)))  # a click: shorter than min_speech_ms
    assert assembler.pending_start == windows(1.0) - 300 * 16
    assembler.push(pattern((0.5, 0.0)))
    assert assembler.pending_start is None
    assembler.push(pattern((1.0, 0.9)))  # speech: its piece starts where the run said
    start = windows(1.6) - 300 * 16
    assert assembler.in_speech and assembler.pending_start == start
    (seg,) = assembler.push(pattern((1.0, 0.0)))
    assert seg.start == start and assembler.pending_start is None
