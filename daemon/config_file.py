"""Reading a config file: TOML in, a validated Config out, or one line per problem naming
the dotted key, the value and what is allowed (``ConfigError``); and which keys a reload
can change without a restart."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from daemon.config import Config, RoomSettings, credential_path, resolve_path
from daemon.config_sources import SOURCE_TYPES, FileSourceSettings
from pipeline.text.dictionary import Dictionary, DictionaryError


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems

    def report(self) -> None:
        """One line per problem on stderr, each starting with the file's path."""
        for line in self.problems:
            print(f"{self.path}: {line}", file=sys.stderr)


_UNION_MEMBERS = ("str", "int", "float", "bool")


def _key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        elif i > 0 and loc[i - 1] == "source" and part in SOURCE_TYPES:
            continue  # pydantic adds the discriminator's tag to the location
        elif part in _UNION_MEMBERS:
            continue  # and the member type's name for each branch of a plain union
        else:
            parts.append(part)
    return ".".join(parts) or "(top level)"


def _allowed_keys(loc: tuple[int | str, ...], data: Any) -> list[str]:
    """The keys a section accepts, for the message about an unknown key."""
    model: type[BaseModel] = Config
    node = data
    for part in loc[:-1]:
        if isinstance(part, int) or part in SOURCE_TYPES:
            node = node[part] if isinstance(part, int) else node
            continue
        node = node.get(part) if isinstance(node, dict) else None
        field = model.model_fields.get(part)
        if field is None:
            return []
        if part == "rooms":
            model = RoomSettings
        elif part == "source":
            kind = node.get("type") if isinstance(node, dict) else None
            model = cast("type[BaseModel]", SOURCE_TYPES.get(str(kind), FileSourceSettings))
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model = field.annotation
    return list(model.model_fields)


def shown(value: Any, limit: int = 80) -> str:
    """A value as the error line shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_errors(exc: ValidationError, data: Any) -> list[str]:
    lines: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        key = _key(loc)
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc, data))
            lines[key] = f"{key}: unknown key (allowed here: {allowed})"
        elif err["type"] == "missing":
            lines[key] = f"{key}: required key is missing"
        elif key in lines:  # another branch of a union: say what either branch wants
            lines[key] += f"; or {err['msg']}"
        elif not loc:  # a check across sections: its message names the keys
            lines[key] = err["msg"].removeprefix("Value error, ")
        else:
            message = err["msg"].removeprefix("Value error, ")
            lines[key] = f"{key} = {shown(err['input'])}: {message}"
    return list(lines.values())


def default_config_path() -> Path:
    """$ROOMSCRIBE_CONFIG, then systemd's $CONFIGURATION_DIRECTORY, /etc, then ./config.toml."""
    if env := os.environ.get("ROOMSCRIBE_CONFIG"):
        return Path(env)
    candidates = []
    if conf_dir := os.environ.get("CONFIGURATION_DIRECTORY"):
        candidates.append(Path(conf_dir.split(":")[0]) / "config.toml")
    candidates += [Path("/etc/roomscribe/config.toml"), Path("config.toml")]
    return next((p for p in candidates if p.is_file()), candidates[-1])


def parse_config(data: dict[str, Any], path: Path) -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, describe_errors(exc, data)) from None
    problems = []
    for i, room in enumerate(config.rooms):
        if isinstance(room.source, FileSourceSettings):
            file = resolve_path(room.source.path, path)
            if not file.is_file():
                problems.append(f"rooms[{i}].source.path = {room.source.path!r}: no such file ({file})")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        value = getattr(config.mqtt, key)
        if value and not credential_path(value, path).is_file():
            problems.append(f"mqtt.{key} = {value!r}: no such file ({credential_path(value, path)})")
    if config.text.dictionary:
        try:
            Dictionary(resolve_path(config.text.dictionary, path))
        except DictionaryError as exc:
            problems.append(f"text.dictionary = {config.text.dictionary!r}: {exc}")
    if problems:
        raise ConfigError(path, problems)
    return config


# What a reload (SIGHUP, the reload command) applies at once; the rest waits for a restart.
LIVE_KEYS = re.compile(r"^(recognizer\.hotwords|rooms\.\d+\.hotwords)(\.|$)")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}.{i}"))
        return out
    return {prefix: value}


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ, except those a reload applies (LIVE_KEYS)."""
    a, b = _flatten(old.model_dump()), _flatten(new.model_dump())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not LIVE_KEYS.match(k))


def load_config(path: Path) -> Config:
    """Read and validate a config file; raises ConfigError with one line per problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, ["config file not found"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read config file: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text (byte {exc.start}): is this the config file?"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses per nesting level
        raise ConfigError(path, ["not valid TOML: arrays or tables nested too deeply"]) from None
    return parse_config(data, path)


def runnable_problems(config: Config) -> list[str]:
    """What ``run`` needs beyond a valid config (``transcribe`` and the demo need no rooms);
    ``check-config`` reports the same."""
    # A daemon that only answers Wyoming requests (Home Assistant's speech-to-text) needs no room.
    if not any(r.enabled for r in config.rooms) and not (config.wyoming.enabled or config.http.enabled):
        return ["rooms: no enabled room; add a [[rooms]] entry (or enable [wyoming] or [http])"]
    return []
