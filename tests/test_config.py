from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.config_file import ConfigError, load_config, parse_config
from tests.helpers import REPO


def problems(text: str, path: Path = Path("test.toml")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), path)
    return info.value.problems


def test_shipped_config_is_valid_and_documents_every_key() -> None:
    config = load_config(REPO / "config.toml")
    assert [r.name for r in config.rooms] == ["demo"]
    text = (REPO / "config.toml").read_text()
    for section in ("daemon", "mqtt", "homeassistant", "hermes", "batch", "recognizer", "vad", "text", "stitch"):
        for key in type(getattr(config, section)).model_fields:
            assert f"\n{key} = " in text, f"config.toml does not document {section}.{key}"


def test_defaults_match_the_contract() -> None:
    config = Config()
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.prefix) == ("localhost", 1883, "roomscribe")
    assert (config.recognizer.model, config.recognizer.device) == ("bundled:tiny.en", "auto")


def test_unknown_key_names_the_dotted_key_and_what_is_allowed() -> None:
    (line,) = problems("[mqtt]\nhots = 'x'\n")
    assert line.startswith("mqtt.hots: unknown key")
    assert "host" in line and "port" in line


def test_unknown_section_is_rejected() -> None:
    (line,) = problems("[mqt]\nhost = 'x'\n")
    assert line.startswith("mqt: unknown key")


def test_wrong_type_names_key_value_and_expectation() -> None:
    (line,) = problems("[mqtt]\nport = 'eighteen'\n")
    assert line.startswith("mqtt.port = 'eighteen':")
    assert "integer" in line


def test_out_of_range_value() -> None:
    (line,) = problems("[vad]\nmax_utterance_ms = 45000\n")
    assert line.startswith("vad.max_utterance_ms = 45000:") and "30000" in line


def test_every_problem_is_reported_at_once() -> None:
    lines = problems("[mqtt]\nport = 0\nprefix = 'a/#'\n[recognizer]\ndevice = 'tpu'\n")
    assert len(lines) == 3
    assert {line.split(" ")[0] for line in lines} == {"mqtt.port", "mqtt.prefix", "recognizer.device"}


def test_room_errors_are_located(tmp_path: Path) -> None:
    text = """
[[rooms]]
name = "ok"
source = { type = "mic" }
[[rooms]]
name = "bad name"
source = { type = "file", path = "missing.wav", realtim = true }
"""
    lines = problems(text)
    assert any(line.startswith("rooms[1].name = 'bad name'") for line in lines)
    assert any(line.startswith("rooms[1].source.realtim: unknown key") and "realtime" in line for line in lines)


def test_unknown_source_type() -> None:
    (line,) = problems("[[rooms]]\nname='a'\nsource={type='tape'}\n")
    assert line.startswith("rooms[0].source") and "'file'" in line and "'mic'" in line


def test_missing_file_is_reported_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "here.wav").write_bytes(b"x")
    good = "[[rooms]]\nname='a'\nsource={type='file', path='here.wav'}\n"
    parse_config(tomllib.loads(good), tmp_path / "c.toml")
    (line,) = problems(good.replace("here.wav", "gone.wav"), tmp_path / "c.toml")
    assert line.startswith("rooms[0].source.path = 'gone.wav': no such file")


def test_duplicate_room_names() -> None:
    lines = problems("[[rooms]]\nname='a'\nsource={type='mic'}\n[[rooms]]\nname='a'\nsource={type='mic'}\n")
    assert "used twice" in lines[0]


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[mqtt\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("check-config", "--config", str(REPO / "config.toml"))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'x'\nhots = 1\n")
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{bad}: mqtt.") for line in lines)


def test_run_refuses_a_bad_config_with_the_same_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nlog_level = 'loud'\n")
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == 2
    assert "daemon.log_level = 'loud'" in result.stderr


def test_run_with_an_unloadable_model_is_a_startup_failure(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    config = tmp_path / "c.toml"
    config.write_text(
        f"[recognizer]\nmodel = '{tmp_path}'\n[[rooms]]\nname='a'\nsource={{type='file', path='{wav}'}}\n"
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert "model.bin" in result.stderr


def test_text_dictionary_is_checked_with_the_config(tmp_path: Path) -> None:
    config = "[text]\ndictionary = 'words.txt'\n"
    (line,) = problems(config, tmp_path / "c.toml")
    assert line.startswith("text.dictionary = 'words.txt':") and "cannot read" in line
    (tmp_path / "words.txt").write_text("fine => ok\nbroken line\n")
    (line,) = problems(config, tmp_path / "c.toml")
    assert line.startswith("text.dictionary = 'words.txt':") and "words.txt:2: expected 'wrong => right'" in line
    (tmp_path / "words.txt").write_text("fine => ok\n")
    assert parse_config(tomllib.loads(config), tmp_path / "c.toml").text.dictionary == "words.txt"


def test_credentials_come_from_the_credentials_directory_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.config import credential_path

    creds, conf = tmp_path / "creds", tmp_path / "etc"
    creds.mkdir()
    conf.mkdir()
    (creds / "mqtt-password").write_text("x")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert credential_path("mqtt-password", conf / "c.toml") == creds / "mqtt-password"
    assert credential_path("other", conf / "c.toml") == conf / "other"
    assert credential_path("/abs/key.pem", conf / "c.toml") == Path("/abs/key.pem")
    (line,) = problems("[mqtt]\npassword_file = 'missing'\n", conf / "c.toml")
    assert line.startswith("mqtt.password_file = 'missing': no such file")


def test_each_default_lives_in_the_settings_it_feeds_and_maps_by_keyword(tmp_path: Path) -> None:
    """The sections read their defaults from the pipeline's and the model's dataclasses and
    map onto them by name: the defaults agree, and changed values land on their own fields
    (a positional mapping once could swap two ints silently)."""
    from models.api import DecodingOptions
    from pipeline.recognize_settings import RecognizeSettings
    from pipeline.stitch import StitchSettings
    from pipeline.text.processor import TextSettings
    from pipeline.vad import VadParams

    c = Config()
    assert c.vad.params() == VadParams()
    assert c.stitch.settings() == StitchSettings()
    assert c.text.settings(tmp_path / "config.toml") == TextSettings()
    assert c.recognizer.decoding_options() == DecodingOptions()
    assert c.recognizer.stage_settings(c.stitch) == RecognizeSettings(stitch_max_gap_s=0.5)
    off = Config.model_validate({"stitch": {"enabled": False}})
    assert off.recognizer.stage_settings(off.stitch) == RecognizeSettings()
    stitch = {
        "max_gap_ms": 1500,
        "max_hold_ms": 6000,
        "complete_wait_ms": 700,
        "endpoint_ms": 300,
        "end_threshold": 0.7,
    }
    changed = Config.model_validate({"stitch": stitch, "vad": {"hangover_ms": 900}})
    assert changed.stitch.settings() == StitchSettings(**stitch)  # type: ignore[arg-type]
    assert changed.recognizer.stage_settings(changed.stitch).end_threshold == 0.7
    assert changed.vad.params() == VadParams(hangover_ms=900)


def test_a_room_the_stitcher_serves_ends_pieces_after_endpoint_ms() -> None:
    """Live rooms with stitching cut a piece after stitch.endpoint_ms (the recognizer decides
    whether the sentence ended); rooms without, or that set their own hangover, keep theirs."""
    source = {"type": "file", "path": "a.wav"}
    rooms = [
        {"name": "kitchen", "source": source},
        {"name": "hall", "source": source, "stitch": False},
        {"name": "office", "source": source, "vad": {"hangover_ms": 900}},
    ]
    c = Config.model_validate({"stitch": {"endpoint_ms": 300}, "rooms": rooms})
    assert [c.room_vad_params(r).hangover_ms for r in c.rooms] == [300, 700, 900]
    assert c.room_vad_params(c.rooms[0]).post_roll_ms == 200
    off = Config.model_validate({"stitch": {"enabled": False}, "rooms": rooms[:1]})
    assert off.room_vad_params(off.rooms[0]).hangover_ms == 700


def test_every_room_speculates_before_its_endpoint_with_or_without_the_stitcher() -> None:
    """stitch.speculate_ms applies to every room whose endpoint comes later; a room whose
    own hangover is that short or shorter has nothing to speculate before it."""
    source = {"type": "file", "path": "a.wav"}
    rooms = [
        {"name": "kitchen", "source": source},
        {"name": "hall", "source": source, "stitch": False},
        {"name": "office", "source": source, "vad": {"hangover_ms": 900, "post_roll_ms": 100}},
        {"name": "porch", "source": source, "vad": {"hangover_ms": 150, "post_roll_ms": 100}},
    ]
    c = Config.model_validate({"rooms": rooms})
    assert [c.room_vad_params(r).speculate_ms for r in c.rooms] == [160, 160, 160, 0]
    off = Config.model_validate({"stitch": {"enabled": False, "speculate_ms": 300}, "rooms": rooms})
    assert [off.room_vad_params(r).speculate_ms for r in off.rooms] == [300, 300, 300, 0]
    never = Config.model_validate({"stitch": {"speculate_ms": 0}, "rooms": rooms})
    assert {never.room_vad_params(r).speculate_ms for r in never.rooms} == {0}
    # Past endpoint_ms: refused while stitched rooms cut there; with the stitcher off the
    # rooms' own hangovers bound it (the 700 ms default here, 900 ms in the office).
    refused = problems("[stitch]\nspeculate_ms = 500\n")
    assert any(p.startswith("stitch") and "speculate_ms must be below endpoint_ms" in p for p in refused), refused
    late = Config.model_validate({"stitch": {"enabled": False, "speculate_ms": 500}, "rooms": rooms})
    assert [late.room_vad_params(r).speculate_ms for r in late.rooms] == [500, 500, 500, 0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)) * 8, "not UTF-8 text (byte 128)"),  # a binary file given by mistake
        (("a = " + "[" * 5000 + "]" * 5000).encode(), "nested too deeply"),
        (b"[daemon]\nlog_level = 'info'\n", "rooms: no enabled room"),
        (b"[mqtt]\nport = '1883'\n", "mqtt.port = '1883': Input should be a valid integer"),
        (b"[mqtt]\nreconnect_min_s = inf\n", "mqtt.reconnect_min_s = inf: Input should be a finite number"),
        (b"[vad]\nthreshold = nan\n", "Input should be a finite number"),
        (
            b"[[rooms]]\nname = 'k'\nlanguage = 'klingon'\nsource = { type = 'mic' }\n",
            "rooms[0].language = 'klingon': not a language code",
        ),
    ],
)
def test_check_config_names_what_run_would_reject(tmp_path: Path, content: bytes, message: str) -> None:
    """Each used to pass check-config (or trace back with exit 1) and then fail or misbehave in run."""
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_room_language_the_model_does_not_write_is_a_start_up_error(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    config = tmp_path / "c.toml"
    config.write_text(f"[[rooms]]\nname='a'\nlanguage = 'fr'\nsource={{type='file', path='{wav}'}}\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert "rooms[0].language = 'fr'" in result.stderr and "English-only" in result.stderr


def test_hotwords_in_the_config_are_bounded_like_the_command() -> None:
    with pytest.raises(ConfigError, match=r"recognizer.hotwords = \[.*\.\.\.: List should have at most 1000"):
        parse_config({"recognizer": {"hotwords": [f"w{i}" for i in range(1001)]}}, Path("c.toml"))
    with pytest.raises(ConfigError, match=r"recognizer.hotwords\[0\]"):
        parse_config({"recognizer": {"hotwords": ["x" * 101]}}, Path("c.toml"))


def test_language_beams_name_the_language_and_reach_the_decoder() -> None:
    (line,) = problems("[recognizer]\nlanguage_beams = { klingon = 5 }\n")
    assert line.startswith("recognizer.language_beams") and "'klingon' is not a language code" in line
    (line,) = problems("[recognizer]\nlanguage_beams = { zh = 50 }\n")
    assert line.startswith("recognizer.language_beams") and "1 to 16" in line
    options = parse_config(
        tomllib.loads("[recognizer]\nbeam_size = 2\nlanguage_beams = { de = 4 }\n"), Path("c.toml")
    ).recognizer
    decoding = options.decoding_options()
    assert (decoding.beam_for("de"), decoding.beam_for("zh"), decoding.beam_for("en")) == (4, 2, 2)
    assert Config().recognizer.decoding_options().beam_for("zh") == 5
