"""``roomscribe transcribe`` and ``roomscribe demo`` as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.helpers import REPO, normalize, speech_with_pauses, wer

TEXTS = ["Please turn on the kitchen lights.", "Open the garage door please."]


def roomscribe(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good and bad inputs side by side."""
    root = tmp_path_factory.mktemp("inputs")
    audio, _ = speech_with_pauses(TEXTS)
    sf.write(root / "a_good.flac", audio, 16000)
    # 8 kHz stereo, speech on one channel only.
    low = soxr.resample(audio, 16000, 8000).astype(np.float32)
    sf.write(root / "b_8k_stereo.wav", np.stack([low, np.zeros_like(low)], axis=1), 8000)
    (root / "c_not_audio.wav").write_text("this is not a wave file\n")
    (root / "d_empty.wav").write_bytes(b"")
    return root


@pytest.mark.slow
def test_transcribe_jsonl_with_bad_files(folder: Path) -> None:
    missing = folder / "e_missing.wav"
    result = roomscribe("transcribe", str(folder), str(missing), "--format", "jsonl")
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_file: dict[str, list[dict[str, object]]] = {}
    for record in records:
        by_file.setdefault(Path(str(record["file"])).name, []).append(record)
    assert set(by_file) == {"a_good.flac", "b_8k_stereo.wav"}
    for name, found in by_file.items():
        # A short file is recognized whole: one record from its first speech to its last.
        (record,) = found
        assert wer([" ".join(TEXTS)], [str(record["text"])]) <= 0.15, name
        # Seconds from the file's start: the first sentence begins after 1.5 s of silence.
        assert 1.0 <= float(record["start"]) <= 1.6  # type: ignore[arg-type]
        assert float(record["end"]) - float(record["start"]) > 3.5  # type: ignore[arg-type]  # both sentences
    err = result.stderr
    assert "c_not_audio.wav: not a readable audio file" in err
    assert "d_empty.wav: empty file" in err
    assert "e_missing.wav: file not found" in err
    assert "3 of 5 file(s) failed" in err


@pytest.mark.slow
def test_transcribe_txt_all_good(folder: Path, tmp_path: Path) -> None:
    result = roomscribe("transcribe", str(folder / "a_good.flac"), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "a_good.txt").read_text().strip().splitlines()
    assert wer([" ".join(TEXTS)], [" ".join(lines)]) <= 0.15
    assert result.stdout == ""


def test_transcribe_only_bad_files(tmp_path: Path) -> None:
    result = roomscribe("transcribe", str(tmp_path / "nope.wav"))
    assert result.returncode == 1
    assert "nope.wav: file not found" in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_demo_prints_every_sentence() -> None:
    result = roomscribe("demo", timeout=240)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[demo]")]
    # Five sentences in four utterances: "Good morning." and "Please turn on ..." are one
    # recording with espeak-ng's short sentence pause (the pieces' audio touches), and the
    # joint decode's P(sentence ends) between them, about 0.5, is under the tuned
    # stitch.joint_threshold (0.75): one utterance that keeps both sentences' full stops.
    assert len(lines) == 4
    assert "good morning" in normalize(lines[0]) and "kitchen lights" in normalize(lines[0])
    assert re.search(r"live captions at http://127\.0\.0\.1:\d+/\n", result.stdout), result.stdout
    said = normalize(" ".join(lines))
    for words in ("good morning", "turn on the kitchen lights", "weather like today", "timer for ten minutes"):
        assert words in said


def test_help_lists_the_commands() -> None:
    result = roomscribe("--help")
    assert result.returncode == 0
    for command in ("run", "demo", "transcribe", "check-config", "devices"):
        assert command in result.stdout


def test_inputs_that_share_a_name_each_get_their_own_output(tmp_path: Path) -> None:
    """talk.wav and talk.flac used to write one talk.txt (the second over the first)."""
    first, _ = speech_with_pauses(["Please turn on the kitchen lights."])
    second, _ = speech_with_pauses(["Open the garage door please."])
    sf.write(tmp_path / "talk.wav", first, 16000)
    sf.write(tmp_path / "talk.flac", second, 16000)
    sf.write(tmp_path / "other.wav", first, 16000)
    result = roomscribe("transcribe", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "2 input(s) share a name" in result.stderr
    assert wer(["Please turn on the kitchen lights."], [(tmp_path / "talk.wav.txt").read_text()]) <= 0.15
    assert wer(["Open the garage door please."], [(tmp_path / "talk.flac.txt").read_text()]) <= 0.15
    assert (tmp_path / "other.txt").exists() and not (tmp_path / "talk.txt").exists()


def test_output_names_do_not_depend_on_the_order_of_the_inputs(tmp_path: Path) -> None:
    from daemon.outputs import output_bases

    files = [(tmp_path / "a" / "talk.wav", tmp_path), (tmp_path / "a" / "talk.flac", tmp_path)]
    files.append((tmp_path / "b" / "talk.wav", tmp_path))  # another folder: no clash under --out
    for order in (files, files[::-1]):
        bases = output_bases(order, tmp_path / "out")
        assert sorted(str(b.relative_to(tmp_path / "out")) for b in bases.values()) == [
            "a/talk.flac", "a/talk.wav", "b/talk"
        ]  # fmt: skip
