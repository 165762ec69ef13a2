"""Recognition by workers through the broker: the job format, and real workers
(``roomscribe worker``) with a real daemon and a real Mosquitto: shared work, a worker killed
with SIGKILL, a worker restarted, the broker restarted, no worker at all, bad jobs."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon.outgoing import Outgoing
from daemon.remote import RemoteRecognizer
from daemon.remote_wire import (
    MAX_JOB_BYTES,
    JobError,
    JobHeader,
    decode_job,
    decode_result,
    encode_job,
    encode_result,
)
from models.api import Recognition
from tests.helpers import (
    Daemon,
    Mosquitto,
    Mqtt5Client,
    Subscriber,
    normalize,
    speak,
    speech_with_pauses,
    wer,
    write_config,
)

SENTENCES = [
    "Please turn on the kitchen lights.",
    "What is the weather like today?",
    "Set a timer for ten minutes.",
    "Open the garage door please.",
    "Play some music in the living room.",
    "Turn off the bedroom fan.",
]


def test_a_job_goes_there_and_back() -> None:
    audio = speak("Hello there.")
    header = JobHeader(id="j1", language="en", prompt="Earlier.", hotwords=["Kubernetes"], sentence_end="Hello")
    job = decode_job(encode_job(header, audio))
    assert job.header == header
    assert np.abs(job.audio - audio).max() < 1e-3  # 16-bit FLAC
    recognition = Recognition("Hello there.", "en", -0.2, 0.01, 0.9, 4, False, segments=((0.0, 1.0, "Hello"),))
    assert decode_result(encode_result("j1", "w1", recognition)) == ("j1", "w1", recognition, None)
    assert decode_result(encode_result("j1", "w1", None, "no")) == ("j1", "w1", None, "no")


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"no newline at all", "no header line"),
        (b"{not json\n", "bad header"),
        (b'{"id": "x", "colour": "red"}\n', "colour: Extra inputs"),
        (b'{"id": "x", "language": "English"}\n', "language"),
        (b'{"id": "x"}\nthis is not FLAC', "unreadable audio"),
        (b'{"id": "x"}\n' + b"\0" * (MAX_JOB_BYTES + 1), "byte limit"),
    ],
)
def test_a_bad_job_is_refused_with_the_reason(payload: bytes, says: str) -> None:
    with pytest.raises(JobError, match=says):
        decode_job(payload)


def worker(config: Path, name: str) -> Daemon:
    return Daemon(config, command=("worker", "--id", name))


def room_files(folder: Path, rooms: int, sentences: list[str]) -> str:
    """``rooms`` file rooms, each the sentences in its own order, played in real time."""
    out = ""
    for r in range(rooms):
        order = sentences[r:] + sentences[:r]
        audio, _ = speech_with_pauses(order, pause_s=1.5)
        sf.write(folder / f"room{r}.wav", audio, 16000)
        out += f'[[rooms]]\nname = "room{r}"\nsource = {{ type = "file", path = "{folder}/room{r}.wav" }}\n'
    return out


def remote(wait_s: float = 30, fallback: bool = False) -> str:
    # Stitching off: one utterance per sentence, so "each exactly once" can be counted.
    return (
        f"[remote]\nenabled = true\ndeadline_s = 3\nwait_for_worker_s = {wait_s}\n"
        f"fallback_local = {str(fallback).lower()}\n[stitch]\nenabled = false\n"
    )


def wait_unique(sub: Subscriber, count: int, timeout_s: float = 180) -> None:
    """Until ``count`` different utterances have arrived (a QoS 1 repeat does not count)."""
    wanted = count
    while True:
        got = sub.wait_for("/utterance", wanted, timeout_s=timeout_s)
        unique = len({json.loads(p)["id"] for p in got})
        if unique >= count:
            return
        wanted = len(got) + count - unique


def published(sub: Subscriber) -> list[dict[str, object]]:
    return [json.loads(p) for p in sub.payloads("/utterance")]


def check_rooms(records: list[dict[str, object]], rooms: int, sentences: list[str]) -> None:
    """Each room's sentences once, in order, recognized. QoS 1 is at least once (a broker
    that restarts before its PUBACK arrives gets the utterance again, docs/mqtt.md): a repeat
    carries the same id and the same text, and counts once."""
    by_id: dict[object, dict[str, object]] = {}
    for record in records:
        first = by_id.setdefault(record["id"], record)
        assert first["text"] == record["text"], "an utterance was published twice with different text"
    records = list(by_id.values())
    for r in range(rooms):
        mine = [x for x in records if x["room"] == f"room{r}"]
        order = sentences[r:] + sentences[:r]
        assert len(mine) == len(order), [x["text"] for x in mine]
        assert [x["start"] for x in mine] == sorted(str(x["start"]) for x in mine)
        assert wer([normalize(s) for s in order], [normalize(str(x["text"])) for x in mine]) <= 0.2


def jobs_of(node: Daemon, event: str) -> list[str]:
    return [job for entry in node.events(event) for job in entry["jobs"]]  # type: ignore[attr-defined]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.mark.slow
def test_two_workers_a_killed_one_and_a_restarted_one(tmp_path: Path, broker: Mosquitto) -> None:
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    node_config = write_config(tmp_path / "w.toml", broker.port, prefix, "")
    w1, w2 = worker(node_config, "w1"), worker(node_config, "w2")
    sub = Subscriber(broker.port, f"{prefix}/+/utterance", f"{prefix}-sub")
    daemon = None
    try:
        for w in (w1, w2):
            w.wait_log("worker ready", timeout_s=120)
        rooms = room_files(tmp_path, 3, SENTENCES)
        daemon = Daemon(write_config(tmp_path / "d.toml", broker.port, prefix, rooms, remote()))
        # w1 dies holding a job: after it started a batch, before it could answer.
        w1.wait_log("worker batch started", timeout_s=120)
        w1.proc.kill()
        w1.kill()
        held = set(jobs_of(w1, "worker batch started")) - set(jobs_of(w1, "worker batch answered"))
        w1_again = worker(node_config, "w1")
        try:
            w1_again.wait_log("worker ready", timeout_s=120)
            wait_unique(sub, 3 * len(SENTENCES))
            assert daemon.terminate() == 0
            done = set(jobs_of(w2, "worker batch answered")) | set(jobs_of(w1_again, "worker batch answered"))
            assert held <= done, "a job the killed worker held was not redone"
            if held:
                assert daemon.events("remote: job not answered in time; sending it again")
            assert jobs_of(w1_again, "worker batch answered"), "the restarted worker took no work"
        finally:
            w1_again.kill()
        check_rooms(published(sub), 3, SENTENCES)
        assert all(str(r["model"]).startswith("remote:") for r in published(sub))
    finally:
        for node in (daemon, w1, w2):
            if node is not None:
                node.kill()
        sub.close()


@pytest.mark.slow
def test_no_worker_then_one_then_the_broker_restarts(tmp_path: Path, broker: Mosquitto) -> None:
    """With no worker the room's state says so and its utterances wait; a worker comes and
    they are published; the broker restarts mid-stream and nothing is lost."""
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = room_files(tmp_path, 1, SENTENCES)
    states = Subscriber(broker.port, f"{prefix}/+/state", f"{prefix}-states")
    sub = Subscriber(broker.port, f"{prefix}/+/utterance", f"{prefix}-sub", persistent=True)
    extra = remote(wait_s=1)
    daemon = Daemon(write_config(tmp_path / "d.toml", broker.port, prefix, rooms, extra))
    node = None
    try:
        daemon.wait_log("utterance cut", timeout_s=120)
        waiting = [json.loads(p) for p in states.wait_for("/room0/state", 1, timeout_s=30)]
        assert waiting[-1]["workers_online"] == 0
        assert sub.payloads("/utterance") == []
        node = worker(write_config(tmp_path / "w.toml", broker.port, prefix, ""), "w1")
        sub.wait_for("/utterance", 2, timeout_s=120)
        broker.stop()
        broker.start()
        wait_unique(sub, len(SENTENCES))
        assert daemon.terminate() == 0
        check_rooms(published(sub), 1, SENTENCES)
        assert any(json.loads(p).get("workers_online") == 1 for p in states.payloads("/room0/state"))
    finally:
        for n in (daemon, node):
            if n is not None:
                n.kill()
        sub.close()
        states.close()


def results(client: Mqtt5Client, count: int) -> list[dict[str, object]]:
    """The first ``count`` results a requester got (waiting for them)."""

    def bodies() -> list[dict[str, object]]:
        return [body for _, body, _ in client.messages]

    return client.wait(bodies, count, "results")


@pytest.mark.slow
def test_a_worker_refuses_bad_jobs_and_answers_a_repeat_from_memory(tmp_path: Path, broker: Mosquitto) -> None:
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    node = worker(write_config(tmp_path / "w.toml", broker.port, prefix, ""), "w1")
    reply_to = f"{prefix}/results/test"
    requester = Mqtt5Client(broker.port, [reply_to])
    try:
        node.wait_log("worker ready", timeout_s=120)
        topic = f"{prefix}/jobs/live"
        bad = [b"garbage", b'{"id": "b2"}\nnot audio', b'{"id": "b3"}\n' + b"\0" * (MAX_JOB_BYTES + 10)]
        for n, payload in enumerate(bad):
            requester.request(topic, payload, reply_to, f"bad{n}".encode())
        good = encode_job(JobHeader(id="g1"), speak(SENTENCES[2]))
        requester.request(topic, good, reply_to, b"g1")
        requester.request(topic, good, reply_to, b"g1")  # sent again: answered from memory
        got = results(requester, 5)
        errors = {str(r["id"]): str(r["error"]) for r in got if "error" in r}
        assert "no header line" in errors["bad0"]
        assert "unreadable audio" in errors["b2"] and "byte limit" in errors["b3"]
        answers = [r for r in got if r["id"] == "g1"]
        assert len(answers) == 2 and answers[0] == answers[1]
        text = str(answers[0]["recognition"]["text"])  # type: ignore[index]
        assert wer([normalize(SENTENCES[2])], [normalize(text)]) <= 0.2
        assert len(node.events("worker batch started")) == 1  # the repeat was not decoded again
    finally:
        requester.close()
        node.kill()


@pytest.mark.slow
def test_with_no_worker_the_local_fallback_recognizes(tmp_path: Path, broker: Mosquitto) -> None:
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    sentences = SENTENCES[:2]
    rooms = room_files(tmp_path, 1, sentences)
    extra = remote(wait_s=1, fallback=True)
    sub = Subscriber(broker.port, f"{prefix}/+/utterance", f"{prefix}-sub")
    daemon = Daemon(write_config(tmp_path / "d.toml", broker.port, prefix, rooms, extra))
    try:
        wait_unique(sub, len(sentences), timeout_s=120)
        assert daemon.terminate() == 0
        check_rooms(published(sub), 1, sentences)
        assert daemon.events("remote: no worker online; recognized here")
    finally:
        daemon.kill()
        sub.close()


class Broker:
    """The publisher's side the remote recognizer uses, recorded; the test answers the jobs."""

    prefix, client_id = "rs", "me"

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.handlers: dict[str, Callable[[str, bytes], None]] = {}
        self.arrived = asyncio.Event()

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None], qos: int = 1) -> None:
        self.handlers[topic] = handler

    def submit(self, message: Outgoing) -> None:
        self.sent.append(message)
        self.arrived.set()

    async def next_job(self, count: int) -> JobHeader:
        while len(self.sent) < count:
            self.arrived.clear()
            await self.arrived.wait()
        return decode_job(self.sent[count - 1].binary or b"").header

    def answer(self, job: JobHeader, text: str | None) -> None:
        recognition = Recognition(text, "en", -0.1, 0.0, 0.9, 3, False) if text is not None else None
        self.handlers["rs/results/me"]("rs/results/me", encode_result(job.id, "w1", recognition, "refused"))


def remote_recognizer(broker: Broker) -> RemoteRecognizer:
    from daemon.config_interfaces import RemoteSettings
    from pipeline.health import BusyWatch

    recognizer = RemoteRecognizer(RemoteSettings(enabled=True, deadline_s=1), broker, BusyWatch())  # type: ignore[arg-type]
    recognizer.loop = asyncio.get_running_loop()
    return recognizer


def test_a_late_job_is_sent_again_with_its_id_and_the_second_answer_is_dropped() -> None:
    async def run() -> None:
        broker = Broker()
        recognizer = remote_recognizer(broker)
        call = asyncio.get_running_loop().run_in_executor(None, recognizer.recognize, [speak("Hello.")])
        first = await broker.next_job(1)
        again = await broker.next_job(2)  # nobody answered within deadline_s
        assert again.id == first.id and broker.sent[1].correlation == first.id.encode()
        broker.answer(first, "Hello.")
        broker.answer(first, "Hello again.")  # the slow worker's answer, after all
        [result] = await call
        assert result.text == "Hello." and recognizer.counters.resent >= 1 and recognizer.counters.late == 1

    asyncio.run(run())


def test_a_job_every_worker_refuses_fails_like_a_local_model_call() -> None:
    async def run() -> None:
        broker = Broker()
        recognizer = remote_recognizer(broker)
        call = asyncio.get_running_loop().run_in_executor(None, recognizer.recognize, [speak("Hello.")])
        for n in range(1, 4):
            broker.answer(await broker.next_job(n), None)
        with pytest.raises(RuntimeError, match="refused 3 times"):
            await call
        assert recognizer.counters.errors == 3

    asyncio.run(run())
