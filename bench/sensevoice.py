"""SenseVoice-Small's speed, random weights at the full size, beside our Whisper engines.

    python bench/sensevoice.py [--repeat 5] [--rounds 3] [--modes sv-ours,sv-reference,whisper-tiny.en,whisper-base]

No registry ships SenseVoice weights, so its rows time the real architecture (512 wide,
50 + 20 SAN-M blocks, 25055-token CTC head: 234M parameters) with random weights; they are
labelled so. Words do not matter to the time of a non-autoregressive model: one encoder
pass and a greedy read-out, whatever the weights say. (Text decoding is left out of the
SenseVoice rows: SentencePiece on a few dozen ids takes microseconds, and random ids fall
outside the test tokenizer.) The Whisper rows are the real models (tiny.en, multilingual
base), greedy, on the same audio: espeak-ng speech cut to 2, 5 and 10 s.

Ours runs at the daemon's default precision (``dtype = auto``: on a CPU with AMX tiles, a
bfloat16 encoder, which for SenseVoice is all of it); the -fp32 modes keep all of it float32;
the -int8 modes are float32 with ``recognizer.quantize = "int8"`` (every linear layer).
Per mode, in its own process (its own peak RSS): median latency per utterance for
each length at batch 1 (after a warm-up), throughput (audio seconds per second) at batch 1
and at the best batch, peak RSS; the modes run interleaved ``--rounds`` times and each
number is its median over the rounds. sv-reference is FunASR's implementation with the same weights
(funasr, bench/test-only). Writes bench/results/sensevoice-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results

LENGTHS = (2.0, 5.0, 10.0)
BATCHES = (1, 2, 4, 8, 16)
MODES = (
    "sv-ours",
    "sv-ours-fp32",
    "sv-ours-int8",
    "sv-reference",
    "whisper-tiny.en",
    "whisper-tiny.en-fp32",
    "whisper-tiny.en-int8",
    "whisper-base",
)


def clips() -> dict[float, np.ndarray]:
    from tests.helpers import SENTENCES, speak

    speech = np.concatenate([speak(s) for s in SENTENCES])
    return {length: speech[: int(length * 16000)].copy() for length in LENGTHS}


def full_folder(root: Path) -> Path:
    """A SenseVoiceSmall folder at the published size, random weights (seeded)."""
    import torch

    from models.sensevoice.encoder import EncoderConfig, SenseVoiceModel
    from tests.sensevoice_reference import make_own_folder

    # The small folder's tokenizer, CMVN and config, with full-size weights in place of its own.
    folder = make_own_folder(root / "SenseVoiceSmall", "to")
    torch.manual_seed(0)
    torch.save(SenseVoiceModel(EncoderConfig()).state_dict(), folder / "model.pt")
    return folder


class _NoText:
    """The reference's inference decodes ids to text; random ids need not be in a vocabulary."""

    def decode(self, ids: list[int]) -> str:
        return ""


def _runner(mode: str, folder: Path) -> Any:
    """Ours at the daemon's default precision (dtype auto), -fp32 all float32, -int8 int8."""
    import torch

    from models.api import DecodingOptions
    from models.engines import load_recognizer

    quantize = "int8" if mode.endswith("-int8") else "none"
    dtype = "float32" if mode.endswith(("-fp32", "-int8")) else "auto"
    if mode.startswith("sv-ours"):
        from models.sensevoice.recognizer import SenseVoiceRecognizer

        # Loaded as the daemon loads it, so the precision is the daemon's choice.
        engine = load_recognizer(str(folder), "cpu", dtype, quantize=quantize)
        assert isinstance(engine, SenseVoiceRecognizer)

        def run(batch: list[np.ndarray]) -> None:
            with torch.inference_mode():
                logprobs, rows = engine.logprobs(batch)
                for i in range(len(batch)):
                    torch.unique_consecutive(logprobs[i, : rows[i]].argmax(-1)).tolist()

        return run
    if mode == "sv-reference":
        return _reference_runner(folder)
    name = mode.removeprefix("whisper-").removesuffix("-int8").removesuffix("-fp32")
    whisper = load_recognizer(f"bundled:{name}", "cpu", dtype, DecodingOptions(), quantize=quantize)
    language = "en" if name == "base" else None
    return lambda batch: whisper.recognize(batch, language=language)


def _reference_runner(folder: Path) -> Any:
    import torch
    from funasr.frontends.wav_frontend import WavFrontend
    from funasr.models.sense_voice.model import SenseVoiceSmall

    from tests.sensevoice_reference import FRONTEND, FULL, reference_encoder_conf

    conf = reference_encoder_conf(FULL)
    model = SenseVoiceSmall(encoder="SenseVoiceEncoderSmall", encoder_conf=conf, input_size=560, vocab_size=25055)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    model.eval()
    frontend = WavFrontend(cmvn_file=str(folder / "am.mvn"), dither=0.0, **FRONTEND)

    def run(batch: list[np.ndarray]) -> None:
        waves = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(a) for a in batch], batch_first=True)
        with torch.no_grad():
            feats, lengths = frontend(waves, torch.tensor([len(a) for a in batch]))
            model.inference(
                feats, lengths, key=["u"] * len(batch), tokenizer=_NoText(), data_type="fbank", device="cpu"
            )

    return run


_calls = iter(range(1, 1 << 30))


def _fresh(batch: list[np.ndarray]) -> list[np.ndarray]:
    """Every item of every call a different array (a DC offset of a few millionths): the
    Whisper engine keeps the encoder outputs of audio it has seen (models/encoded.py), and
    a repeated clip would time a cache hit, not a recognition."""
    return [(a + np.float32(next(_calls) * 1e-6)).astype(np.float32) for a in batch]


def _timed(run: Any, batch: list[np.ndarray], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        items = _fresh(batch)
        start = time.perf_counter()
        run(items)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(mode: str, folder: Path, repeat: int) -> dict[str, Any]:
    audio = clips()
    run = _runner(mode, folder)
    run(_fresh([audio[5.0]]))  # warm-up
    row: dict[str, Any] = {"mode": mode, "weights": "random, full size" if mode.startswith("sv") else "real"}
    for length, clip in audio.items():
        row[f"latency_{length:g}s_ms"] = round(_timed(run, [clip], repeat) * 1000, 1)
    five = audio[5.0]
    throughput = {}
    for batch in BATCHES if mode.startswith("sv") else (1, 8):
        seconds = _timed(run, [five] * batch, max(1, repeat // 2))
        throughput[batch] = round(5.0 * batch / seconds, 1)
    best = max(throughput, key=lambda b: throughput[b])
    row.update(
        throughput_b1=throughput[1],
        throughput_best=throughput[best],
        best_batch=best,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )
    return row


RATIOS = {
    "sv_5s_over_tiny_en_5s": ("sv-ours", "whisper-tiny.en"),
    "sv_5s_over_tiny_en_fp32_5s": ("sv-ours", "whisper-tiny.en-fp32"),
    "sv_fp32_5s_over_tiny_en_fp32_5s": ("sv-ours-fp32", "whisper-tiny.en-fp32"),
    "sv_5s_over_sv_fp32_5s": ("sv-ours", "sv-ours-fp32"),
    "sv_fp32_over_reference_5s": ("sv-ours-fp32", "sv-reference"),
    "sv_int8_5s_over_tiny_en_5s": ("sv-ours-int8", "whisper-tiny.en"),
    "sv_int8_5s_over_tiny_en_int8_5s": ("sv-ours-int8", "whisper-tiny.en-int8"),
    "sv_ours_over_reference_5s": ("sv-ours", "sv-reference"),
    "sv_int8_5s_over_sv_fp32_5s": ("sv-ours-int8", "sv-ours-fp32"),
}


def median_row(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per mode: the median over rounds of every measured number (the best batch and
    peak RSS of the round with the median throughput)."""
    timed = [k for k in rounds[0] if k.startswith(("latency_", "throughput_"))]
    middle = sorted(rounds, key=lambda r: r["throughput_best"])[len(rounds) // 2]
    row = {**middle, **{k: round(statistics.median(r[k] for r in rounds), 1) for k in timed}}
    row["rounds"] = len(rounds)
    return row


def five_second_ratios(by_mode: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Latency ratios for 5 s of audio, between modes measured in this run."""
    return {
        name: round(by_mode[a]["latency_5s_ms"] / by_mode[b]["latency_5s_ms"], 3)
        for name, (a, b) in RATIOS.items()
        if a in by_mode and b in by_mode
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="times every mode runs, interleaved (median)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.folder, args.repeat)))
        return
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = full_folder(Path(tmp))
        # Rounds interleave the modes: this shared box drifts by 10-30% within minutes, and
        # a mode measured only while a neighbour was busy would skew every ratio it is in.
        for _ in range(args.rounds):
            for mode in modes:
                command = [sys.executable, __file__, "--one", mode, "--folder", str(folder)]
                command += ["--repeat", str(args.repeat)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    errors[mode] = done.stderr.strip().splitlines()[-1]
                    continue
                runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = [median_row(runs[mode]) if runs[mode] else {"mode": mode, "error": errors[mode]} for mode in modes]
    ratios = five_second_ratios({r["mode"]: r for r in rows if "error" not in r})
    print(json.dumps(ratios))
    extra = {"ratios": ratios, "repeat": args.repeat, "rounds": args.rounds, "lengths_s": list(LENGTHS)}
    write_results("sensevoice", rows, extra)


if __name__ == "__main__":
    main()
