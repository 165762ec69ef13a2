"""The publisher with the durable outbox against a local Mosquitto: messages per second, and
what the outbox costs per utterance.

    python bench/mqtt.py [--messages 2000]

Submits utterance-sized JSON messages (QoS 1, each written to the outbox first and removed
on PUBACK) as fast as the publisher takes them, with and without the outbox, and times the
outbox's own add + remove. Prints a table and writes bench/results/mqtt-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from daemon.config_mqtt import MqttSettings
from daemon.mqtt import Publisher
from daemon.outbox import Outbox
from daemon.outgoing import Outgoing
from tests.helpers import Mosquitto

PAYLOAD = {
    "id": "kitchen-t5k3bq-000042",
    "room": "kitchen",
    "text": "Please turn on the kitchen lights and set the heating to twenty one degrees.",
    "raw_text": "Please turn on the kitchen lights and set the heating to twenty one degrees.",
    "language": "en",
    "start": "2026-11-26T08:15:02.120Z",
    "end": "2026-11-26T08:15:05.480Z",
    "duration_s": 3.36,
    "confidence": 0.88,
    "parts": 1,
    "raw_parts": ["Please turn on the kitchen lights and set the heating to twenty one degrees."],
    "latency_ms": {"recognize": 180},
    "model": "whisper-tiny.en",
}


async def throughput(port: int, messages: int, outbox: Outbox | None) -> float:
    settings = MqttSettings(host="127.0.0.1", port=port, prefix=f"bench-{uuid.uuid4().hex[:6]}", max_pending=messages)
    publisher = Publisher(settings, outbox)
    task = asyncio.create_task(publisher.run())
    await asyncio.wait_for(publisher.connected.wait(), 10)
    started = time.perf_counter()
    payload = publisher.encode(PAYLOAD)
    for i in range(messages):
        # As the publish stage does: stored first (on the outbox's thread), then queued.
        message = Outgoing(publisher.topic("kitchen", "utterance"), payload, utterance_id=f"k-{i}", room="kitchen")
        await publisher.submit_durable(message)
    await publisher.finish()
    elapsed = time.perf_counter() - started
    await task
    assert publisher.counters.published >= messages
    return messages / elapsed


def outbox_cost_us(folder: Path, n: int) -> list[float]:
    box = Outbox(folder / "cost.sqlite3")
    payload = json.dumps(PAYLOAD)
    times = []
    for i in range(n):
        t = time.perf_counter()
        seq, _ = box.add("p/kitchen/utterance", payload, f"k-{i}", "kitchen")
        box.remove(seq)
        times.append((time.perf_counter() - t) * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        try:
            for label, outbox in (("publisher, no outbox", None), ("publisher + outbox", Outbox(work / "o.sqlite3"))):
                rate = asyncio.run(throughput(broker.port, args.messages, outbox))
                rows.append({"run": label, "messages": args.messages, "msgs_per_s": round(rate)})
        finally:
            broker.stop()
        times = outbox_cost_us(work, 500)
        rows.append(
            {
                "run": "outbox add + remove (synchronous=FULL)",
                "messages": len(times),
                "median_us": round(statistics.median(times)),
                "p95_us": round(sorted(times)[int(0.95 * len(times))]),
            }
        )
    write_results("mqtt", rows)


if __name__ == "__main__":
    main()
