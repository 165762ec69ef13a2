"""MQTT commands: parsing and error responses, and the commands against a running daemon."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import soundfile as sf

from daemon.commands import MAX_COMMAND_BYTES, CommandError, Hotwords, Language, Status, parse
from tests.helpers import Daemon, Mosquitto, Subscriber, check_schema, epoch, speech_with_pauses, write_config


def test_valid_commands_parse() -> None:
    assert parse(b'{"command": "status", "transaction": "t1"}') == Status(command="status", transaction="t1")
    assert parse('{"command": "hotwords", "words": [" Kubernetes ", "张晓梅"]}'.encode()) == Hotwords(
        command="hotwords", words=["Kubernetes", "张晓梅"]
    )
    assert parse(b'{"command": "language", "language": null}') == Language(command="language", language=None)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b'["status"]', "expected a JSON object"),
        (b'{"command": "dance"}', "unknown command 'dance'"),
        (b'{"transaction": "x"}', "unknown command None"),
        (b'{"command": "hotwords", "words": "Kubernetes"}', "words: Input should be a valid list"),
        (b'{"command": "hotwords", "words": [1]}', "words.0: Input should be a valid string"),
        (b'{"command": "language", "language": "English"}', "language: String should match pattern"),
        (b'{"command": "pause", "extra": 1}', "extra: Extra inputs are not permitted"),
        (b'{"command": "hotwords", "words": ["\\ud800"]}', ""),  # a lone surrogate: an answer, not a crash
        (b'{"a": ' * 10_000, "malformed JSON"),  # nested too deep for the parser
        (b"", "malformed JSON"),
        (b"null", "expected a JSON object"),
        (b"true", "expected a JSON object"),
        (b'{"command": 5}', "unknown command 5"),
        (b'{"command": "pause", "transaction": 5}', "transaction: Input should be a valid string"),
        (b'{"command": "status", "transaction": "' + b"x" * 201 + b'"}', "transaction: String should have at most"),
        (b'{"command": "hotwords"}', "words: Field required"),
        (b'{"command": "hotwords", "words": ["  "]}', "words.0: String should have at least 1 character"),
        (b'{"command": "hotwords", "words": ["' + b"x" * 101 + b'"]}', "words.0: String should have at most"),
        (b'{"command": "hotwords", "words": [' + b",".join([b'"w"'] * 1001) + b"]}", "words: List should have at most"),
        (b'{"command": "language"}', "language: Field required"),
        (b'{"command": "status", "pad": "' + b"x" * MAX_COMMAND_BYTES + b'"}', "over the 65536-byte limit"),
    ],
)
def test_bad_commands_give_a_clear_error(payload: bytes, message: str) -> None:
    try:
        parse(payload)
    except CommandError as exc:
        assert message in str(exc)
    else:
        assert message == "", "accepted"


@pytest.mark.parametrize(
    "payload",
    [
        {"command": "status"},
        {"command": "pause", "transaction": "t"},
        {"command": "hotwords", "words": ["Kubernetes", "张晓梅"]},
        {"command": "language", "language": None},
        {"command": "language", "language": "zh"},
        {"command": "dance"},
        {"command": "hotwords"},
        {"command": "hotwords", "words": "Kubernetes"},
        {"command": "pause", "words": ["x"]},
        {"command": "status", "extra": 1},
        {"command": "language", "language": "English"},
    ],
)
def test_the_command_schema_and_the_parser_agree(payload: dict[str, object]) -> None:
    import jsonschema

    try:
        check_schema("command", payload)
        documented = True
    except jsonschema.ValidationError:
        documented = False
    try:
        parse(json.dumps(payload).encode())
        accepted = True
    except CommandError:
        accepted = False
    assert documented == accepted


@pytest.mark.slow
def test_commands_against_a_running_daemon(tmp_path: Path, broker: Mosquitto) -> None:
    audio, _ = speech_with_pauses(["Please turn on the kitchen lights."], pause_s=1.5)
    sf.write(tmp_path / "room.wav", audio, 16000)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    room = f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{tmp_path / "room.wav"}", loop = true }}\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, room)
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)

    def ask(topic: str, payload: bytes, transaction: str) -> dict[str, object]:
        sub.client.publish(f"{prefix}/{topic}", payload, qos=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for p in sub.payloads("/response"):
                answer = json.loads(p)
                if answer.get("transaction") == transaction:
                    check_schema("response", answer)
                    return answer  # type: ignore[no-any-return]
            time.sleep(0.05)
        raise TimeoutError(transaction)

    try:
        sub.wait_for("/kitchen/utterance", 1, timeout_s=120)
        state = json.loads(sub.wait_for("/kitchen/state", 1, timeout_s=10)[-1])
        check_schema("state", state)
        assert state["listening"] is True and state["paused"] is False
        # The looped sentence makes the room speak and fall silent: each change is published.
        states = [json.loads(p) for p in sub.payloads("/kitchen/state")]
        assert {"listening": True, "speaking": True, "paused": False, "state": "speaking"} in states

        status = ask("set", b'{"command": "status", "transaction": "s1"}', "s1")
        assert status["status"] == "ok" and status["error"] is None
        result = status["result"]
        assert isinstance(result, dict) and result["model"] == "whisper-tiny.en" and "kitchen" in result["rooms"]

        answer = ask("kitchen/set", b'{"command": "hotwords", "words": ["Kubernetes"], "transaction": "h1"}', "h1")
        assert answer["status"] == "ok"
        status = ask("set", b'{"command": "status", "transaction": "s2"}', "s2")
        assert status["result"]["hotwords"]["rooms"]["kitchen"] == ["Kubernetes"]  # type: ignore[index]

        bad = ask("set", b'{"command": "hotwords", "words": 7, "transaction": "b1"}', "b1")
        assert bad["status"] == "error" and "words" in str(bad["error"]) and bad["command"] == "hotwords"
        nobody = ask("garage/set", b'{"command": "pause", "transaction": "b2"}', "b2")
        assert nobody["status"] == "error" and "no room named 'garage'" in str(nobody["error"])
        english = ask("set", b'{"command": "language", "language": "zh", "transaction": "b3"}', "b3")
        assert english["status"] == "error" and "English-only" in str(english["error"])
        sub.client.publish(f"{prefix}/set", b"{{{", qos=1)
        daemon.wait_log("command refused", 4)

        # Pause: nothing more is heard, then resume. Speech under way when the pause came is
        # cut there and may still arrive (held by the stitcher for up to ~1.5 s): it is told
        # apart by its start, before the pause, not by when it arrives. The pause comes while
        # the room speaks, so every run takes that path.
        deadline = time.monotonic() + 15
        while json.loads(sub.payloads("/kitchen/state")[-1])["state"] != "speaking":
            assert time.monotonic() < deadline, "the looped sentence never played"
            time.sleep(0.02)
        assert ask("kitchen/set", b'{"command": "pause", "transaction": "p1"}', "p1")["status"] == "ok"
        paused_at = time.time()
        at_pause = len(sub.payloads("/kitchen/utterance"))
        assert json.loads(sub.payloads("/kitchen/state")[-1])["paused"] is True
        time.sleep(6.0)  # an observation window: the looped sentence plays every 5 s
        late = [json.loads(p) for p in sub.payloads("/kitchen/utterance")[at_pause:]]
        assert len(late) <= 1 and all(epoch(r["start"]) < paused_at for r in late), late
        before = at_pause + len(late)
        assert ask("kitchen/set", b'{"command": "resume", "transaction": "r1"}', "r1")["status"] == "ok"
        sub.wait_for("/kitchen/utterance", before + 1, timeout_s=30)
        assert ask("set", b'{"command": "clear_cache", "transaction": "c1"}', "c1")["status"] == "ok"
        assert daemon.proc.poll() is None
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
