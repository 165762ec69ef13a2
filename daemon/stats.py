"""The daemon's counters and gauges: one snapshot, published on ``<prefix>/stats`` every
``daemon.stats_interval_s`` and served as Prometheus text on 127.0.0.1 when
``daemon.metrics_port`` is set."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return {"p50": None, "p95": None, "max": None}
    p50, p95 = np.percentile(data, [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "max": round(float(data.max()), 1)}


def process_usage() -> dict[str, int]:
    process = psutil.Process()
    with process.oneshot():
        return {
            "rss_bytes": process.memory_info().rss,
            "open_fds": process.num_fds(),
            "threads": process.num_threads(),
        }


def gpu_memory() -> dict[str, int] | None:
    """Allocated and reserved CUDA memory when torch is using a GPU in this process."""
    import sys

    torch = sys.modules.get("torch")
    # Another thread may be importing torch right now (the VAD's or the model's, on their
    # first use): a module still initializing is in sys.modules without its attributes,
    # and reading torch.cuda then crashed a daemon's first status snapshot.
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_available() or not cuda.is_initialized():
        return None
    return {"allocated_bytes": cuda.memory_allocated(), "reserved_bytes": cuda.memory_reserved()}


# Snapshot key -> (Prometheus name, help, counter?) for the flat numbers worth scraping.
METRICS: dict[str, tuple[str, str, bool]] = {
    "utterances": ("roomscribe_utterances", "Finished utterances recognized", True),
    "audio_seconds": ("roomscribe_audio_seconds", "Seconds of speech recognized", True),
    "published": ("roomscribe_published", "Messages the broker acknowledged", True),
    "dropped": ("roomscribe_dropped", "Messages dropped (queue or outbox full, too old)", True),
    "dropped_frames": ("roomscribe_dropped_frames", "Audio frames dropped because the VAD was behind", True),
    "outbox": ("roomscribe_outbox_entries", "Utterances on disk waiting for the broker", False),
    "outbox_memory_only": ("roomscribe_outbox_memory_only", "Utterances kept in memory: the outbox was degraded", True),
    "mqtt_connected": ("roomscribe_mqtt_connected", "1 while connected to the broker", False),
    "rss_bytes": ("roomscribe_resident_memory_bytes", "Resident memory", False),
    "open_fds": ("roomscribe_open_fds", "Open file descriptors", False),
    "threads": ("roomscribe_threads", "Threads", False),
}


class SnapshotCollector(Collector):
    """Serves the latest snapshot (made on the event loop) to Prometheus' HTTP thread."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        for key, (name, doc, counter) in METRICS.items():
            if s.get(key) is None:
                continue
            family = CounterMetricFamily(name, doc) if counter else GaugeMetricFamily(name, doc)
            family.add_metric([], float(s[key]))
            yield family
        if "outbox" in s:
            degraded = 1.0 if s.get("outbox_degraded") else 0.0
            yield GaugeMetricFamily("roomscribe_outbox_degraded", "1 while the outbox refuses writes", value=degraded)
        queues = GaugeMetricFamily("roomscribe_queue_depth", "Items waiting per queue", labels=["queue"])
        for queue, depth in s.get("queues", {}).items():
            queues.add_metric([queue], float(depth))
        yield queues
        latency = GaugeMetricFamily(
            "roomscribe_recognize_latency_ms", "Recognizer call time, latest 1000 calls", labels=["quantile"]
        )
        for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
            if (value := s["recognize_ms"].get(key)) is not None:
                latency.add_metric([quantile], float(value))
        yield latency
        rooms = CounterMetricFamily("roomscribe_room_utterances", "Utterances cut per room", labels=["room"])
        for room, counters in s.get("rooms", {}).items():
            rooms.add_metric([room], float(counters["utterances"]))
        yield rooms
        if s.get("gpu") is not None:
            gpu = GaugeMetricFamily("roomscribe_gpu_memory_bytes", "CUDA memory", labels=["kind"])
            for kind in ("allocated", "reserved"):
                gpu.add_metric([kind], float(s["gpu"][f"{kind}_bytes"]))
            yield gpu


def serve_metrics(port: int, snapshot: Callable[[], dict[str, Any]]) -> Callable[[], None]:
    """Prometheus text on http://127.0.0.1:<port>/metrics (loopback only: no exposure beyond
    the machine); returns a function that stops the server."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
