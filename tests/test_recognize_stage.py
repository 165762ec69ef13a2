"""The recognize stage's batching policy, with a recording recognizer standing in for the
model (the model itself is covered by test_recognizer.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from models.api import Capabilities, Recognition, Recognizer
from pipeline.messages import Transcript, Utterance, Work
from pipeline.recognize import RecognizeStage
from pipeline.recognize_settings import RecognizeSettings
from pipeline.roomstate import RoomState, RoomStates

CAPABILITIES = Capabilities(
    multilingual=True, prompt=True, timestamps=True, hotword_bias=True, beam_search=False, max_batch=16, max_audio_s=30
)


class RecordingRecognizer:
    """Returns each utterance's marker as its text and records every call."""

    name = "recording"
    device = "cpu"
    dtype = "float32"
    capabilities = CAPABILITIES

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []
        self.threads: set[int] = set()
        self.released = 0
        self.hotwords: list[list[tuple[str, ...]]] = []
        self.started = threading.Event()  # set when a call begins (tests/test_speculation.py)

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
        self.threads.add(threading.get_ident())
        self.hotwords.append([tuple(h) for h in hotwords or []])
        texts = [f"text {int(a[0])}" for a in audios]
        self.calls.append((texts, list(prompts or [])))
        return [Recognition(t, "en", -0.1, 0.01, 0.9, 3, False) for t in texts]

    def release_memory(self) -> None:
        self.released += 1


def utterance(n: int, room: str = "kitchen", kind: Work = Work.LIVE, start: float = 0.0) -> Utterance:
    audio = np.full(1600, n, dtype=np.float32)
    wall = 1000 + start
    uid = f"{room}-{n}"
    return Utterance(room, uid, audio, start, start + 1, wall, wall + 1, "silence", float(n), kind=kind)


def make_stage(
    recognizer: Recognizer,
    executor: ThreadPoolExecutor,
    inbox: asyncio.Queue[Utterance | None],
    output: asyncio.Queue[Transcript | None],
    settings: RecognizeSettings,
    rooms: RoomStates | None = None,
    on_partial: Callable[[Utterance, Recognition], None] | None = None,
) -> RecognizeStage:
    rooms = rooms or RoomStates()
    return RecognizeStage(
        inbox, output, settings, recognizer=recognizer, executor=executor, rooms=rooms, on_partial=on_partial
    )


def run_stage(
    items: list[Utterance],
    settings: RecognizeSettings,
    rooms: RoomStates | None = None,
    on_partial: Callable[[Utterance, Recognition], None] | None = None,
) -> tuple[RecordingRecognizer, list[Transcript]]:
    recognizer = RecordingRecognizer()

    async def scenario() -> list[Transcript]:
        inbox: asyncio.Queue[Utterance | None] = asyncio.Queue()
        outbox: asyncio.Queue[Transcript | None] = asyncio.Queue()
        for item in items:
            inbox.put_nowait(item)
        inbox.put_nowait(None)
        with ThreadPoolExecutor(1) as executor:
            stage = make_stage(recognizer, executor, inbox, outbox, settings, rooms, on_partial)
            await asyncio.wait_for(stage.run(), timeout=10)
        out = []
        while (t := outbox.get_nowait()) is not None:
            out.append(t)
        return out

    return recognizer, asyncio.run(scenario())


def test_waiting_utterances_share_a_batch_up_to_max_batch() -> None:
    recognizer, out = run_stage([utterance(i) for i in range(5)], RecognizeSettings(max_batch=2))
    assert [len(texts) for texts, _ in recognizer.calls] == [2, 2, 1]
    assert [t.text for t in out] == [f"text {i}" for i in range(5)]
    assert len(recognizer.threads) == 1


def test_live_rooms_go_before_batch_work() -> None:
    items = [utterance(1, "file", Work.BATCH), utterance(2, "file", Work.BATCH), utterance(3, "kitchen")]
    recognizer, _ = run_stage(items, RecognizeSettings(max_batch=1))
    assert [texts[0] for texts, _ in recognizer.calls] == ["text 3", "text 1", "text 2"]


def test_prompt_is_previous_utterance_and_hotwords() -> None:
    items = [utterance(1, start=0.0), utterance(2, start=5.0), utterance(3, start=500.0)]
    settings = RecognizeSettings(max_batch=1, prompt_max_gap_s=60)
    rooms = RoomStates.of(["Kubernetes"], [RoomState("kitchen", hotwords=("Zhang Xiaomei",))])
    recognizer, _ = run_stage(items, settings, rooms)
    prompts = [p[0] for _, p in recognizer.calls]
    assert prompts[0] == "Kubernetes, Zhang Xiaomei"
    assert prompts[1] == "Kubernetes, Zhang Xiaomei. text 1"
    assert prompts[2] == "Kubernetes, Zhang Xiaomei"  # 495 s of silence: the context is dropped
    # The same words go to decoding as hotwords, for the log-probability boost.
    assert recognizer.hotwords == [[("Kubernetes", "Zhang Xiaomei")]] * 3


def test_prompt_previous_can_be_switched_off_per_room() -> None:
    items = [utterance(1), utterance(2, start=2.0)]
    rooms = RoomStates.of((), [RoomState("kitchen", prompt_previous=False)])
    recognizer, _ = run_stage(items, RecognizeSettings(max_batch=1), rooms)
    assert [p[0] for _, p in recognizer.calls] == ["", ""]


def test_idle_stage_releases_cached_memory() -> None:
    recognizer = RecordingRecognizer()

    async def scenario() -> None:
        inbox: asyncio.Queue[Utterance | None] = asyncio.Queue()
        outbox: asyncio.Queue[Transcript | None] = asyncio.Queue()
        with ThreadPoolExecutor(1) as executor:
            stage = make_stage(recognizer, executor, inbox, outbox, RecognizeSettings(idle_release_s=0.05))
            task = asyncio.create_task(stage.run())
            await inbox.put(utterance(1))
            await asyncio.wait_for(outbox.get(), timeout=5)
            while stage.counters.releases == 0:
                await asyncio.sleep(0.01)
            await inbox.put(None)
            await asyncio.wait_for(task, timeout=5)

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert recognizer.released == 1


def partial(n: int, room: str = "kitchen", at: float = 0.0) -> Utterance:
    u = utterance(n, room, Work.PARTIAL)
    return dataclasses.replace(u, reason="partial", decided_at=at)


def test_partials_go_last_never_queue_up_and_never_become_transcripts() -> None:
    seen: list[tuple[str, str]] = []
    # While finished utterances wait, partials are skipped; of several partials for one
    # room only the newest is worth recognizing.
    items = [partial(7, at=1.0), utterance(1), partial(8, at=2.0), partial(9, "hall", at=3.0)]

    def record(u: Utterance, r: Recognition) -> None:
        seen.append((u.room, r.text))

    recognizer, out = run_stage(items, RecognizeSettings(max_batch=8), on_partial=record)
    assert [t.text for t in out] == ["text 1"]
    assert all("text 7" not in texts and "text 8" not in texts for texts, _ in recognizer.calls)
    # Nothing else waiting: the newest partial per room is recognized, after the finished one.
    items = [partial(7, at=1.0), partial(8, at=2.0), partial(9, "hall", at=3.0)]
    recognizer, out = run_stage(items, RecognizeSettings(max_batch=8), on_partial=record)
    assert out == []
    assert sorted(seen) == [("hall", "text 9"), ("kitchen", "text 8")]


def test_a_partial_does_not_become_the_rooms_prompt() -> None:
    items = [utterance(1, start=0.0), partial(5, at=100.0), utterance(2, start=3.0)]
    recognizer, _ = run_stage(items, RecognizeSettings(max_batch=1), on_partial=lambda u, r: None)
    prompts = [p[0] for _, p in recognizer.calls]
    assert prompts[-1] == "text 1"


class ScriptedRecognizer(RecordingRecognizer):
    """Each marker has a text and a P(sentence ends); audio longer than one piece is a joint decode."""

    TEXTS: ClassVar[dict[int, tuple[str, float]]] = {
        1: ("Play some quiet music.", 0.2),  # heard as unfinished
        2: ("Why I read?", 0.9),
        3: ("Turn off the lights.", 0.9),
        4: ("What time is it?", 0.9),
        5: ("", 0.0),  # no speech in it
    }
    JOINT = "Play some quiet music while I read."

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = dataclasses.replace(self.capabilities, sentence_end=True)
        self.asked_sentence_end: list[bool | Sequence[str]] = []

    def recognize(
        self,
        audios: list[np.ndarray],
        language: str | None = None,
        prompts: list[str] | None = None,
        hotwords: list[Sequence[str]] | None = None,
        timestamps: bool = False,
        sentence_end: bool | Sequence[str] = False,
    ) -> list[Recognition]:
        super().recognize(audios, language, prompts, hotwords)
        self.asked_sentence_end.append(sentence_end)
        texts = [(self.JOINT, 0.9) if len(a) > 1600 else self.TEXTS[int(a[0])] for a in audios]
        return [
            Recognition(t, "en", -0.1, 0.01, 0.9, 3, False, sentence_end=p if sentence_end else None) for t, p in texts
        ]


def test_a_piece_after_an_unfinished_one_is_recognized_with_it_once() -> None:
    """Only a piece that follows one the recognizer heard as unfinished, close enough, in a
    room that stitches, costs a joint decode: both pieces' audio with a short pause between."""
    items = [
        utterance(1, start=0.0),
        utterance(2, start=1.8),  # 0.8 s after piece 1, which did not end its sentence
        utterance(3, start=10.0),  # 7.2 s later: past the gap
        utterance(4, start=12.2),  # after "Turn off the lights.", which ended its sentence
        utterance(1, room="office", start=0.0),
        utterance(2, room="office", start=1.8),  # a room that does not stitch
    ]
    recognizer = ScriptedRecognizer()
    settings = RecognizeSettings(max_batch=16, stitch_max_gap_s=2.0, end_threshold=0.5)
    rooms = RoomStates.of((), [RoomState("kitchen"), RoomState("office", stitch=False)])

    async def scenario() -> list[Transcript]:
        inbox: asyncio.Queue[Utterance | None] = asyncio.Queue()
        outbox: asyncio.Queue[Transcript | None] = asyncio.Queue()
        for item in [*items, None]:
            inbox.put_nowait(item)
        with ThreadPoolExecutor(1) as executor:
            stage = make_stage(recognizer, executor, inbox, outbox, settings, rooms)
            await asyncio.wait_for(stage.run(), timeout=10)
            assert stage.counters.joint == 1
        out = []
        while (t := outbox.get_nowait()) is not None:
            out.append(t)
        return out

    out = asyncio.run(scenario())
    assert sorted(t.utterance.id for t in out) == sorted(u.id for u in items)  # nothing lost
    joint = [t for t in out if t.joint_with]
    assert [(t.utterance.id, t.joint_with, t.joint_raw) for t in joint] == [
        ("kitchen-2", "kitchen-1", ScriptedRecognizer.JOINT)
    ]
    # One batch for the six pieces, then one joint decode with both pieces' audio in it.
    assert [len(texts) for texts, _ in recognizer.calls] == [6, 1]
    assert recognizer.asked_sentence_end[0] is True  # the stitcher's evidence, for live pieces
    # The joint decode asks after the first piece's words: does the sentence end there?
    assert recognizer.asked_sentence_end[1] == ["Play some quiet music."]
    assert {t.utterance.id: t.joint_end for t in out}["kitchen-2"] == 0.9
    assert {t.utterance.id: t.sentence_end for t in out}["kitchen-1"] == 0.2


def test_a_live_piece_with_no_speech_is_struck_from_the_rooms_piece_starts() -> None:
    """The stitcher waits for a piece its room cut in time: one the recognizer found empty
    never comes, so the recognize stage takes it off the room's list (RoomState.piece_gone)."""
    rooms = RoomStates.of((), [RoomState("kitchen")])
    empty, spoken = utterance(5, start=3.0), utterance(4, start=6.0)
    rooms["kitchen"].heard([empty.start_wall, spoken.start_wall], None, 1010.0)

    async def scenario() -> list[Transcript]:
        inbox: asyncio.Queue[Utterance | None] = asyncio.Queue()
        outbox: asyncio.Queue[Transcript | None] = asyncio.Queue()
        for item in (empty, spoken, None):
            inbox.put_nowait(item)
        with ThreadPoolExecutor(1) as executor:
            stage = make_stage(ScriptedRecognizer(), executor, inbox, outbox, RecognizeSettings(), rooms)
            await asyncio.wait_for(stage.run(), timeout=10)
        out = []
        while (t := outbox.get_nowait()) is not None:
            out.append(t)
        return out

    assert [t.utterance.id for t in asyncio.run(scenario())] == ["kitchen-4"]
    assert list(rooms["kitchen"].piece_starts) == [spoken.start_wall]


def test_timed_segments_land_on_the_speech() -> None:
    """Whisper's whole-second segment times are moved onto the VAD's speech bounds nearby,
    never out of order and never past the chunk."""
    from pipeline.chunks import timed_segments

    speech = [(1.2, 3.46), (4.66, 6.78), (7.98, 10.07)]
    whisper = [(0.0, 3.0, "one"), (3.0, 7.0, "two"), (7.0, 10.0, "three"), (10.0, 30.0, "four")]
    out = timed_segments(whisper, speech, 12.0)
    assert [(s.start_s, s.end_s, s.raw_text) for s in out] == [
        (1.2, 3.46, "one"),
        (4.66, 6.78, "two"),
        (7.98, 10.07, "three"),
        (10.07, 12.0, "four"),  # nothing near: kept in order and within the chunk
    ]


def test_settle_finds_speech_a_timestamped_decode_left_out() -> None:
    """tiny.en wrote one short sentence and a closing timestamp 21 s later, over three
    spans of speech: the sentence stays on the first span, the other two are left out and
    will be recognized on their own."""
    from pipeline.chunks import settle
    from pipeline.messages import TimedText

    speech = [(0.0, 3.2), (5.7, 8.7), (10.8, 21.3)]
    segments, gaps = settle([TimedText(0.0, 21.1, "No one who is himself honest will doubt my being so.")], speech)
    assert [(s.start_s, s.end_s) for s in segments] == [(0.0, 3.2)]
    assert gaps == [(5.7, 8.7), (10.8, 21.3)]
    # Words enough for the speech they span: nothing left out.
    dense = [TimedText(0.0, 8.7, " ".join(["word"] * 20)), TimedText(10.8, 21.3, " ".join(["word"] * 25))]
    assert settle(dense, speech) == (tuple(dense), [])


def test_settle_finds_the_tail_of_a_span_the_decode_stopped_short_of() -> None:
    """One 13 s span of speech (a long sentence) whose two timed segments end 2.9 s before
    it does (tiny.en dropped "were trivialities not worth thinking about"): the tail is left
    out and will be recognized on its own; a tail within SNAP_S is coarse timing, not a gap."""
    from pipeline.chunks import settle
    from pipeline.messages import TimedText

    speech = [(0.0, 3.1), (4.5, 17.5)]
    segments = [TimedText(0.0, 3.1, "What is the weather like today?"),
                TimedText(4.5, 9.7, "The cut on his chest still dripping blood."),
                TimedText(10.4, 14.6, "Even the soaring arena around him with thousands of spectators.")]  # fmt: skip
    assert settle(segments, speech) == (tuple(segments), [(14.6, 17.5)])
    close = [*segments[:2], TimedText(10.4, 16.0, segments[2].raw_text)]
    assert settle(close, speech)[1] == []


def test_a_thin_segment_over_several_spans_has_its_last_span_checked() -> None:
    """tiny.en wrote a 20 s file's last segment as "And see how many wildflowers you can
    bring me home." with its closing timestamp at the end of the audio, over the 2.5 s span
    of "Close the curtains in the bedroom." that it never wrote: 10 words over 5.6 s of
    speech are enough for settle (1 a second) but few for speech (2-3), so that last span is
    recognized on its own too, and its text is kept only where the segment lacks it."""
    from pipeline.chunks import already_said, doubtful_tails, settle
    from pipeline.messages import TimedText

    speech = [(0.8, 4.2), (6.2, 10.3), (12.2, 15.3), (16.6, 19.1)]
    segments = [TimedText(0.8, 4.2, "to devise some new and less costly mode of attack."),
                TimedText(6.2, 10.3, "After what seemed ages of waiting, came his reply."),
                TimedText(12.2, 19.1, "And see how many wildflowers you can bring me home.")]  # fmt: skip
    settled, gaps = settle(segments, speech)
    assert gaps == []
    assert doubtful_tails(settled, speech) == [(16.6, 19.1)]
    # The same words over the last two spans at a speaking rate: no doubt.
    dense = [*segments[:2], TimedText(12.2, 19.1, segments[2].raw_text + " Close the curtains in the bedroom.")]
    assert doubtful_tails(settle(dense, speech)[0], speech) == []
    assert not already_said(segments, (16.6, 19.1), "Close the curtains in the bedroom.")
    assert already_said(dense, (16.6, 19.1), "close the curtains in the bedroom")
    # The words may sit in the next segment, its times coarse: that is said too.
    late = [TimedText(0.8, 6.6, segments[0].raw_text), TimedText(6.6, 12.6, segments[1].raw_text)]
    assert (6.2, 10.3) in doubtful_tails(settle(late, speech)[0], speech)
    assert already_said(late, (6.2, 10.3), "After what seemed ages of waiting, came his reply.")
    chinese = [TimedText(0.0, 3.0, "今天天气很好我们去公园吧")]
    assert already_said(chinese, (1.0, 3.0), "我们去公园") and not already_said(chinese, (1.0, 3.0), "明年见")


class ChunkRecognizer:
    """A timestamped chunk comes back as ``segments`` (the clip06 pattern: its last segment
    claims the last span of speech, which it never wrote); a span recognized on its own
    comes back as ``alone``."""

    name = "chunk"
    device = "cpu"
    dtype = "float32"
    capabilities = CAPABILITIES

    def __init__(self, segments: tuple[tuple[float, float, str], ...], alone: str) -> None:
        self.segments, self.alone = segments, alone
        self.alone_calls = 0

    def recognize(
        self,
        audios: list[np.ndarray],
        language: str | None = None,
        prompts: list[str] | None = None,
        hotwords: list[Sequence[str]] | None = None,
        timestamps: bool = False,
        sentence_end: bool | Sequence[str] = False,
    ) -> list[Recognition]:
        if timestamps:
            text = " ".join(t for _, _, t in self.segments)
            return [Recognition(text, "en", -0.2, 0.01, 0.8, 30, False, segments=self.segments) for _ in audios]
        self.alone_calls += len(audios)
        return [Recognition(self.alone, "en", -0.2, 0.01, 0.8, 8, False) for _ in audios]

    def release_memory(self) -> None:
        pass


def _chunk_through_the_stage(alone: str) -> tuple[ChunkRecognizer, Transcript]:
    speech = ((0.8, 4.2), (6.2, 10.3), (12.2, 15.3), (16.6, 19.1))
    segments = ((0.8, 4.2, "to devise some new and less costly mode of attack."),
                (6.2, 10.3, "After what seemed ages of waiting, came his reply."),
                (12.2, 20.0, "And see how many wildflowers you can bring me home."))  # fmt: skip
    recognizer = ChunkRecognizer(segments, alone)
    chunk = dataclasses.replace(
        utterance(1, kind=Work.BATCH), audio=np.zeros(20 * 16000, np.float32), timestamps=True, speech=speech
    )

    async def scenario() -> Transcript:
        inbox: asyncio.Queue[Utterance | None] = asyncio.Queue()
        outbox: asyncio.Queue[Transcript | None] = asyncio.Queue()
        for item in (chunk, None):
            inbox.put_nowait(item)
        with ThreadPoolExecutor(1) as executor:
            stage = make_stage(recognizer, executor, inbox, outbox, RecognizeSettings())
            await asyncio.wait_for(stage.run(), timeout=10)
            assert stage.counters.gaps_filled == 1
        t = outbox.get_nowait()
        assert t is not None and outbox.get_nowait() is None
        return t

    return recognizer, asyncio.run(scenario())


def test_the_stage_adds_a_doubtful_spans_text_once_and_only_when_new() -> None:
    recognizer, t = _chunk_through_the_stage("Close the curtains in the bedroom.")
    assert recognizer.alone_calls == 1  # the last span, on its own
    assert t.raw_text.endswith("bring me home. Close the curtains in the bedroom.")
    assert [s.start_s for s in t.segments] == sorted(s.start_s for s in t.segments)
    # Heard alone, the span says what the segment already had: nothing is added twice.
    _, again = _chunk_through_the_stage("how many wild flowers you can bring me home")
    assert again.raw_text.count("bring me home") == 1


def test_settle_counts_chinese_words_by_characters() -> None:
    """A Chinese segment has no spaces: 28 characters over two spans of 6 s of speech are
    words enough (they used to count as one word, and the second span was redone)."""
    from pipeline.chunks import settle, spoken_words
    from pipeline.messages import TimedText

    assert spoken_words("首先说一下") == 2.5 and spoken_words("我用 iPhone 打电话") == 3.5
    text = "首先说一下刚才这个经理说完的这个销售问题咱再说一下咱们的商场问题"
    segments, gaps = settle([TimedText(0.0, 12.0, text)], [(0.1, 5.6), (6.0, 12.0)])
    assert gaps == [] and segments[0].end_s == 12.0


def test_a_short_files_whole_text_stands_unless_it_says_clearly_less() -> None:
    """Whisper without timestamps may stop at a pause: the whole-audio text of a short file
    is kept only when it has at least WHOLE_KEEPS of the words its segments' text has."""
    from pipeline.chunks import WHOLE_KEEPS, keep_whole

    four = ["Turn the heating down a little bit.", "Had he married a more amiable woman,", "Seven of clubs."]
    assert not keep_whole(four[0], four)  # stopped after the first sentence
    assert keep_whole(" ".join(four), four) and keep_whole("anything", [])  # one segment: nothing to compare
    words = 20
    assert keep_whole(" ".join(["w"] * round(words * WHOLE_KEEPS)), [" ".join(["w"] * words)])
    assert not keep_whole(" ".join(["w"] * (round(words * WHOLE_KEEPS) - 1)), [" ".join(["w"] * words)])


def test_the_model_gets_a_bounded_share_of_many_hotwords_the_rooms_own_first() -> None:
    """600 long hotwords on a room used to fill the prompt and the per-step boost."""
    from pipeline.roomstate import DECODING_HOTWORDS_MAX, DECODING_HOTWORDS_MAX_CHARS, RoomState, RoomStates

    few = RoomStates.of(["Kubernetes"], [RoomState("kitchen", hotwords=("Shivonne",))])
    assert few.decoding_hotwords("kitchen", latin_only=True) == ("Kubernetes", "Shivonne")  # as before
    many_global = [f"GlobalTerm{i:03d}" for i in range(600)]
    own = tuple(f"Room specific phrase number {i:03d}" for i in range(600))
    states = RoomStates.of(many_global, [RoomState("kitchen", hotwords=own)])
    words = states.decoding_hotwords("kitchen", latin_only=True)
    assert len(words) <= DECODING_HOTWORDS_MAX and sum(map(len, words)) <= DECODING_HOTWORDS_MAX_CHARS
    kinds = [w in own for w in words]
    assert words[0] == own[0] and kinds == sorted(kinds, reverse=True)  # the room's own words first
    assert len(states.hotwords_for("kitchen")) == 1200  # text correction still sees them all
