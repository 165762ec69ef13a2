"""The whole daemon as a subprocess, real audio in, a real Mosquitto broker out."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon.outbox import Outbox
from tests.helpers import (
    Daemon,
    Mosquitto,
    Spoken,
    Subscriber,
    check_schema,
    epoch,
    free_port,
    journal_ids,
    normalize,
    speak,
    speech_with_pauses,
    wer,
    write_config,
)

pytestmark = pytest.mark.slow

TEXTS = ["Please turn on the kitchen lights.", "What is the weather like today?", "Open the garage door please."]
WER_BOUND = 0.15


def speech_file(path: Path, texts: list[str]) -> list[Spoken]:
    audio, spoken = speech_with_pauses(texts)
    sf.write(path, audio, 16000)
    return spoken


def file_room(path: Path, realtime: bool, name: str = "kitchen") -> str:
    source = f'{{ type = "file", path = "{path}", realtime = {str(realtime).lower()} }}'
    return f'[[rooms]]\nname = "{name}"\nsource = {source}\n'


def check_utterances(payloads: list[bytes], spoken: list[Spoken], room: str = "kitchen") -> list[dict[str, object]]:
    records = sorted((json.loads(p) for p in payloads), key=lambda r: r["start"])
    assert len(records) == len(spoken)
    assert len({r["id"] for r in records}) == len(records)
    assert wer([s.text for s in spoken], [str(r["text"]) for r in records]) <= WER_BOUND
    for record in records:
        check_schema("utterance", record)
        assert record["room"] == room
        assert set(record) >= {"id", "text", "raw_text", "language", "start", "end", "duration_s"}
        assert set(record) >= {"confidence", "latency_ms", "model", "parts"}
        assert 0 < epoch(record["end"]) - epoch(record["start"]) == pytest.approx(record["duration_s"], abs=0.01)
        assert record["model"] == "whisper-tiny.en" and record["language"] == "en"
    return records


def test_every_utterance_reaches_the_broker_then_clean_stop(tmp_path: Path, broker: Mosquitto) -> None:
    audio, other = tmp_path / "room.wav", tmp_path / "office.flac"
    spoken = speech_file(audio, TEXTS)
    office_texts = ["Set a timer for ten minutes.", "Close the curtains in the bedroom."]
    office_spoken = speech_file(other, office_texts)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = file_room(audio, realtime=False) + file_room(other, realtime=True, name="office")
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms)
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        payloads = sub.wait_for("/kitchen/utterance", len(TEXTS), timeout_s=120)
        check_utterances(payloads, spoken)
        # A second room at the same time, paced like a microphone.
        check_utterances(sub.wait_for("/office/utterance", 2, timeout_s=120), office_spoken, room="office")
        assert sub.payloads("/status")[0] == b"online"
        # The files ended: the rooms are idle but the daemon keeps running.
        daemon.wait_log("room idle", 2)
        assert daemon.proc.poll() is None
        assert daemon.terminate() == 0
        sub.wait_for("/status", 2, timeout_s=10)
        assert sub.payloads("/status")[-1] == b"stopped"
    finally:
        daemon.kill()
        sub.close()
    published = daemon.events("utterance published")
    assert len(published) == len(TEXTS) + len(office_texts)
    assert all(str(entry["utterance_id"]).startswith(f"{entry['room']}-") for entry in published)


def test_sigterm_mid_utterance_publishes_what_was_heard(tmp_path: Path, broker: Mosquitto) -> None:
    audio = tmp_path / "room.wav"
    speech_file(audio, ["Please turn on the kitchen lights and then close all the curtains in the living room."])
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "c.toml", broker.port, prefix, file_room(audio, realtime=True))
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        # Stop while the sentence is being spoken (it starts 1.5 s in and lasts ~5 s).
        daemon.wait_log("speech started", timeout_s=60)
        assert daemon.terminate() == 0
        payloads = sub.wait_for("/kitchen/utterance", 1, timeout_s=10)
        (record,) = [json.loads(p) for p in payloads]
        assert normalize(str(record["text"])).startswith("please turn")
        (cut,) = daemon.events("utterance cut")
        assert cut["reason"] == "shutdown"
    finally:
        daemon.kill()
        sub.close()


def test_broker_started_after_the_daemon_loses_nothing(tmp_path: Path) -> None:
    audio = tmp_path / "room.wav"
    spoken = speech_file(audio, TEXTS)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    server = Mosquitto(tmp_path, port=free_port())
    # Register the subscriber's persistent session, then take the broker away.
    server.start()
    sub = Subscriber(server.port, f"{prefix}/#", "viewer", persistent=True)
    assert sub.connected.wait(10)
    server.stop()
    config = write_config(tmp_path / "c.toml", server.port, prefix, file_room(audio, realtime=False))
    daemon = Daemon(config)
    try:
        daemon.wait_log("mqtt connect failed", timeout_s=60)
        daemon.wait_log("utterance recognized", len(TEXTS), timeout_s=120)
        assert daemon.proc.poll() is None  # still running, holding the utterances
        server.start()
        payloads = sub.wait_for("/kitchen/utterance", len(TEXTS), timeout_s=60)
        records = check_utterances(payloads, spoken)
        # Those that waited for the broker say so (the last may be cut after it came back).
        assert records[0]["delayed"] is True and all(r.get("delayed", True) is True for r in records)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
        server.stop()
    # Each failed attempt is logged once, as one line.
    assert all("traceback" not in json.dumps(e).lower() for e in daemon.events("mqtt connect failed"))


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path, how: str) -> None:
    """The broker stopped cleanly, or killed with SIGKILL, in the middle of a stream and
    started again: every utterance id reaches a persistent-session subscriber, none with two
    different texts; duplicates are only QoS 1 redelivery of the same utterance."""
    texts = [*TEXTS, "Set a timer for ten minutes.", "Close the curtains in the bedroom."]
    audio = tmp_path / "room.wav"
    spoken = speech_file(audio, texts)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    server = Mosquitto(tmp_path, port=free_port())
    server.start()
    sub = Subscriber(server.port, f"{prefix}/#", "viewer", persistent=True)
    assert sub.connected.wait(10)
    config = write_config(tmp_path / "c.toml", server.port, prefix, file_room(audio, realtime=True))
    daemon = Daemon(config)
    try:
        sub.wait_for("/kitchen/utterance", 1, timeout_s=90)
        server.kill() if how == "kill" else server.stop()
        daemon.wait_log("mqtt connection lost", timeout_s=30)
        # At least one more utterance is recognized while the broker is away.
        before = len(daemon.events("utterance published"))
        daemon.wait_log("utterance recognized", before + 1, timeout_s=60)
        server.start()
        daemon.wait_log("utterance published", len(texts), timeout_s=90)
        payloads = sub.wait_for("/kitchen/utterance", len(texts), timeout_s=30)
        produced = {str(e["utterance_id"]) for e in daemon.events("utterance stored")}
        texts_by_id: dict[str, set[str]] = {}
        for p in payloads:
            record = json.loads(p)
            texts_by_id.setdefault(record["id"], set()).add(record["text"])
        assert set(texts_by_id) == produced  # every id produced arrived: 0 lost
        assert all(len(t) == 1 for t in texts_by_id.values())  # a redelivery never changes the text
        # QoS 1 is at least once: a PUBACK lost with the broker means the utterance is sent
        # again after the reconnect, under the same id. Subscribers drop duplicates by id.
        unique = {json.loads(p)["id"]: p for p in payloads}
        records = check_utterances(list(unique.values()), spoken)
        assert len(records) == len(texts)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
        server.stop()


def test_a_sentence_split_by_a_pause_arrives_whole_and_separate_sentences_apart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # A mid-sentence pause: 0.4 s of file silence, ~0.95 s between voiced samples with
    # espeak-ng's own quiet edges; the VAD cuts a piece after 0.4 s, and the pieces' audio
    # (pre- and post-roll included) lies 0.26 s apart, within stitch.max_gap_ms. Then
    # sentences 3 s apart.
    texts = ["Please turn on the", "kitchen lights.", "What time is it?", "Open the garage door please."]
    audio, spoken = speech_with_pauses(texts, pauses=[0.4, 3.0, 3.0, 1.5])
    sf.write(tmp_path / "room.wav", audio, 16000)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "c.toml", broker.port, prefix, file_room(tmp_path / "room.wav", realtime=True))
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        daemon.wait_log("room idle", 1, timeout_s=120)
        sub.wait_for("/kitchen/utterance", 3, timeout_s=60)
        assert daemon.terminate() == 0
        records = sorted((json.loads(p) for p in sub.payloads("/kitchen/utterance")), key=lambda r: r["start"])
        assert [r["parts"] for r in records] == [2, 1, 1]
        assert len(records[0]["raw_parts"]) == 2
        assert wer(["Please turn on the kitchen lights.", *texts[2:]], [r["text"] for r in records]) <= WER_BOUND
        assert normalize(records[0]["text"]).endswith("kitchen lights")
        assert records[0]["start"] < records[1]["start"]
        assert spoken[0].start_s < spoken[1].start_s
    finally:
        daemon.kill()
        sub.close()


def test_partials_arrive_while_speaking_and_their_stable_text_never_shrinks(tmp_path: Path, broker: Mosquitto) -> None:
    long_sentence = (
        "This morning the snow in the mountains closed every road to the village, so the school stayed shut "
        "and the children spent the whole day building a large snowman in the square."
    )
    audio, _ = speech_with_pauses([long_sentence], pause_s=1.0)
    sf.write(tmp_path / "room.wav", audio, 16000)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    room = file_room(tmp_path / "room.wav", realtime=True) + "partials = true\npartial_interval_ms = 1000\n"
    config = write_config(tmp_path / "c.toml", broker.port, prefix, room)
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        (final,) = [json.loads(p) for p in sub.wait_for("/kitchen/utterance", 1, timeout_s=120)]
        assert final["duration_s"] > 8
        order = [(t.rsplit("/", 1)[-1], json.loads(p)) for t, p, _ in sub.messages if "/kitchen/" in t]
        partials = [m for kind, m in order if kind == "partial"]
        for m in partials:
            check_schema("partial", m)
        first_final = next(i for i, (kind, _) in enumerate(order) if kind == "utterance")
        assert len([m for kind, m in order[:first_final] if kind == "partial"]) >= 3
        assert all(m["id"] == final["id"] and m["final"] is False for m in partials)
        durations = [m["duration_s"] for m in partials]
        # The first as soon as the speech is confirmed: pre-roll and min_speech_ms, and at
        # most the rest of the 500 ms frame that confirmed it.
        assert durations[0] <= 1.06
        # A partial is asked for at most once per second of speech (audio time, so this holds
        # however fast the machine is); a busy recognizer skips some, never reorders them.
        assert all(b - a >= 0.95 for a, b in itertools.pairwise(durations))
        stable = [m["stable_text"] for m in partials]
        assert all(len(b) >= len(a) for a, b in itertools.pairwise(stable))
        assert stable[-1] and normalize(final["text"]).startswith(normalize(stable[-1])[:10])
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()


def test_a_killed_daemon_publishes_what_it_held_after_restart(tmp_path: Path) -> None:
    audio = tmp_path / "room.wav"
    spoken = speech_file(audio, TEXTS)
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000 * 3, dtype=np.float32), 16000)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    server = Mosquitto(tmp_path / "broker", port=free_port())  # not started: the broker is away
    config = write_config(tmp_path / "c.toml", server.port, prefix, file_room(audio, realtime=False))
    daemon = Daemon(config)
    try:
        stored = daemon.wait_log("utterance stored", len(TEXTS), timeout_s=120)
        daemon.proc.kill()  # SIGKILL: no drain, no goodbye
        daemon.proc.wait()
    finally:
        daemon.kill()
    ids = [str(e["utterance_id"]) for e in stored]
    # The same config folder (so the same outbox), a room that hears nothing new, a broker.
    server.start()
    sub = Subscriber(server.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    write_config(tmp_path / "c.toml", server.port, prefix, file_room(silence, realtime=False))
    daemon = Daemon(config)
    try:
        records = check_utterances(sub.wait_for("/kitchen/utterance", len(TEXTS), timeout_s=120), spoken)
        assert [r["id"] for r in records] == ids
        assert all(r["delayed"] is True for r in records)
        daemon.wait_log("utterance published", len(TEXTS))
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
        server.stop()
    # Acknowledged means gone: a third start publishes nothing old.
    assert Outbox(tmp_path / "state" / "outbox.sqlite3").pending() == []


def test_broker_away_longer_than_the_outbox_age_drops_the_oldest_loudly(tmp_path: Path) -> None:
    texts = [*TEXTS, "Set a timer for ten minutes."]
    audio = tmp_path / "room.wav"
    speech_file(audio, texts)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    server = Mosquitto(tmp_path / "broker", port=free_port())  # away until the end
    # Utterances come about 3 s apart, paced in real time: each is older than 2 s when the next comes.
    extra = "outbox_max_age_s = 2.0\n"
    config = write_config(tmp_path / "c.toml", server.port, prefix, file_room(audio, realtime=True), extra=extra)
    daemon = Daemon(config)
    try:
        stored = daemon.wait_log("utterance stored", len(texts), timeout_s=120)
        dropped = daemon.events("outbox full or entry too old: utterance dropped")
        assert len(dropped) >= 1
        server.start()
        sub = Subscriber(server.port, f"{prefix}/#", "viewer")
        try:
            assert sub.connected.wait(10)
            # A subscriber that comes after the daemon reconnected would miss what it sent: wait
            # for the daemon's own log instead of the messages.
            published = daemon.wait_log("utterance published", len(stored) - len(dropped), timeout_s=60)
        finally:
            sub.close()
        # Every utterance is accounted for: published, or dropped with an error line.
        assert {e["utterance_id"] for e in published} | {e["utterance_id"] for e in dropped} == {
            e["utterance_id"] for e in stored
        }
        assert not {e["utterance_id"] for e in published} & {e["utterance_id"] for e in dropped}
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        server.stop()


def test_a_crash_while_the_stitcher_holds_a_piece_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL after recognition, before the utterance is stored (the stitcher holds the
    piece, here for 10 s: the room, paced in real time, goes on hearing silence after it):
    the journal has it, and the next start publishes it."""
    import time

    audio = tmp_path / "room.wav"
    spoken = speech_file(audio, TEXTS[:1])
    voice, _ = sf.read(audio, dtype="float32")
    sf.write(audio, np.concatenate([voice, np.zeros(16000 * 20, np.float32)]), 16000)
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000 * 3, dtype=np.float32), 16000)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    server = Mosquitto(tmp_path / "broker", port=free_port())
    server.start()
    hold = "[stitch]\ncomplete_wait_ms = 10000\nmax_gap_ms = 10000\nmax_hold_ms = 20000\n"
    config = write_config(tmp_path / "c.toml", server.port, prefix, file_room(audio, realtime=True), extra=hold)
    daemon = Daemon(config)
    database = tmp_path / "state" / "outbox.sqlite3"

    try:
        recognized = daemon.wait_log("utterance recognized", 1, timeout_s=120)
        deadline = time.monotonic() + 10
        while not journal_ids(database) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the journal's table, not waiting for luck
        assert journal_ids(database) == [recognized[0]["utterance_id"]]
        assert not daemon.events("utterance stored")  # still held by the stitcher
        daemon.proc.kill()
        daemon.proc.wait()
    finally:
        daemon.kill()
    sub = Subscriber(server.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    write_config(tmp_path / "c.toml", server.port, prefix, file_room(silence, realtime=False))
    daemon = Daemon(config)
    try:
        records = check_utterances(sub.wait_for("/kitchen/utterance", 1, timeout_s=120), spoken)
        assert records[0]["id"] == recognized[0]["utterance_id"] and records[0]["delayed"] is True
        daemon.wait_log("utterance published", 1)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
        server.stop()
    assert journal_ids(database) == []  # stored, so settled: a third start replays nothing


def test_a_text_recognized_ahead_of_the_endpoint_is_the_one_published(tmp_path: Path, broker: Mosquitto) -> None:
    # Each sentence's last voiced sample falls 200 ms into a 500 ms frame (a real-time file
    # is framed from its first sample), so the VAD sees 160 ms of silence one frame before the
    # endpoint: 400 ms in the kitchen (the stitcher's), the 700 ms hangover in the hall (no
    # stitcher). Both rooms recognize the piece ahead, and that text is what is published.
    # 4 s apart, so the model is free again before each sentence's speculations come (one
    # still waiting when its finished piece arrives is dropped, not recognized twice); the
    # first may meet the model still loading.
    texts = ["Please turn on the kitchen lights.", "Open the garage door please.", "What is the weather like today?",
             "Set a timer for ten minutes."]  # fmt: skip
    parts = [np.zeros(8000, np.float32)]
    for text in texts:
        voice = speak(text)
        last = int(np.flatnonzero(np.abs(voice) > 0.02 * np.abs(voice).max())[-1])
        length = sum(len(p) for p in parts)
        lead = (-(length + last) + 3200) % 8000  # last voiced sample at 200 ms into a frame
        parts += [np.zeros(lead, np.float32), voice, np.zeros(64000, np.float32)]
    sf.write(tmp_path / "room.wav", np.concatenate(parts), 16000)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = file_room(tmp_path / "room.wav", realtime=True) + file_room(tmp_path / "room.wav", True, "hall")
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms + "stitch = false\n")
    sub = Subscriber(broker.port, f"{prefix}/+/utterance", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        daemon.wait_log("room idle", 2, timeout_s=120)
        sub.wait_for("/utterance", 8, timeout_s=60)
        assert daemon.terminate() == 0
        stood = [e for e in daemon.events("utterance recognized") if e.get("speculated")]
        for room in ("kitchen", "hall"):
            records = {r["id"]: r for r in (json.loads(p) for p in sub.payloads(f"/{room}/utterance"))}
            assert wer(texts, [r["text"] for r in sorted(records.values(), key=lambda r: r["start"])]) <= WER_BOUND
            mine = [e for e in stood if e["room"] == room]
            assert len(mine) >= 3, room
            for entry in mine:
                assert records[str(entry["utterance_id"])]["raw_text"] == entry["text"]
    finally:
        daemon.kill()
        sub.close()
