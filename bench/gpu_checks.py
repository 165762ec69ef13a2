"""The memory policy and the time split on a real CUDA device (skipped without one).

    python bench/gpu_checks.py [--model bundled:tiny.en|DIR] [--pack audio.npz]

What the unit tests check with an injected probe and a fake out-of-memory error, on a
real card: the batch size ``auto`` picks from free memory, an out-of-memory error from a
batch that does not fit (the card filled up to a few hundred MB first) halves the batch and
loses no utterance, and ``release_memory`` gives the cached memory back. Also the time
split of one recognition: encoder against decoder, float16 and float32, batch 1 and 16.
Prints a table and writes bench/results/gpu_checks-<card>-<date>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from models.memory import DEFAULT_CUDA_ALLOC_CONF, configure_cuda_allocator

MB = 2**20


def timed(fn: Any, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in ms, the device synchronized around each call."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def time_split(model: str, audios: list[np.ndarray], device: str = "cuda") -> list[dict[str, Any]]:
    import torch

    from models.engines import load_recognizer

    rows = []
    clip = max(audios[:20], key=len)
    for dtype in ("float16", "float32"):
        recognizer = load_recognizer(model, device, dtype, batch_size=16)
        rows += [_split_one(recognizer, clip, batch) for batch in (1, 16)]
        del recognizer
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _split_one(recognizer: Any, clip: np.ndarray, batch: int) -> dict[str, Any]:
    import torch

    from models.mel import log_mel_spectrogram

    samples = torch.from_numpy(clip)[None].repeat(batch, 1).to(recognizer.device)
    mel = log_mel_spectrogram(samples, recognizer.model.dims.n_mels).to(getattr(torch, recognizer.dtype))
    with torch.inference_mode():
        encoder_ms = timed(lambda: recognizer.model.encoder(mel))
    total_ms = timed(lambda: recognizer.recognize([clip] * batch))
    return {
        "check": f"time split {recognizer.dtype} batch {batch}",
        "clip_s": round(len(clip) / 16000, 1),
        "encoder_ms": round(encoder_ms, 1),
        "recognize_ms": round(total_ms, 1),
        "decoder_share_pct": round(100 * (1 - encoder_ms / total_ms)),
    }


def memory_policy(model: str, audios: list[np.ndarray]) -> list[dict[str, Any]]:
    import torch

    from models.engines import load_recognizer

    rows: list[dict[str, Any]] = []
    recognizer = load_recognizer(model, "cuda", "float16", batch_size="auto")
    free, _total = torch.cuda.mem_get_info()
    rows.append(
        {
            "check": "auto batch from free memory",
            "free_mb": round(free / MB),
            "per_item_mb": round(recognizer.batch_policy.per_item_bytes / MB, 1),
            "auto_batch": recognizer.batch_policy.size(),
            "ok": recognizer.batch_policy.size() >= 1,
        }
    )
    items = [audios[i % len(audios)] for i in range(64)]
    reference = [r.text for r in recognizer.recognize(items[:8])]
    # Fill the card so that a batch of 64 cannot fit but a few utterances can.
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    headroom = 300 * MB
    filler = torch.empty(max(0, free - headroom), dtype=torch.uint8, device="cuda")
    recognizer.batch_policy.setting = 64
    started = time.perf_counter()
    results = recognizer.recognize(items)
    seconds = time.perf_counter() - started
    policy = recognizer.batch_policy
    rows.append(
        {
            "check": "real out-of-memory halves the batch",
            "headroom_mb": headroom // MB,
            "utterances_in": len(items),
            "utterances_out": len(results),
            "ooms": policy.ooms,
            "batch_after": policy.size(),
            "same_text_as_unfilled": [r.text for r in results[:8]] == reference,
            "seconds": round(seconds, 2),
            "ok": len(results) == len(items) and policy.ooms > 0 and [r.text for r in results[:8]] == reference,
        }
    )
    del filler
    recognizer.batch_policy.setting = 32
    recognizer.recognize(items[:32])
    before = torch.cuda.memory_reserved()
    recognizer.release_memory()
    after = torch.cuda.memory_reserved()
    rows.append(
        {
            "check": "release_memory gives the cache back",
            "reserved_before_mb": round(before / MB),
            "reserved_after_mb": round(after / MB),
            "allocated_mb": round(torch.cuda.memory_allocated() / MB),
            "ok": after < before,
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled:tiny.en")
    parser.add_argument("--pack", type=Path, help="audio written by bench/recognizer.py --write-pack")
    parser.add_argument("--try-on-cpu", action="store_true", help="run the time split on the CPU (a dry run)")
    args = parser.parse_args()
    if args.try_on_cpu:
        from bench.recognizer import dataset

        print(time_split(args.model, dataset(quick=True, pack=args.pack)[0][:3], "cpu"))
        return
    configure_cuda_allocator(DEFAULT_CUDA_ALLOC_CONF)  # before CUDA initializes, as the daemon does
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    from bench.recognizer import dataset

    audios, _refs = dataset(quick=True, pack=args.pack)
    rows: list[dict[str, Any]] = []
    for part in (memory_policy, time_split):
        try:
            rows += part(args.model, audios)
        except Exception as exc:  # report and go on: one broken check must not hide the others
            rows.append({"check": part.__name__, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
    write_results("gpu_checks", rows, {"alloc_conf": DEFAULT_CUDA_ALLOC_CONF})


if __name__ == "__main__":
    main()
