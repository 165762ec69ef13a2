"""Batch transcription as a user runs it: formats with timestamps, resume, interrupt, bad
and truncated files, containers through ffmpeg, the serial loop."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.chunks import WHOLE_FILE_S
from tests.helpers import (
    REPO,
    Daemon,
    Mosquitto,
    Spoken,
    Subscriber,
    check_schema,
    speech_with_pauses,
    wer,
    write_config,
)

pytestmark = pytest.mark.slow

TEXTS = ["Please turn on the kitchen lights.", "Set a timer for ten minutes.", "Open the garage door please."]
# The VAD's pre-roll and hangover move a segment's bounds a little around the speech.
TOLERANCE_S = 0.45


def roomscribe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "transcribe", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Spoken]]:
    """A file longer than WHOLE_FILE_S (silence at its end), so it goes in timed chunks."""
    root = tmp_path_factory.mktemp("speech")
    audio, spoken = speech_with_pauses(TEXTS, pauses=[1.2, 2.5, 1.5])
    audio = np.concatenate([audio, np.zeros(round((WHOLE_FILE_S + 1) * 16000) - len(audio), np.float32)])
    sf.write(root / "talk.flac", audio, 16000)
    return root / "talk.flac", spoken


def test_a_short_file_is_recognized_whole(tmp_path: Path) -> None:
    """A file of at most WHOLE_FILE_S is one utterance of all its audio, without timestamps:
    one record from its first speech to its last, the words the serial loop gets."""
    audio, spoken = speech_with_pauses(TEXTS, pauses=[1.2, 2.5, 1.5])
    assert len(audio) / 16000 < WHOLE_FILE_S
    sf.write(tmp_path / "short.flac", audio, 16000)
    queued = roomscribe(str(tmp_path / "short.flac"), "--format", "jsonl")
    serial = roomscribe(str(tmp_path / "short.flac"), "--format", "jsonl", "--jobs", "1")
    assert queued.returncode == serial.returncode == 0, queued.stderr
    records = [json.loads(x) for x in queued.stdout.splitlines()]
    assert len(records) == 1 and len(serial.stdout.splitlines()) == len(spoken)
    assert abs(records[0]["start"] - spoken[0].start_s) <= TOLERANCE_S
    assert abs(records[0]["end"] - spoken[-1].end_s) <= TOLERANCE_S
    serial_text = " ".join(json.loads(x)["text"] for x in serial.stdout.splitlines())
    assert wer([" ".join(TEXTS)], [records[0]["text"]]) <= 0.15 and wer([serial_text], [records[0]["text"]]) <= 0.1


def clock(text: str) -> float:
    h, m, s = text.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_srt_vtt_json_timestamps_match_the_speech(speech: tuple[Path, list[Spoken]], tmp_path: Path) -> None:
    path, spoken = speech
    result = roomscribe(str(path), "--out", str(tmp_path), "--format", "srt,vtt,json,txt")
    assert result.returncode == 0, result.stderr
    srt = (tmp_path / "talk.srt").read_text()
    blocks = [b.splitlines() for b in srt.strip().split("\n\n")]
    assert [b[0] for b in blocks] == ["1", "2", "3"]
    for block, said in zip(blocks, spoken, strict=True):
        start, end = (clock(t) for t in block[1].split(" --> "))
        assert abs(start - said.start_s) <= TOLERANCE_S and abs(end - said.end_s) <= TOLERANCE_S, (block, said)
        assert wer([said.text], [" ".join(block[2:])]) <= 0.2
    vtt = (tmp_path / "talk.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n")
    cues = re.findall(r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})$", vtt, re.M)
    assert [(clock(a), clock(b)) for a, b in cues] == [
        (clock(b[1].split(" --> ")[0]), clock(b[1].split(" --> ")[1])) for b in blocks
    ]
    document = json.loads((tmp_path / "talk.json").read_text())
    assert [round(s["start"], 3) for s in document["segments"]] == [clock(b[1].split(" --> ")[0]) for b in blocks]
    assert document["audio_s"] == pytest.approx(sf.info(str(path)).duration, abs=0.6)
    # Text with ITN applied: "ten minutes" is written as digits.
    assert "10 minutes" in (tmp_path / "talk.txt").read_text()


def test_resume_skips_finished_files_and_force_redoes_them(speech: tuple[Path, list[Spoken]], tmp_path: Path) -> None:
    path, _ = speech
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    shutil.copy(path, inputs / "one.flac")
    shutil.copy(path, inputs / "sub" / "two.flac")
    out = tmp_path / "out"
    first = roomscribe(str(inputs), "--recursive", "--out", str(out))
    assert first.returncode == 0, first.stderr
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))
    assert made == ["one.txt", "sub/two.txt"]  # the folder structure is mirrored
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.txt")}
    again = roomscribe(str(inputs), "--recursive", "--out", str(out))
    assert again.returncode == 0 and "2 file(s) already done" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.txt")} == stamps
    forced = roomscribe(str(inputs), "--recursive", "--out", str(out), "--force")
    assert forced.returncode == 0
    assert all(p.stat().st_mtime_ns > stamps[p] for p in out.rglob("*.txt"))


def test_interrupt_keeps_finished_outputs_and_a_rerun_finishes(
    speech: tuple[Path, list[Spoken]], tmp_path: Path
) -> None:
    path, _ = speech
    inputs = tmp_path / "in"
    inputs.mkdir()
    for n in range(6):
        shutil.copy(path, inputs / f"clip{n}.flac")
    out = tmp_path / "out"
    # A test run started in the background (``make test &``) ignores SIGINT, and a child
    # inherits that: the child takes Ctrl-C back, as a terminal user's run has it.
    interruptible = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['roomscribe', *sys.argv[1:]]; runpy.run_module('daemon', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", interruptible, "transcribe", str(inputs), "--out", str(out), "--jobs", "1"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list(out.glob("*.txt")):  # wait for the first finished file, then Ctrl-C
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run again to resume" in err
    kept = sorted(p.name for p in out.glob("*.txt"))
    assert 1 <= len(kept) < 6
    assert not list(out.glob(".*partial"))  # nothing half-written
    assert all(wer(TEXTS, (out / k).read_text().splitlines()) <= 0.15 for k in kept)
    rerun = roomscribe(str(inputs), "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(kept)} file(s) already done" in rerun.stderr
    assert len(list(out.glob("*.txt"))) == 6


def test_bad_and_truncated_files_are_listed_and_the_rest_complete(
    speech: tuple[Path, list[Spoken]], tmp_path: Path
) -> None:
    path, _ = speech
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(path, inputs / "good.flac")
    data = path.read_bytes()
    (inputs / "truncated.flac").write_bytes(data[: len(data) // 2])
    (inputs / "empty.wav").write_bytes(b"")
    (inputs / "text.mp3").write_text("not audio at all\n")
    sf.write(inputs / "silence.wav", np.zeros(16000 * 3, np.float32), 16000)
    out = tmp_path / "out"
    result = roomscribe(str(inputs), str(inputs / "missing.wav"), "--out", str(out), "--format", "txt,json")
    assert result.returncode == 1
    failed = dict(re.findall(r"^roomscribe: failed: (\S+): (.+)$", result.stderr, re.M))
    assert {Path(p).name for p in failed} == {"empty.wav", "text.mp3", "missing.wav", "truncated.flac"}, result.stderr
    assert "empty file" in failed[str(inputs / "empty.wav")]
    assert "file not found" in failed[str(inputs / "missing.wav")]
    assert "4 of 6 file(s) failed" in result.stderr
    assert wer(TEXTS, (out / "good.txt").read_text().splitlines()) <= 0.15
    # Silence is a good file with nothing said: empty outputs, not a failure.
    assert (out / "silence.txt").read_text() == ""
    assert json.loads((out / "silence.json").read_text())["segments"] == []


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_video_containers_go_through_ffmpeg(speech: tuple[Path, list[Spoken]], tmp_path: Path) -> None:
    path, _ = speech
    video = tmp_path / "talk.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-c:a", "libopus", "-ar", "48000", str(video)], check=True
    )
    result = roomscribe(str(video), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert wer(TEXTS, [r["text"] for r in records]) <= 0.15


def test_serial_loop_and_chunked_queue_agree(speech: tuple[Path, list[Spoken]], tmp_path: Path) -> None:
    """--jobs 1 recognizes each VAD segment alone; the queue recognizes a long file's
    segments as one timed chunk. Same words, and the chunk's cues are on the speech."""
    path, spoken = speech
    serial = roomscribe(str(path), "--format", "jsonl", "--jobs", "1")
    queued = roomscribe(str(path), "--format", "jsonl")
    assert serial.returncode == queued.returncode == 0
    serial_text = " ".join(json.loads(x)["text"] for x in serial.stdout.splitlines())
    queued_records = [json.loads(x) for x in queued.stdout.splitlines()]
    assert wer([serial_text], [" ".join(r["text"] for r in queued_records)]) <= 0.1
    assert len(queued_records) == len(spoken)
    for record, said in zip(queued_records, spoken, strict=True):
        assert abs(record["start"] - said.start_s) <= TOLERANCE_S and abs(record["end"] - said.end_s) <= TOLERANCE_S


def test_daemon_takes_batch_jobs_over_mqtt_within_the_allowed_folder(
    speech: tuple[Path, list[Spoken]], tmp_path: Path, broker: Mosquitto
) -> None:
    path, _ = speech
    allowed = tmp_path / "recordings"
    (allowed / "monday").mkdir(parents=True)
    for name in ("a.flac", "b.flac"):
        shutil.copy(path, allowed / "monday" / name)
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(path, secret / "private.flac")
    (allowed / "escape").symlink_to(secret)  # a link out of the allowed folder
    (allowed / "monday" / "l.flac").symlink_to(secret / "private.flac")  # a file in the folder, linked out
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:{secret / 'private.flac'}\n#EXT-X-ENDLIST\n"
    (allowed / "evil.m3u8").write_text(playlist)  # a playlist that would read a file outside
    out = tmp_path / "transcripts"
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    live = tmp_path / "live.wav"
    live_audio, live_spoken = speech_with_pauses(["What is the weather like today?", "Close the curtains please."])
    sf.write(live, live_audio, 16000)
    rooms = f'[[rooms]]\nname = "kitchen"\nsource = {{ type = "file", path = "{live}", realtime = true }}\n'
    extra = f'[batch]\nallowed_dir = "{allowed}"\noutput_dir = "{out}"\nformats = ["txt", "srt"]\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms, extra=extra)
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        daemon.wait_log("mqtt connected", timeout_s=120)
        commands = [
            {"command": "transcribe", "path": "monday", "transaction": "ok"},
            {"command": "transcribe", "path": str(secret / "private.flac"), "transaction": "outside"},
            {"command": "transcribe", "path": "../secret", "transaction": "dotdot"},
            {"command": "transcribe", "path": "escape/private.flac", "transaction": "link"},
            {"command": "transcribe", "path": "tuesday", "transaction": "missing"},
            {"command": "transcribe", "path": "evil.m3u8", "transaction": "playlist"},
            {"command": "transcribe", "path": "monday\0/a.flac", "transaction": "null"},
            {"command": "transcribe", "path": "x" * 4096, "transaction": "long"},
        ]
        for command in commands:
            sub.client.publish(f"{prefix}/set", json.dumps(command).encode(), qos=1)
        answers = {}
        for payload in sub.wait_for("/response", len(commands), timeout_s=240):
            answer = json.loads(payload)
            check_schema("response", answer)
            answers[answer["transaction"]] = answer
        for refused in ("outside", "dotdot", "link"):
            assert answers[refused]["status"] == "error" and "outside batch.allowed_dir" in answers[refused]["error"]
        assert answers["missing"]["status"] == "error" and "no such file" in answers["missing"]["error"]
        assert answers["null"]["status"] == "error" and "null byte" in answers["null"]["error"]
        assert answers["long"]["status"] == "error" and "too long" in answers["long"]["error"]
        assert len(answers["long"]["error"]) < 400  # the path is cut short in the answer
        assert not daemon.events("command failed")  # each a clear answer, no traceback
        playlist_failed = answers["playlist"]["result"]["failed"]
        assert list(playlist_failed) == [str(allowed / "evil.m3u8")]
        assert "ffmpeg could not decode it" in playlist_failed[str(allowed / "evil.m3u8")]  # refused, not read
        done = answers["ok"]
        assert done["status"] == "ok", done
        assert done["result"]["files"] == 2
        assert "outside batch.allowed_dir" in done["result"]["failed"][str(allowed / "monday" / "l.flac")]
        assert sorted(Path(p).relative_to(out).as_posix() for p in done["result"]["outputs"]) == [
            "monday/a.srt", "monday/a.txt", "monday/b.srt", "monday/b.txt"
        ]  # fmt: skip
        assert wer(TEXTS, (out / "monday" / "a.txt").read_text().splitlines()) <= 0.15
        assert not (out / "secret").exists() and not list(out.rglob("private*"))
        # The live room went on meanwhile, and no batch segment went out as a room utterance.
        published = [json.loads(p) for p in sub.wait_for("/kitchen/utterance", len(live_spoken), timeout_s=60)]
        assert wer([s.text for s in live_spoken], [r["text"] for r in published]) <= 0.15
        assert all(t.split("/")[-1] != "utterance" or "/kitchen/" in t for t, _, _ in sub.messages)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()


def test_transcribe_corrects_hotwords_like_the_daemon(tmp_path: Path) -> None:
    """Files go through the daemon's own graph, so the text stage rewrites near misses of the
    configured hotwords there too (it once built its text stage without them). The prompt
    and the decoding bias are off here, so only the text stage can make the change."""
    from tests.helpers import speak

    sf.write(tmp_path / "report.wav", speak("Please send the report to Siobhan."), 16000)
    config = tmp_path / "config.toml"
    outputs = {}
    for hotwords in ([], ["Shivonne"]):
        config.write_text(
            f"[recognizer]\nhotwords = {json.dumps(hotwords)}\nhotword_weight = 0\nmax_prompt_tokens = 0\n"
        )
        out = tmp_path / f"out{len(hotwords)}"
        result = roomscribe(str(tmp_path / "report.wav"), "--config", str(config), "--out", str(out))
        assert result.returncode == 0, result.stderr
        outputs[len(hotwords)] = (out / "report.txt").read_text().strip()
    # tiny.en writes the name as it hears it; with the hotword configured, the written text has it.
    assert "Shivonne" not in outputs[0] and "Shivon" in outputs[0], outputs
    assert "Shivonne" in outputs[1], outputs


def test_a_short_file_keeps_its_whole_text_unless_its_segments_say_clearly_more() -> None:
    from pipeline.batch import FileResult
    from pipeline.messages import Transcript, Utterance

    def transcript(text: str, start_s: float) -> Transcript:
        utt = Utterance(
            room="batch-0", id=f"f-{start_s}", audio=np.zeros(160, np.float32), start_s=start_s, end_s=start_s + 1,
            start_wall=0.0, end_wall=1.0, reason="end_of_stream", decided_at=0.0,
        )  # fmt: skip
        return Transcript(utt, text, text, "en", 0.9, "whisper-tiny.en", 5.0)

    two = [transcript("Open the door.", 0), transcript("Then close it.", 3)]
    stopped_early = FileResult(Path("a.wav"), segments=list(two))
    stopped_early.whole = transcript("Open the door.", 0)
    assert stopped_early.settle_whole() == {"kept": "segments", "whole_words": 3, "segment_words": 6}
    assert [t.text for t in stopped_early.segments] == ["Open the door.", "Then close it."]
    complete = FileResult(Path("b.wav"), segments=list(two))
    complete.whole = transcript("Open the door, then close it.", 0)
    assert complete.settle_whole() == {"kept": "whole", "whole_words": 6, "segment_words": 6}
    assert [t.text for t in complete.segments] == ["Open the door, then close it."]
    alone = FileResult(Path("c.wav"))
    alone.whole = transcript("Open the door.", 0)
    assert alone.settle_whole() is None  # one segment: recognized once, nothing weighed
    assert [t.text for t in alone.segments] == ["Open the door."]
