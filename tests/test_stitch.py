"""The context stitcher over timed pieces: the recognizer's sentence-end evidence decides,
joins within max gap, max hold, joiners, the joint decode's veto."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pytest

from pipeline.messages import Transcript, Utterance, utterance_record
from pipeline.roomstate import RoomState, RoomStates
from pipeline.stitch import StitchSettings, StitchStage
from pipeline.stitch_rules import ends_sentence, ends_sentence_inside, join_texts, joint_opinion
from tests.helpers import speak

if TYPE_CHECKING:
    from models.recognizer import WhisperRecognizer


@pytest.mark.parametrize(
    ("first", "second", "language", "joined"),
    [
        ("Please turn on the.", "Kitchen lights.", "en", "Please turn on the Kitchen lights."),
        ("I went to the store.", "And bought milk.", "en", "I went to the store and bought milk."),
        ("I went to the store", "because it rained.", "en", "I went to the store because it rained."),
        ("Please turn on the...", "kitchen lights.", "en", "Please turn on the kitchen lights."),
        ("Is it late?", "Yes.", "en", "Is it late? Yes."),
        ("我们明天去。", "然后再说", "zh", "我们明天去然后再说"),
        ("把客厅的灯", "打开。", "zh", "把客厅的灯打开。"),
    ],
)
def test_join_texts(first: str, second: str, language: str, joined: str) -> None:
    assert join_texts(first, second, language) == joined


@pytest.mark.parametrize(
    ("text", "sentence_end", "ends"),
    [
        ("Please turn on the kitchen lights.", 0.9, True),
        ("Please turn on the kitchen lights.", 0.2, False),  # the evidence, not the full stop
        ("Please turn on the", 0.6, True),  # nor the words: no list of dangling words
        ("Turn off the lights.", None, True),  # no evidence: a final mark ends it
        ("Please turn on the...", None, False),  # an ellipsis does not
        ("把客厅的灯打开。", None, True),
        ("把客厅的", None, False),
    ],
)
def test_a_piece_ends_its_sentence_by_the_recognizers_evidence(
    text: str, sentence_end: float | None, ends: bool
) -> None:
    t = dataclasses.replace(piece(text, 0.0, 1.0), sentence_end=sentence_end)
    assert ends_sentence(t, threshold=0.5) is ends


def piece(
    text: str, start: float, end: float, room: str = "kitchen", n: int = 1, language: str = "en", end_p: float = 0.1
) -> Transcript:
    """A recognized piece; ``end_p`` is the recognizer's P(sentence ends), low by default."""
    audio = np.zeros(16, np.float32)
    u = Utterance(room, f"{room}-x-{n:06d}", audio, start, end, 1000 + start, 1000 + end, "silence", end)
    return Transcript(u, text, text, language, 0.8, "whisper-tiny.en", 100.0, sentence_end=end_p)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stage(clock: Clock, **settings: int) -> StitchStage:
    rooms = RoomStates.of((), [RoomState("kitchen"), RoomState("hall"), RoomState("office", stitch=False)])
    return StitchStage(
        asyncio.Queue(),
        asyncio.Queue(),
        # The mechanics at fixed settings (the tuned defaults move with bench/stitch.py).
        StitchSettings(**{"end_threshold": 0.5, "max_gap_ms": 2000, **settings}),  # type: ignore[arg-type]
        rooms=rooms,
        clock=clock,
    )


def hear(
    s: StitchStage, room: str, until: float, starts: tuple[float, ...] = (), speaking: float | None = None
) -> None:
    """What the room's VAD reports after a block of audio (stream times, as ``piece`` takes
    them): the starts of the pieces it cut, speech under way, how far no other piece can start."""
    speaking_from = None if speaking is None else 1000 + speaking
    s.rooms[room].heard([1000 + t for t in starts], speaking_from, 1000 + until)


async def look(s: StitchStage, clock: Clock, now: float) -> list[str]:
    """The stitcher looks at its held pieces at ``now``: the texts it published then."""
    clock.now = now
    await s._release_due()
    return [t.text for t in drain(s)]


def output(s: StitchStage) -> asyncio.Queue[Transcript | None]:
    assert s.output is not None
    return s.output


def drain(s: StitchStage) -> list[Transcript]:
    out = []
    while not output(s).empty():
        item = output(s).get_nowait()
        assert item is not None
        out.append(item)
    return out


def test_pieces_join_and_keep_their_raw_texts() -> None:
    clock = Clock()
    s = stage(clock)

    async def go() -> None:
        clock.now = 3.0
        await s.handle(piece("Please turn on the.", 1.0, 2.5, n=1))
        clock.now = 4.0
        hear(s, "kitchen", 3.5, speaking=3.7)  # the second piece's speech began at 3.7
        await s._release_due()
        hear(s, "kitchen", 4.5, starts=(3.7,))  # ... and was cut: it is awaited
        clock.now = 5.0
        await s._release_due()
        assert drain(s) == []
        await s.handle(piece("Kitchen lights.", 3.7, 4.6, n=2))
        hear(s, "kitchen", 6.5)
        await s._release_due()
        assert drain(s) == []  # still held: a third piece may start until 4.6 + max_gap
        hear(s, "kitchen", 6.6)  # max_gap of silence heard after the last piece
        await s._release_due()

    asyncio.run(go())
    (out,) = drain(s)
    assert out.text == "Please turn on the Kitchen lights." and out.parts == 2
    assert out.raw_parts == ("Please turn on the.", "Kitchen lights.")
    assert out.utterance.id == "kitchen-x-000001" and out.utterance.end_s == 4.6
    record = utterance_record(out)
    assert record["parts"] == 2 and record["raw_parts"] == ["Please turn on the.", "Kitchen lights."]
    assert record["duration_s"] == 3.6


def test_no_join_across_max_gap_even_when_it_reads_as_one() -> None:
    clock = Clock()
    s = stage(clock, max_gap_ms=1000, max_hold_ms=5000)

    async def go() -> None:
        await s.handle(piece("Please turn on the.", 1.0, 2.5, n=1))
        hear(s, "kitchen", 5.0, starts=(4.0,))
        await s.handle(piece("kitchen lights.", 4.0, 5.0, n=2))  # 1.5 s later

    asyncio.run(go())
    assert [t.text for t in drain(s)] == ["Please turn on the."]
    assert s.held["kitchen"].transcript.text == "kitchen lights."


def test_a_finished_sentence_goes_at_once_an_unfinished_one_after_max_gap() -> None:
    clock = Clock()
    s = stage(clock, max_gap_ms=2000, max_hold_ms=5000)

    async def go() -> list[list[str]]:
        clock.now = 3.0
        await s.handle(piece("Turn off the lights.", 1.0, 2.5, room="kitchen", end_p=0.9))  # decided at 2.5
        seen = [[t.text for t in drain(s)]]
        await s.handle(piece("Please turn on the", 1.0, 2.5, room="hall"))
        # The hall's VAD hears a block at a time: the piece goes when 2.5 + max_gap is heard.
        for now, heard in ((3.2, 3.0), (4.4, 4.4), (4.5, 4.5)):
            hear(s, "hall", heard)
            seen.append(await look(s, clock, now))
        return seen

    assert asyncio.run(go()) == [["Turn off the lights."], [], [], ["Please turn on the"]]
    assert (s.counters.held, s.counters.waited_in_vain, s.counters.joined) == (1, 1, 0)


def test_complete_wait_delays_a_finished_sentence_and_new_speech_does_not_hold_it() -> None:
    clock = Clock()
    s = stage(clock, max_gap_ms=2000, max_hold_ms=5000, complete_wait_ms=800)

    async def go() -> list[list[str]]:
        seen = []
        clock.now = 2.7
        hear(s, "kitchen", 2.4, speaking=2.6)
        await s.handle(piece("Turn off the lights.", 1.0, 2.5, end_p=0.9))
        for now in (3.2, 3.3):
            seen.append(await look(s, clock, now))
        return seen

    assert asyncio.run(go()) == [[], ["Turn off the lights."]]


def test_new_speech_holds_the_piece_but_never_past_max_hold() -> None:
    clock = Clock()
    s = stage(clock, max_gap_ms=2000, max_hold_ms=5000, complete_wait_ms=800)

    async def go() -> None:
        clock.now = 3.0
        await s.handle(piece("Please turn on the.", 1.0, 2.5))
        hear(s, "kitchen", 7.6, speaking=3.0)
        clock.now = 7.9  # past max_gap, but speech started again at 3.0: wait for it
        await s._release_due()
        assert drain(s) == []
        clock.now = 8.0  # max_hold after arrival
        await s._release_due()

    asyncio.run(go())
    assert [t.text for t in drain(s)] == ["Please turn on the."]


def test_speech_that_comes_to_nothing_does_not_hold_a_piece() -> None:
    """A cough after a held piece: the VAD's run of speech windows ends without a piece, and
    the piece goes once max_gap of silence after it was heard, not at max_hold."""
    clock = Clock()
    s = stage(clock, max_gap_ms=1000, max_hold_ms=5000)

    async def go() -> list[list[str]]:
        seen = []
        clock.now = 3.0
        await s.handle(piece("Please turn on the", 1.0, 2.5))
        for now, heard, speaking in ((3.5, 3.0, 3.2), (4.0, 3.5, None)):
            hear(s, "kitchen", heard, speaking=speaking)
            seen.append(await look(s, clock, now))
            if s.held:  # speech under way: it looks again soon, not at max_hold
                assert s._next_deadline() == pytest.approx(now + 0.02)
        return seen

    assert asyncio.run(go()) == [[], ["Please turn on the"]]


def test_a_piece_that_had_no_speech_is_not_waited_for() -> None:
    """The next piece was cut in time, but the recognizer found no speech in it: the recognize
    stage says so (RoomState.piece_gone), and the held piece goes at the next look."""
    clock = Clock()
    s = stage(clock, max_gap_ms=1000, max_hold_ms=5000)

    async def go() -> list[list[str]]:
        seen = []
        clock.now = 3.0
        await s.handle(piece("Please turn on the", 1.0, 2.5))
        hear(s, "kitchen", 4.0, starts=(3.2,))
        seen.append(await look(s, clock, 3.0))
        assert s._next_deadline() == pytest.approx(3.0 + 0.02)  # it looks again soon
        s.rooms["kitchen"].piece_gone(1000 + 3.2)
        seen.append(await look(s, clock, 3.02))
        return seen

    assert asyncio.run(go()) == [[], ["Please turn on the"]]


def test_a_held_piece_goes_when_its_room_stops_hearing() -> None:
    """A room whose source went away hears nothing more: its held piece does not wait for
    max_hold, but goes a second after max_gap."""
    clock = Clock()
    s = stage(clock, max_gap_ms=1000, max_hold_ms=5000)

    async def go() -> list[list[str]]:
        seen = []
        clock.now = 3.0
        await s.handle(piece("Please turn on the", 1.0, 2.5))
        hear(s, "kitchen", 2.7)  # and then no more audio
        for now in (4.9, 5.0):
            seen.append(await look(s, clock, now))
        return seen

    assert asyncio.run(go()) == [[], ["Please turn on the"]]


def test_rooms_are_separate_and_a_room_can_switch_stitching_off() -> None:
    clock = Clock()
    s = stage(clock)

    async def go() -> None:
        await s.handle(piece("Please turn on the.", 1.0, 2.0, room="kitchen", n=1))
        await s.handle(piece("and the radio.", 2.5, 3.0, room="hall", n=1))
        await s.handle(piece("Please turn on the.", 1.0, 2.0, room="office", n=1))
        await s.handle(piece("and the radio.", 2.5, 3.0, room="office", n=2))

    asyncio.run(go())
    assert [(t.utterance.room, t.text) for t in drain(s)] == [
        ("office", "Please turn on the."),
        ("office", "and the radio."),
    ]
    assert set(s.held) == {"kitchen", "hall"}


def test_run_releases_on_its_own_and_flushes_at_the_end() -> None:
    async def go() -> list[Transcript]:
        settings = StitchSettings(max_gap_ms=50, max_hold_ms=100)
        s = StitchStage(asyncio.Queue(), asyncio.Queue(), settings, rooms=RoomStates())
        task = asyncio.create_task(s.run())
        # decided_at of 0 lies far in the past: the piece is due at once.
        await s.inbox.put(piece("Done.", 0.0, 0.0, end_p=0.9))
        first = await asyncio.wait_for(output(s).get(), 5)
        await s.inbox.put(piece("Held", 0.0, 1e9))  # its room never hears: held until max_hold
        await s.inbox.put(None)
        await task
        rest = [await output(s).get() for _ in range(2)]
        assert first is not None
        return [first, *[r for r in rest if r is not None]]

    out = asyncio.run(go())
    assert [t.text for t in out] == ["Done.", "Held"]


@pytest.mark.parametrize(
    ("text", "inside"),
    [
        ("Can you remind me to call my sister tomorrow?", False),
        ("Please turn on the kitchen lights.", False),
        ("It costs 3.5 euros.", False),  # a decimal point is no sentence end
        ("The meeting starts at noon. Please bring your laptop.", True),
        ("Is it late? Yes.", True),
        ("Could you open the... garage door please?", False),  # a pause, not a sentence end
        ("I think so... Yes, let us go.", True),
        ("把客厅的灯打开。", False),
        ("今天天气很好。我们去公园吧。", True),
    ],
)
def test_sentence_end_inside(text: str, inside: bool) -> None:
    assert ends_sentence_inside(text) is inside


def with_joint(t: Transcript, previous: Transcript, joint: str) -> Transcript:
    return dataclasses.replace(t, joint_with=previous.utterance.id, joint_raw=joint, joint_text=joint)


def test_the_joint_decode_gives_its_words_or_vetoes_a_join() -> None:
    """A held piece did not end its sentence; the next one joins it. Heard as one stretch, the
    recognizer's words replace the pieces'; when it heard two sentences, they stay two; a
    joint decode that lost words or wrote something else is no opinion (the texts join)."""
    first, second = piece("Play some quiet music.", 1.0, 2.5, n=1), piece("Why I read?", 3.3, 4.2, n=2, end_p=0.9)
    joined_texts = "Play some quiet music Why I read?"
    cases = [
        (with_joint(second, first, "Play some quiet music while I read."), ["Play some quiet music while I read."]),
        (with_joint(second, first, "Play some quiet music. Why I read?"), [first.text, second.text]),
        (second, [joined_texts]),  # no joint decode: joined, the held piece was unfinished
        (with_joint(second, first, "Play some music."), [joined_texts]),  # it lost words
        (with_joint(second, first, "Play some quiet music. Thank you for watching!"), [joined_texts]),
        # A joint decode made with another piece than the one held does not count.
        (dataclasses.replace(second, joint_with="kitchen-x-000099", joint_text="Play some quiet music while I read."),
         [joined_texts]),
    ]  # fmt: skip
    for item, texts in cases:
        s = stage(Clock())

        async def go(s: StitchStage = s, item: Transcript = item) -> list[Transcript]:
            await s.handle(first)
            await s.handle(item)
            for room in list(s.held):  # what run() does at the end of input
                await s._release(room)
            return drain(s)

        out = asyncio.run(go())
        assert [t.text for t in out] == texts
        if len(out) == 1:
            assert out[0].parts == 2 and out[0].raw_parts == (first.raw_text, second.raw_text)
            assert out[0].sentence_end == 0.9  # the last piece's evidence


def test_the_joint_decodes_sentence_end_between_the_pieces_decides() -> None:
    """The recognizer's P(sentence ends) after the first piece's words, hearing both, keeps
    two sentences apart whatever the joint text's punctuation; below the threshold they join."""
    first, second = piece("Cancel all my timers", 1.0, 2.5, n=1), piece("Go back to the last song.", 3.3, 4.9, n=2)
    run_on = "Cancel all my timers Go back to the last song."  # no full stop between them
    apart = dataclasses.replace(with_joint(second, first, run_on), joint_end=0.8)
    one = dataclasses.replace(with_joint(second, first, run_on), joint_end=0.2)
    assert joint_opinion(first.text, apart, threshold=0.5) is False
    assert joint_opinion(first.text, one, threshold=0.5) is True
    assert joint_opinion(first.text, dataclasses.replace(apart, joint_end=None)) is True  # the text alone


def test_joint_opinion_counts_chinese_by_characters() -> None:
    first = piece("把客厅的", 1.0, 2.0, n=1, language="zh")
    second = piece("灯打开。", 2.8, 3.5, n=2, language="zh")
    assert joint_opinion(first.text, with_joint(second, first, "把客厅的灯打开。")) is True
    assert joint_opinion(first.text, with_joint(second, first, "把客厅的。灯打开。")) is False
    assert joint_opinion(first.text, with_joint(second, first, "把客厅。")) is None  # lost characters


def test_recognizer_writes_one_sentence_for_a_split_one_and_two_for_two(recognizer: WhisperRecognizer) -> None:
    """The premise of joint decoding, on real speech: the two pieces of a paused sentence,
    heard as one stretch, come out as one sentence; two sentences keep their full stop."""
    pause = np.zeros(int(0.3 * 16000), np.float32)
    split = [speak("Can you remind me to call"), speak("my sister tomorrow")]
    separate = [speak("The meeting starts at noon."), speak("Please bring your laptop.")]
    one, two = recognizer.recognize(
        [np.concatenate([split[0], pause, split[1]]), np.concatenate([separate[0], pause, separate[1]])]
    )
    assert "sister" in one.text and not ends_sentence_inside(one.text)
    assert "laptop" in two.text and ends_sentence_inside(two.text)
