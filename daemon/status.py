"""What the daemon says about itself: the ``status`` command's answer, the stats payload
(docs/mqtt.md, schema stats; also Prometheus) and systemd's STATUS= line. Each reads the
runtime and the counters of the parts that keep them, and changes nothing."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from daemon.runtime import Runtime
from daemon.stats import gpu_memory, percentiles, process_usage
from pipeline.messages import iso_utc
from pipeline.sources import Reconnecting


def status(rt: Runtime, parts: dict[str, Any]) -> dict[str, Any]:
    """The ``status`` command's result; ``parts`` adds the daemon parts' own counters
    (commands, jobs, integrations)."""
    r, p = rt.recognizer, rt.pipeline
    return {
        "model": r.name if r else None,
        "device": r.device if r else None,
        "dtype": r.dtype if r else None,
        "capabilities": dataclasses.asdict(r.capabilities) if r else None,
        "queues": rt.queue_depths(),
        "rooms": {
            room.name: {
                **dataclasses.asdict(room.counters),
                "paused": room.state.paused,
                "language": room.state.language,
            }
            for room in rt.rooms
        },
        "recognize": (
            {k: v for k, v in p.recognize.counters_dict().items() if k not in ("batch_sizes", "latencies_ms")}
            if p
            else None
        ),
        "text": p.text.counters_dict() if p else None,
        "published": rt.publisher.counters.published,
        "dropped": rt.publisher.counters.dropped,
        "mqtt": dataclasses.asdict(rt.publisher.counters),
        "stitched": p.stitch.counters.joined if p and p.stitch else 0,
        "stitch": dataclasses.asdict(p.stitch.counters) if p and p.stitch else None,
        "hotwords": {
            "global": list(rt.states.hotwords),
            "rooms": {name: list(rt.states.rooms[name].hotwords) for name in rt.states.names()},
        },
        **parts,
    }


def snapshot(rt: Runtime, bad_audio_frames: int = 0) -> dict[str, Any]:
    """The stats payload."""
    counters = rt.pipeline.recognize.counters if rt.pipeline else None
    batch_sizes = list(counters.batch_sizes) if counters else []
    rooms = {
        room.name: {
            "state": room.counters.state,
            "utterances": room.counters.utterances,
            "dropped_frames": room.counters.dropped_frames,
            "source_losses": room.source.losses if isinstance(room.source, Reconnecting) else 0,
            "overflows": room.source.overflows,
        }
        for room in rt.rooms
    }
    durable = rt.publisher.durable
    return {
        "time": iso_utc(time.time()),
        "uptime_s": round(time.monotonic() - rt.started_at, 1),
        "utterances": counters.utterances if counters else 0,
        "audio_seconds": round(counters.audio_seconds, 1) if counters else 0.0,
        "dropped_frames": sum(r["dropped_frames"] for r in rooms.values()),
        "published": rt.publisher.counters.published,
        "dropped": rt.publisher.counters.dropped,
        "outbox": len(durable) if durable is not None else 0,
        # Why the disk refuses writes (utterances then wait in memory only), or null.
        "outbox_degraded": durable.degraded if durable is not None else None,
        "outbox_memory_only": durable.memory_only if durable is not None else 0,
        "waited_on_disk": rt.publisher.counters.waited_on_disk,
        "mqtt_connected": int(rt.publisher.connected.is_set()),
        "queues": rt.queue_depths(),
        "recognize_ms": percentiles(counters.latencies_ms if counters else []),
        "batch_size": {
            "mean": round(sum(batch_sizes) / len(batch_sizes), 2) if batch_sizes else None,
            "max": max(batch_sizes, default=None),
        },
        # Pieces recognized ahead of their endpoint: how many, whose text stood, spent in vain.
        "speculative": {
            "made": counters.speculative if counters else 0,
            "used": counters.speculative_used if counters else 0,
            "wasted": counters.speculative_wasted if counters else 0,
        },
        "stalled": sorted(rt.stalled),
        "bad_audio_frames": bad_audio_frames,
        "rooms": rooms,
        **process_usage(),
        "gpu": gpu_memory(),
    }


def status_line(rt: Runtime) -> str:
    """systemd's STATUS=: what `systemctl status` shows."""
    utterances = rt.pipeline.recognize.counters.utterances if rt.pipeline else 0
    depths = rt.queue_depths()
    queued = sum(depths.values()) - depths["mqtt_pending"]  # the pipeline's own queues
    broker = "connected" if rt.publisher.connected.is_set() else "broker unreachable"
    stalled = f", STALLED: {', '.join(rt.stalled)}" if rt.stalled else ""
    durable = rt.publisher.durable
    if durable is not None and durable.degraded is not None:
        stalled += ", OUTBOX DEGRADED (utterances in memory only)"
    rooms = f"{len(rt.rooms)} room" + ("s" if len(rt.rooms) != 1 else "")
    return f"{rooms}, {utterances} utterances, queue {queued}, MQTT {broker}{stalled}"
