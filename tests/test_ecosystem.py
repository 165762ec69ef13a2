"""Home Assistant discovery and Hermes compatibility: payloads field by field, templates
rendered the way Home Assistant renders them, and the daemon hearing Hermes audio frames
and answering in both dialects through a real Mosquitto."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest
import soundfile as sf
from rhasspyhermes.asr import AsrStartListening, AsrTextCaptured

from daemon.integrations.hermes import (
    START_LISTENING,
    STOP_LISTENING,
    HermesSessions,
    audio_frame_topic,
    decode_audio_frame,
    text_captured,
)
from daemon.integrations.homeassistant import STATE_MAX_CHARS, discovery_messages, node_id
from tests.helpers import Daemon, Mosquitto, Subscriber, check_schema, epoch, normalize, speak, wer, write_config

RECORD: dict[str, Any] = {
    "id": "kitchen-20261126T081502-000001",
    "room": "kitchen",
    "text": "Please turn on the kitchen lights. " * 12,  # 420 characters: over a state's 255
    "raw_text": "please turn on the kitchen lights",
    "language": "en",
    "start": "2026-11-26T08:15:02.120Z",
    "end": "2026-11-26T08:15:04.300Z",
    "duration_s": 2.18,
    "confidence": 0.912,
    "parts": 1,
    "raw_parts": ["please turn on the kitchen lights"],
    "latency_ms": {"recognize": 300},
    "model": "whisper-tiny.en",
}


def render(template: str, payload: str) -> str:
    """As Home Assistant renders an MQTT template: ``value``, and ``value_json`` when it is JSON."""
    try:
        value_json = json.loads(payload)
    except ValueError:
        value_json = None
    return jinja2.Environment().from_string(template).render(value=payload, value_json=value_json)


def test_discovery_gives_one_device_an_event_and_a_sensor_per_room() -> None:
    messages = dict(discovery_messages("homeassistant", "rs", "roomscribe-box.lan", ["kitchen", "office"], "tiny"))
    node = node_id("roomscribe-box.lan")
    assert node == "roomscribe-box_lan"
    assert sorted(messages) == [
        f"homeassistant/event/{node}/kitchen_utterance/config",
        f"homeassistant/event/{node}/office_utterance/config",
        f"homeassistant/sensor/{node}/kitchen_last_text/config",
        f"homeassistant/sensor/{node}/office_last_text/config",
    ]
    devices = {json.dumps(m["device"], sort_keys=True) for m in messages.values()}
    assert len(devices) == 1  # one device for the daemon
    device = messages[f"homeassistant/event/{node}/kitchen_utterance/config"]["device"]
    assert device["identifiers"] == [f"roomscribe_{node}"] and device["model"] == "tiny"
    # Home Assistant's entity ids are <device name>_<entity name>, slugified: the default
    # client id names the device without a doubled "roomscribe".
    entity = f"{device['name']} {event_name(messages, node)}".lower().replace("-", "_").replace(".", "_")
    assert entity.replace(" ", "_") == "roomscribe_box_lan_kitchen_utterance"
    other = dict(discovery_messages("homeassistant", "rs", "attic", ["kitchen"], "tiny"))
    assert next(iter(other.values()))["device"]["name"] == "roomscribe attic"
    assert len({m["unique_id"] for m in messages.values()}) == 4

    event = messages[f"homeassistant/event/{node}/kitchen_utterance/config"]
    assert event["state_topic"] == "rs/kitchen/utterance" and event["event_types"] == ["utterance"]
    fired = json.loads(render(event["value_template"], json.dumps(RECORD)))
    assert fired["event_type"] == "utterance"
    assert {k: fired[k] for k in ("id", "text", "language", "start", "confidence")} == {
        k: RECORD[k] for k in ("id", "text", "language", "start", "confidence")
    }

    sensor = messages[f"homeassistant/sensor/{node}/kitchen_last_text/config"]
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == "rs/kitchen/utterance"
    state = render(sensor["value_template"], json.dumps(RECORD))
    assert len(state) == STATE_MAX_CHARS and RECORD["text"].startswith(state)
    attributes = json.loads(render(sensor["json_attributes_template"], json.dumps(RECORD)))
    assert attributes["text"] == RECORD["text"] and attributes["id"] == RECORD["id"]

    # Available only while the daemon says online: the will's offline and a clean stop's stopped are not.
    (availability,) = event["availability"]
    assert availability["topic"] == "rs/status"
    rendered = [render(availability["value_template"], status) for status in ("online", "offline", "stopped")]
    assert rendered == ["online", "offline", "offline"]


def event_name(messages: dict[str, dict[str, Any]], node: str) -> str:
    return str(messages[f"homeassistant/event/{node}/kitchen_utterance/config"]["name"])


def test_hermes_text_captured_fields() -> None:
    captured = text_captured(RECORD, "kitchen-satellite")
    assert captured == {
        "text": RECORD["text"],
        "likelihood": 0.912,
        "seconds": 2.18,
        "siteId": "kitchen-satellite",
        "sessionId": RECORD["id"],
        "lang": "en",
    }
    check_schema("hermes-text-captured", captured)


def test_hermes_sessions_follow_start_and_stop_listening() -> None:
    sessions = HermesSessions()
    sessions.handle(START_LISTENING, AsrStartListening(site_id="porch", session_id="a").to_json().encode())
    sessions.handle(START_LISTENING, b'{"sessionId": "b"}')  # no siteId: Rhasspy's "default"
    sessions.handle(START_LISTENING, b"not json")
    assert sessions.bad == 1 and sessions.by_site == {"porch": "a", "default": "b"}
    sessions.handle(STOP_LISTENING, b'{"siteId": "porch", "sessionId": "older"}')  # not the open one
    assert sessions.take("porch") == "a" and sessions.take("porch") is None  # one utterance per session
    sessions.handle(STOP_LISTENING, b'{"siteId": "default", "sessionId": "b"}')
    assert sessions.take("default") is None
    captured = text_captured(RECORD, "porch", "a")
    assert captured["sessionId"] == "a"
    check_schema("hermes-text-captured", captured)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def test_audio_frames_decode_at_any_rate_and_channel_count_and_garbage_is_refused() -> None:
    tone = (0.5 * np.sin(np.arange(4410) / 10)).astype(np.float32)
    mono, rate = decode_audio_frame(wav_bytes(tone[:1600], 16000))
    assert rate == 16000 and mono.shape == (1600,) and np.abs(mono - tone[:1600]).max() < 1e-3
    stereo, rate = decode_audio_frame(wav_bytes(np.stack([tone, tone], axis=1), 44100))
    assert rate == 44100 and stereo.shape == (4410,)
    for bad in (b"", b"hello", b"RIFF\x00\x00\x00\x00WAVEjunk"):
        with pytest.raises(ValueError):
            decode_audio_frame(bad)


@pytest.mark.slow
def test_a_hermes_room_is_heard_and_answered_in_both_dialects(tmp_path: Path, broker: Mosquitto) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    text = "Please turn on the kitchen lights."
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    rooms = '[[rooms]]\nname = "kitchen"\nsource = { type = "hermes", site_id = "satellite1" }\n'
    extra = "[homeassistant]\nenabled = true\n[hermes]\nenabled = true\n"
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms, extra=extra)
    sub = Subscriber(broker.port, "#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="satellite1")
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        configs = sub.wait_for("/config", 2, timeout_s=120)  # announced on connect
        assert {json.loads(c)["unique_id"] for c in configs} == {
            f"{node_id(prefix + '-daemon')}_kitchen_utterance",
            f"{node_id(prefix + '-daemon')}_kitchen_last_text",
        }
        daemon.wait_log("mqtt connected")
        # What a Hermes audio server sends: WAV chunks of 16-bit PCM, here 1024 samples at 16 kHz,
        # one unreadable frame in the middle, and trailing silence so the VAD closes the utterance.
        audio = np.concatenate([np.zeros(8000, np.float32), speak(text), np.zeros(32000, np.float32)])
        # Rhasspy's dialogue manager opens an ASR session for the site (its own message class).
        listen = AsrStartListening(site_id="satellite1", session_id="session-42")
        sender.publish(listen.topic(), listen.to_json(), qos=1).wait_for_publish(5)
        topic = audio_frame_topic("satellite1")
        # A satellite that starts late: the room has listened to nothing for a while (this
        # wait makes the situation; no result depends on its length beyond "a while").
        daemon.wait_log("room listening")
        time.sleep(4)
        sent_at = time.time()
        for n, start in enumerate(range(0, len(audio), 1024)):
            frame = b"not a wav" if n == 20 else wav_bytes(audio[start : start + 1024], 16000)
            sender.publish(topic, frame, qos=0).wait_for_publish(5)
        (payload,) = sub.wait_for("/kitchen/utterance", 1, timeout_s=60)
        record = json.loads(payload)
        check_schema("utterance", record)
        assert wer([text], [record["text"]]) <= 0.15, record["text"]
        # Wall-clock times of the speech (it starts 0.5 s into what was sent), not of a
        # stream clock that started with the daemon.
        spoken_at = epoch(record["start"])
        assert abs(spoken_at - (sent_at + 0.5)) < 1.5, (spoken_at, sent_at)
        (hermes_payload,) = sub.wait_for("hermes/asr/textCaptured", 1, timeout_s=30)
        captured = json.loads(hermes_payload)
        check_schema("hermes-text-captured", captured)
        assert captured == text_captured(record, "satellite1", "session-42")
        parsed = AsrTextCaptured.from_dict(captured)  # as Rhasspy reads it
        assert (parsed.session_id, parsed.site_id) == ("session-42", "satellite1")
        assert normalize(captured["text"]) == normalize(record["text"])
        assert daemon.events("audio frame ignored")[0]["room"] == "kitchen"
        # Home Assistant restarts: it says so, and the daemon announces again.
        sender.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
        assert len(sub.wait_for("/config", 4, timeout_s=30)) == 4
        assert daemon.terminate() == 0
    finally:
        sender.loop_stop()
        sender.disconnect()
        daemon.kill()
        sub.close()
