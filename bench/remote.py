"""Recognition through the broker (``roomscribe worker``) against the same model in-process.

    python bench/remote.py [--utterances 40] [--seed 22]

Utterances: sentences drawn with ``seed`` from bench/stitch_pool.py's pool (Home Assistant's
commands), spoken by espeak-ng. One real Mosquitto on loopback, workers as subprocesses.

1. Payload: bytes of a job (JSON header + 16-bit FLAC) per second of speech.
2. Throughput: every utterance sent at once to one worker, jobs per second until the last
   answer; against the local model decoding the same utterances in batches of
   recognizer.max_batch, in this process.
3. Added latency: one utterance at a time, job sent -> answer, against one local
   ``recognize`` call on the same utterance; alternating, so drift hits both alike.
4. Recovery: a daemon with two workers and ``remote.deadline_s = 3``; the worker that takes
   the first job is killed with SIGKILL at once; the time that utterance took to recognize
   (the daemon's recognize_ms) is the recovery time.

Writes bench/results/remote-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from bench.stitch_pool import commands
from daemon.remote_wire import JobHeader, encode_job
from tests.helpers import Daemon, Mosquitto, Mqtt5Client, speak, speech_with_pauses, write_config
from tests.test_remote import results

RATE = 16000


def utterances(n: int, seed: int) -> list[np.ndarray]:
    pool = commands()
    random.Random(seed).shuffle(pool)
    return [speak(text) for text in pool[:n]]


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def timed_jobs(requester: Mqtt5Client, topic: str, audios: list[np.ndarray], tag: str) -> tuple[float, list[float]]:
    """Send every job at once; (seconds until the last answer, each job's seconds)."""
    before = len(requester.messages)
    reply_to = requester.topics[0]
    sent: dict[str, float] = {}
    for i, audio in enumerate(audios):
        job_id = f"{tag}-{i}"
        sent[job_id] = time.perf_counter()
        requester.request(topic, encode_job(JobHeader(id=job_id), audio), reply_to, job_id.encode())
    got = results(requester, before + len(audios))[before:]
    arrived = requester.arrivals[before:]
    ids = [str(r["id"]) for r in got]
    each = [t - sent[i] for i, t in zip(ids, arrived, strict=True)]
    return max(arrived) - min(sent.values()), each


def local_model() -> Any:
    from daemon.config import Config
    from daemon.wiring import load_recognizer_in_thread

    return load_recognizer_in_thread(Config())


def throughput_and_latency(port: int, prefix: str, audios: list[np.ndarray]) -> list[dict[str, Any]]:
    requester = Mqtt5Client(port, [f"{prefix}/results/bench"])
    topic = f"{prefix}/jobs/live"
    model = local_model()
    try:
        timed_jobs(requester, topic, audios[:2], "warm")
        model.recognize(audios[:2])
        remote_s, _ = timed_jobs(requester, topic, audios, "all")
        started = time.perf_counter()
        batch = model.capabilities.max_batch
        for i in range(0, len(audios), batch):
            model.recognize(audios[i : i + batch])
        local_s = time.perf_counter() - started
        remote_each, local_each = [], []
        for i, audio in enumerate(audios[:20]):
            for side in ("remote", "local") if i % 2 == 0 else ("local", "remote"):
                if side == "remote":
                    remote_each += timed_jobs(requester, topic, [audio], f"one{i}")[1]
                else:
                    started = time.perf_counter()
                    model.recognize([audio])
                    local_each.append(time.perf_counter() - started)
    finally:
        requester.close()
    added = [r - loc for r, loc in zip(remote_each, local_each, strict=True)]
    return [
        {"figure": "throughput", "remote": f"{len(audios) / remote_s:.2f} jobs/s",
         "local": f"{len(audios) / local_s:.2f} utt/s", "ratio": round(local_s / remote_s, 2)},
        {"figure": "latency one utterance (median ms)", "remote": round(statistics.median(remote_each) * 1000),
         "local": round(statistics.median(local_each) * 1000),
         "added_median_ms": round(statistics.median(added) * 1000), "added_p95_ms": round(p95(added) * 1000)},
    ]  # fmt: skip


def recovery(folder: Path, port: int, prefix: str) -> dict[str, Any]:
    config = write_config(folder / "w.toml", port, prefix, "")
    workers = [Daemon(config, command=("worker", "--id", f"r{n}")) for n in range(2)]
    audio, _ = speech_with_pauses(["Please turn on the kitchen lights.", "Set a timer for ten minutes."], 1.5)
    sf.write(folder / "room.wav", audio, RATE)
    room = f'[[rooms]]\nname = "r"\nsource = {{ type = "file", path = "{folder}/room.wav" }}\n'
    extra = "[remote]\nenabled = true\ndeadline_s = 3\nwait_for_worker_s = 30\n[stitch]\nenabled = false\n"
    daemon = None
    try:
        for w in workers:
            w.wait_log("worker ready", timeout_s=120)
        daemon = Daemon(write_config(folder / "d.toml", port, prefix, room, extra))
        first = next(iter(_first_to_start(workers)))
        first.proc.kill()
        recognized = daemon.wait_log("utterance recognized", timeout_s=120)[0]
        assert daemon.terminate() == 0
        return {"figure": "recovery from a killed worker", "remote": f"{recognized['recognize_ms']} ms",
                "local": "deadline_s = 3"}  # fmt: skip
    finally:
        for node in (daemon, *workers):
            if node is not None:
                node.kill()


def _first_to_start(workers: list[Daemon]) -> list[Daemon]:
    """The worker that logs a started batch first."""
    while True:
        for w in workers:
            if w.events("worker batch started"):
                return [w]
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--seed", type=int, default=22)
    args = parser.parse_args()
    audios = utterances(args.utterances, args.seed)
    payload = sum(len(encode_job(JobHeader(id="x"), a)) for a in audios) / (sum(len(a) for a in audios) / RATE)
    rows: list[dict[str, Any]] = [{"figure": "job payload", "remote": f"{payload / 1000:.1f} kB per s of speech",
                                   "local": f"{RATE * 2 / 1000:.1f} kB/s raw 16-bit PCM"}]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker")
        broker.start()
        prefix = f"rs-{uuid.uuid4().hex[:8]}"
        worker = Daemon(write_config(folder / "one.toml", broker.port, prefix, ""), command=("worker", "--id", "b1"))
        try:
            worker.wait_log("worker ready", timeout_s=120)
            rows += throughput_and_latency(broker.port, prefix, audios)
        finally:
            worker.terminate()
        rows.append(recovery(folder, broker.port, f"{prefix}-rec"))
        broker.stop()
    write_results("remote", rows, {"seed": args.seed, "utterances": len(audios)})


if __name__ == "__main__":
    main()
