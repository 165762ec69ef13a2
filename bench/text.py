"""The text stage: accuracy on the shared cases per category, time per sentence, wetext beside it.

    python bench/text.py [--cases PATH]

Accuracy is exact match on ../shared/data/itn/cases.tsv (category, input, expected). Time per
sentence is measured over the cases and over the real transcripts in
../shared/data/speech/manifest.jsonl (each sentence 200 times, median and 99th percentile),
plus one long text: every transcript of a language joined into one line. wetext (WeTextProcessing's
FST runtime, a bench-only dependency: pip install wetext) runs the same ITN cases; it has no
filler removal. Prints a table and writes bench/results/text-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from pipeline.text.processor import TextProcessor, TextSettings
from tests.helpers import SHARED

REPEATS = 200


def load_cases(path: Path) -> list[tuple[str, str, str]]:
    with path.open(encoding="utf-8") as f:
        return [(r["category"], r["input"], r["expected"]) for r in csv.DictReader(f, delimiter="\t")]


def real_sentences() -> dict[str, list[str]]:
    manifest = SHARED / "data" / "speech" / "manifest.jsonl"
    out: dict[str, list[str]] = defaultdict(list)
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                out[entry["language"]].append(entry["text"])
    return out


def per_sentence_us(fn: Callable[[str], str], sentences: list[str]) -> list[float]:
    times = []
    for sentence in sentences:
        start = time.perf_counter()
        for _ in range(REPEATS):
            fn(sentence)
        times.append((time.perf_counter() - start) / REPEATS * 1e6)
    return times


def quantiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def wetext_normalizers() -> dict[str, Callable[[str], str]] | None:
    try:
        from wetext import Normalizer
    except ImportError:
        return None
    return {lang: Normalizer(lang=lang, operator="itn").normalize for lang in ("zh", "en")}


# Inputs that once took quadratic time (runs of numerals) and ordinary dense ones: the time
# per character at 10k and 1M characters; linear when the ratio stays near 1.
SCALING_SHAPES = {
    "digit run": "一二三四五六七八九零",
    "magnitudes": "一千二百",
    "dates": "三月五号，",
    "decimals": "一点",
}


def scaling_rows(ours: TextProcessor) -> list[dict[str, Any]]:
    rows = []
    for name, shape in SCALING_SHAPES.items():
        per_char = {}
        for n in (10_000, 1_000_000):
            text = (shape * (n // len(shape) + 1))[:n]
            start = time.perf_counter()
            ours(text, "zh")
            per_char[n] = (time.perf_counter() - start) / n * 1e6
        rows.append({
            "set": f"scaling zh: {name}", "cases": 2, "us_per_char_10k": round(per_char[10_000], 3),
            "us_per_char_1m": round(per_char[1_000_000], 3),
            "ratio_1m_to_10k": round(per_char[1_000_000] / per_char[10_000], 2),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=Path, default=SHARED / "data" / "itn" / "cases.tsv")
    args = parser.parse_args()
    cases = load_cases(args.cases) if args.cases.is_file() else []
    ours = TextProcessor(TextSettings(fillers=True))
    itn_only = TextProcessor(TextSettings(fillers=False))
    fillers_only = TextProcessor(TextSettings(itn=False))
    wetext = wetext_normalizers()
    rows: list[dict[str, Any]] = []
    failures: list[str] = []

    by_category: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for category, text, expected in cases:
        by_category[category].append((text, expected))
    for category, items in sorted(by_category.items()):
        kind, lang = category.split("-")
        processor = itn_only if kind == "itn" else fillers_only
        hits = 0
        for text, expected in items:
            out = processor(text, lang)
            hits += out == expected
            if out != expected:
                failures.append(f"{category}: {text} -> {out} (want {expected})")
        row: dict[str, Any] = {"set": category, "cases": len(items)}
        row["ours_exact_pct"] = round(100 * hits / len(items), 1)
        if wetext is not None and kind == "itn":
            row["wetext_exact_pct"] = round(100 * sum(wetext[lang](t) == e for t, e in items) / len(items), 1)
        rows.append(row)

    sentences = real_sentences()
    for lang in ("zh", "en"):
        sample = [t for c, t, _ in cases if c.endswith(f"-{lang}")] + sentences.get(lang, [])
        if not sample:
            continue
        row = {"set": f"time {lang}", "cases": len(sample)}
        ours_times = per_sentence_us(lambda s, lang=lang: ours(s, lang), sample)  # type: ignore[misc]
        row.update({f"ours_{k}": v for k, v in quantiles(ours_times).items()})
        if wetext is not None:
            row.update({f"wetext_{k}": v for k, v in quantiles(per_sentence_us(wetext[lang], sample)).items()})
        long_text = (" " if lang == "en" else "").join(sample)
        start = time.perf_counter()
        ours(long_text, lang)
        row["long_line_chars"] = len(long_text)
        row["long_line_ms"] = round((time.perf_counter() - start) * 1000, 2)
        rows.append(row)

    rows += scaling_rows(ours)
    write_results("text", rows, {"failures": failures})
    for line in failures:
        print("FAIL", line)


if __name__ == "__main__":
    main()
