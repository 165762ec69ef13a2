"""Speculations in the recognize stage: a live piece recognized before its endpoint stands
for the finished piece when no speech came since, and is counted as wasted when it came."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from models.api import Recognition
from pipeline.messages import Transcript, Utterance, Work
from pipeline.recognize import RecognizeSettings, RecognizeStage
from pipeline.roomstate import RoomStates
from tests.test_recognize_stage import RecordingRecognizer, run_stage, utterance


class SignallingRecognizer(RecordingRecognizer):
    """Sets ``started`` when a call begins, so the test can send the next item while the
    model is busy (it then waits in the inbox, as behind a real recognition)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    def recognize(
        self,
        audios: list[np.ndarray],
        language: str | None = None,
        prompts: list[str] | None = None,
        hotwords: list[Sequence[str]] | None = None,
        timestamps: bool = False,
        sentence_end: bool | Sequence[str] = False,
    ) -> list[Recognition]:
        self.started.set()
        return super().recognize(audios, language, prompts, hotwords, timestamps, sentence_end)


def speculation(n: int, end: float) -> Utterance:
    u = utterance(n, kind=Work.SPECULATIVE)
    return dataclasses.replace(u, end_s=end, reason="speculative")


def finished(n: int, speculation_end: float | None, marker: int | None = None) -> Utterance:
    u = utterance(n)
    audio = np.full(1600, marker if marker is not None else n, dtype=np.float32)
    return dataclasses.replace(u, audio=audio, speculation_end_s=speculation_end)


def run_in_turn(items: list[Utterance]) -> tuple[SignallingRecognizer, RecognizeStage, list[Transcript]]:
    """Each item goes in only once the model is busy with the one before."""
    recognizer = SignallingRecognizer()

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
