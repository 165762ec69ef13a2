"""Speculations in the recognize stage: a live piece recognized before its endpoint stands
for the finished piece when no speech came since, and is counted as wasted when it came."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.messages import Transcript, Utterance, Work
from pipeline.recognize import RecognizeStage
from pipeline.recognize_settings import RecognizeSettings
from pipeline.roomstate import RoomStates
from tests.test_recognize_stage import RecordingRecognizer, run_stage, utterance


def speculation(n: int, end: float) -> Utterance:
    u = utterance(n, kind=Work.SPECULATIVE)
    return dataclasses.replace(u, end_s=end, reason="speculative")


def finished(n: int, speculation_end: float | None, marker: int | None = None) -> Utterance:
    u = utterance(n)
    audio = np.full(1600, marker if marker is not None else n, dtype=np.float32)
    return dataclasses.replace(u, audio=audio, speculation_end_s=speculation_end)


def run_in_turn(items: list[Utterance]) -> tuple[RecordingRecognizer, RecognizeStage, list[Transcript]]:
    """Each speculation is followed only once the model is busy with it (the next item then
    waits in the inbox, as behind a real recognition)."""
    recognizer = RecordingRecognizer()

    async def scenario() -> tuple[RecognizeStage, list[Transcript]]:
        inbox: asyncio.Queue[Utterance | None] = asyncio.Queue()
        outbox: asyncio.Queue[Transcript | None] = asyncio.Queue()
        with ThreadPoolExecutor(1) as executor:
            stage = RecognizeStage(
                inbox, outbox, RecognizeSettings(max_batch=4), recognizer=recognizer, executor=executor,
                rooms=RoomStates(),
            )  # fmt: skip
            task = asyncio.create_task(stage.run())
            for item in items:
                recognizer.started.clear()
                inbox.put_nowait(item)
                if item.speculative:
                    assert await asyncio.to_thread(recognizer.started.wait, 10)
            inbox.put_nowait(None)
            await asyncio.wait_for(task, timeout=10)
        out = []
        while (t := outbox.get_nowait()) is not None:
            out.append(t)
        return stage, out

    stage, out = asyncio.run(scenario())
    return recognizer, stage, out


def test_a_standing_speculation_is_the_finished_pieces_transcript() -> None:
    # The finished piece's audio says 9, its speculation's 1: the text is the speculation's,
    # and the model ran once.
    recognizer, stage, (t,) = run_in_turn([speculation(1, end=0.8), finished(1, speculation_end=0.8, marker=9)])
    assert [texts for texts, _ in recognizer.calls] == [["text 1"]]
    assert t.text == "text 1" and t.utterance.end_s == 1.0 and t.utterance.kind is Work.LIVE
    c = stage.counters
    assert (c.speculative, c.speculative_used, c.speculative_wasted, c.utterances) == (1, 1, 0, 1)


def test_a_speculation_that_speech_overtook_is_wasted_and_the_piece_recognized() -> None:
    recognizer, stage, (t,) = run_in_turn([speculation(1, end=0.8), finished(1, speculation_end=None, marker=9)])
    assert [texts for texts, _ in recognizer.calls] == [["text 1"], ["text 9"]]
    assert t.text == "text 9"
    assert (stage.counters.speculative_used, stage.counters.speculative_wasted) == (0, 1)


def test_a_speculation_for_another_stretch_does_not_stand() -> None:
    # The finished piece names a later speculation (0.9 s) that never reached the stage.
    _, stage, (t,) = run_in_turn([speculation(1, end=0.8), finished(1, speculation_end=0.9, marker=9)])
    assert t.text == "text 9" and stage.counters.speculative_wasted == 1


def test_a_speculation_whose_piece_already_waits_is_never_recognized() -> None:
    # Both wait at once (the recognizer was behind): only the finished piece is recognized.
    recognizer, (t,) = run_stage([speculation(1, 0.8), finished(1, 0.8, marker=9)], RecognizeSettings())
    assert [texts for texts, _ in recognizer.calls] == [["text 9"]]
    assert t.text == "text 9"


def test_pieces_that_share_an_id_in_one_batch_each_come_out() -> None:
    # Batch files of the same name (talk.wav, talk.flac) give their utterances one id.
    items = [utterance(1, "talk", Work.BATCH), dataclasses.replace(utterance(2, "talk", Work.BATCH), id="talk-1")]
    _, out = run_stage(items, RecognizeSettings())
    assert sorted(t.text for t in out) == ["text 1", "text 2"]
