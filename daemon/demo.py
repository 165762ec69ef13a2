"""``roomscribe demo``: the whole daemon with nothing to set up.

Starts an in-process MQTT broker (amqtt) on a free loopback port unless ``--config`` names
a broker, plays the bundled sample through the pipeline in real time (or listens to the
default microphone with ``--mic``), and prints each utterance as a subscriber receives it.
The HTTP server is on (port 8765 when free), so the caption page shows the same live.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt

from daemon.app import App
from daemon.config import Config
from daemon.config_file import ConfigError, load_config
from daemon.errors import EXIT_CONFIG_ERROR, EXIT_STARTUP_FAILURE, StartupError
from daemon.logs import setup_logging

# After the daemon stops, how long the viewer may take to receive the last utterances.
VIEWER_GRACE_S = 5.0


# The Chinese demo: four AISHELL-1 recordings (Apache-2.0, daemon/assets/README.md) on the
# multilingual model, with a hotword that the recognizer writes as a homophone (伙报 -> 火爆).
ZH_MODEL = "bundled:base"
ZH_HOTWORDS = ["火爆"]


def demo_sample(language: str = "en") -> Path:
    name = "demo-zh.flac" if language == "zh" else "demo.flac"
    return Path(str(resources.files("daemon") / "assets" / name))


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free on loopback, else one the system picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def caption_url(config: Config) -> str:
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    return f"http://{host}:{config.http.port}/" + ("?token=<your token>" if config.http.token_file else "")


def demo_config(base: Config | None, mic: bool, port: int | None, language: str = "en") -> Config:
    data: dict[str, Any] = base.model_dump() if base else {}
    data.setdefault("daemon", {})["log_level"] = "warning"
    if port is not None:
        # The embedded broker (amqtt) speaks MQTT 3.1.1 only.
        mqtt = {"host": "127.0.0.1", "port": port, "client_id": "roomscribe-demo", "protocol": "3.1.1"}
        data["mqtt"] = {**data.get("mqtt", {}), **mqtt}
    sample = str(demo_sample(language))
    source: dict[str, Any] = (
        {"type": "mic", "device": "default"} if mic else {"type": "file", "path": sample, "realtime": True}
    )
    room: dict[str, Any] = {"name": "demo", "source": source}
    if language == "zh":
        room |= {"language": "zh", "hotwords": ZH_HOTWORDS}
        recognizer = data.setdefault("recognizer", {})
        default = Config().recognizer.model
        if recognizer.get("model", default) == default:
            recognizer["model"] = ZH_MODEL  # an English-only default cannot write Chinese
    data["rooms"] = [room]
    # The caption page shows the demo live; a config that has the server on keeps its own.
    if not data.get("http", {}).get("enabled"):
        data["http"] = {**data.get("http", {}), "enabled": True, "host": "127.0.0.1", "port": free_port(8765)}
    return Config.model_validate(data)


async def _start_broker(port: int) -> Any:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    return broker


async def _print_utterances(config: Config, received: list[dict[str, Any]], ready: asyncio.Event) -> None:
    prefix = config.mqtt.prefix
    while True:
        try:
            async with aiomqtt.Client(
                config.mqtt.host, config.mqtt.port, identifier="roomscribe-demo-viewer"
            ) as client:
                await client.subscribe(f"{prefix}/+/utterance", qos=1)
                ready.set()
                async for message in client.messages:
                    payload = json.loads(bytes(message.payload))
                    received.append(payload)
                    delay = payload["latency_ms"].get("end_to_publish", "?")
                    print(
                        f"[{payload['room']}] {payload['text']}   ({payload['duration_s']:.1f} s, {delay} ms)",
                        flush=True,
                    )
                    if payload["raw_text"].strip() != payload["text"]:  # what the text stage changed
                        print(f"    recognized: {payload['raw_text'].strip()}", flush=True)
        except aiomqtt.MqttError:
            await asyncio.sleep(1.0)


async def _demo(config: Config, embedded: bool, mic: bool, language: str) -> int:
    broker = await _start_broker(config.mqtt.port) if embedded else None
    received: list[dict[str, Any]] = []
    ready = asyncio.Event()
    viewer = asyncio.create_task(_print_utterances(config, received, ready))
    app = App(config, Path.cwd())
    app.install_signal_handlers()
    where = "the default microphone (Ctrl-C to stop)" if mic else f"the sample {demo_sample(language).name}"
    broker_name = "embedded broker" if embedded else "broker"
    print(f"roomscribe demo: {where}, {broker_name} at {config.mqtt.host}:{config.mqtt.port}", flush=True)
    print(f"roomscribe demo: live captions at {caption_url(config)}", flush=True)
    await asyncio.wait_for(ready.wait(), timeout=15)

    async def stop_when_done() -> None:
        # The sample is over: stopping drains the pipeline and publishes everything cut.
        await app.rooms_idle.wait()
        app.request_stop("sample finished")

    stopper = asyncio.create_task(stop_when_done())
    started = time.monotonic()
    try:
        code = await app.run()
        # Everything is acknowledged by the broker; give the viewer a moment to print it.
        deadline = time.monotonic() + VIEWER_GRACE_S
        while len(received) < app.rt.publisher.counters.published and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stopper.cancel()
        viewer.cancel()
        if broker is not None:
            await broker.shutdown()
    print(f"roomscribe demo: {len(received)} utterance(s) in {time.monotonic() - started:.1f} s", flush=True)
    return code if received or mic else 1


def demo_main(args: argparse.Namespace) -> int:
    base = None
    if args.config:
        try:
            base = load_config(args.config)
        except ConfigError as exc:
            exc.report()
            return EXIT_CONFIG_ERROR
    embedded = base is None
    config = demo_config(base, args.mic, free_port() if embedded else None, args.language)
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    try:
        return asyncio.run(_demo(config, embedded, args.mic, args.language))
    except StartupError as exc:
        print(f"roomscribe demo: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE
