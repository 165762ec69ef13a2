"""Command line: ``roomscribe run|worker|demo|transcribe|itn|check-config|devices``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from daemon import __version__
from daemon.config import Config
from daemon.config_file import ConfigError, default_config_path, load_config, runnable_problems
from daemon.errors import EXIT_CONFIG_ERROR, EXIT_RUNTIME_ERROR, EXIT_STARTUP_FAILURE, StartupError
from daemon.logs import setup_logging


def report_config_error(exc: ConfigError) -> int:
    exc.report()
    return EXIT_CONFIG_ERROR


def load_or_report(path: Path | None) -> tuple[Config | None, Path, int]:
    path = path or default_config_path()
    try:
        return load_config(path), path, 0
    except ConfigError as exc:
        return None, path, report_config_error(exc)


def cmd_check_config(args: argparse.Namespace) -> int:
    config, path, code = load_or_report(args.config)
    if config is None:
        return code
    if problems := runnable_problems(config):
        return report_config_error(ConfigError(path, problems))
    print(f"{path}: ok ({len(config.rooms)} room(s))")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config, path, code = load_or_report(args.config)
    if config is None:
        return code
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    if problems := runnable_problems(config):
        return report_config_error(ConfigError(path, problems))
    os.umask(0o077)  # the outbox, recordings and transcripts: owner-only, whatever the caller's umask
    return asyncio.run(_run_app(config, path))


async def _run_app(config: Config, path: Path) -> int:
    import structlog

    # Here, not at the top: the daemon's doors (aiohttp, zeroconf, wyoming, MQTT) are 0.3 s
    # of imports that `roomscribe transcribe` and `itn` do not need.
    from daemon.app import App

    log = structlog.get_logger()
    try:
        app = App(config, path)
        app.install_signal_handlers()
        return await app.run()
    except StartupError as exc:
        log.error("start-up failed", error=str(exc))
        return EXIT_STARTUP_FAILURE
    except Exception:
        log.exception("daemon failed")
        return EXIT_RUNTIME_ERROR


def cmd_worker(args: argparse.Namespace) -> int:
    config, path, code = load_or_report(args.config)
    if config is None:
        return code
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    from daemon.worker import worker_main

    return worker_main(config, path, args.id)


def cmd_devices(_args: argparse.Namespace) -> int:
    from pipeline.sources import list_input_devices

    try:
        devices = list_input_devices()
    except OSError as exc:
        print(f"cannot list audio devices: {exc}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    if not devices:
        print("no capture devices found")
        return 0
    print(f"{'index':>5}  {'name':<32} {'host API':<10} {'channels':>8}  {'default':>7}  rates (Hz)")
    for d in devices:
        rates = ", ".join(str(r) for r in d["rates"]) or "?"
        print(f"{d['index']:>5}  {d['name']:<32} {d['host_api']:<10} {d['channels']:>8}  {d['rate']:>7}  {rates}")
    print('use one in a room: source = { type = "mic", device = "<index or part of the name>" }')
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from daemon.transcribe import transcribe_main

    return transcribe_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo import demo_main

    return demo_main(args)


def cmd_itn(args: argparse.Namespace) -> int:
    """The text stage as a filter: one line in, one line out, flushed at once (streaming).
    Bytes that are not UTF-8 pass through untouched (surrogateescape), so nothing is lost."""
    from pipeline.text.dictionary import DictionaryError
    from pipeline.text.processor import TextProcessor, TextSettings

    try:
        processor = TextProcessor(TextSettings(itn=True, fillers=args.fillers, dictionary=args.dictionary))
    except DictionaryError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG_ERROR
    out = sys.stdout.buffer
    for number, raw in enumerate(iter(sys.stdin.buffer.readline, b""), 1):
        body = raw.rstrip(b"\r\n")
        ending = raw[len(body) :]
        text = body.decode("utf-8", "surrogateescape")
        try:
            result = processor(text, args.lang)
        except Exception as exc:  # a bug in a rule must not stop the stream or lose the line
            print(f"line {number}: text rules failed ({exc!r}); line passed through", file=sys.stderr)
            result = text
        out.write(result.encode("utf-8", "surrogateescape") + ending)
        out.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roomscribe", description="Local, always-on speech to text over MQTT.")
    parser.add_argument("--version", action="version", version=f"roomscribe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="config file (default: $ROOMSCRIBE_CONFIG, /etc/roomscribe, ./)")

    p = sub.add_parser("run", help="run the daemon")
    with_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="a recognizer node: take recognition jobs from the broker ([remote])")
    p.add_argument("--id", default="", help="the worker's id in <prefix>/workers/<id> (default: host name and pid)")
    with_config(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check-config", help="validate a config file; exit 0, or 2 with one line per problem")
    with_config(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="zero set-up demo: embedded broker, bundled sample, prints utterances")
    p.add_argument("--mic", action="store_true", help="listen to the default microphone instead")
    p.add_argument("--config", type=Path, help="use this config's broker and recognizer instead")
    p.add_argument(
        "--language",
        choices=["en", "zh"],
        default="en",
        help="zh: a Mandarin sample on bundled:base (multilingual extra)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("transcribe", help="transcribe audio and video files and folders")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--out", type=Path, help="write outputs here (mirroring folders); default: beside each input")
    p.add_argument(
        "--format",
        default="txt",
        help="txt, srt, vtt, json or jsonl, or several joined by commas; jsonl without --out streams to stdout",
    )
    p.add_argument("--language", help="language code for multilingual models")
    p.add_argument("--jobs", type=int, help="files decoded at once (default: by CPU count); 1: the plain serial loop")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--force", action="store_true", help="redo files whose outputs already exist")
    p.add_argument("--verbose", action="store_true", help="log progress on stderr")
    with_config(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("itn", help="the text stage on stdin: one line in, one line out")
    p.add_argument("--lang", choices=("zh", "en"), required=True)
    p.add_argument("--fillers", action="store_true", help="also remove filler words")
    p.add_argument("--dictionary", type=Path, help="apply this 'wrong => right' file last")
    p.set_defaults(func=cmd_itn)

    p = sub.add_parser("devices", help="list capture devices")
    p.set_defaults(func=cmd_devices)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
