"""Short files recognized twice: how often the segments' text replaces the whole-audio text.

    python bench/short_files.py [--files 60] [--seed 11]

`roomscribe transcribe` recognizes a file of at most 30 s whole, and when its VAD found
several segments also as its chunk, keeping the whole text unless it has under 90% of the
chunk's words (pipeline/chunks.keep_whole): without timestamps Whisper may stop at a pause.
This bench measures what that second recognition is worth. Files of 8-28 s are built by a
rule (seeded) from the recorded English clips of ../shared/data/speech under 12 s and the
espeak-ng sentences of bench/batch.py, with 0.8-2.5 s pauses; one `roomscribe transcribe
--verbose` run; from its "short file settled" lines, per file: which text stood and both
word counts; the words the replacements kept (segment words less whole words, what skipping
the second recognition would have lost), and the WER of what was written. Nothing is tuned
here. Writes bench/results/short_files-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.batch import build, transcribe
from bench.common import write_results
from tests.helpers import wer


def run(folder: Path) -> tuple[dict[str, str], dict[str, dict[str, Any]], dict[str, Any]]:
    """Texts by file, the "short file settled" records by file, and the run's summary."""
    _, texts, records = transcribe(folder, [])
    settled = {Path(r["file"]).name: r for r in records if r.get("event") == "short file settled"}
    done = [r for r in records if r.get("event") == "transcribe done"]
    summary = {k: done[-1][k] for k in ("wall_s", "model_s", "model_calls", "segments")} if done else {}
    return texts, settled, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        references = build(
            Path(tmp), args.files, args.seed, seconds=(8, 28), at_most_s=29, pieces_under_s=12, name="short", tail_s=0.5
        )
        texts, settled, summary = run(Path(tmp))
    names = sorted(references)
    rows = [
        {"file": n, "kept": r["kept"], "whole_words": r["whole_words"], "segment_words": r["segment_words"],
         "ratio": round(r["whole_words"] / max(1.0, r["segment_words"]), 2)}
        for n, r in sorted(settled.items())
    ]  # fmt: skip
    replaced = [r for r in rows if r["kept"] == "segments"]
    extra = {
        "files": len(names),
        "recognized_twice": len(rows),
        "replaced": len(replaced),
        "words_saved_by_replacing": sum(r["segment_words"] - r["whole_words"] for r in replaced),
        "reference_words": sum(len(references[n].split()) for n in names),
        "wer_pct": round(100 * wer([references[n] for n in names], [texts.get(n, "") for n in names]), 2),
        "run": summary,
        "seed": args.seed,
    }
    print(json.dumps({k: v for k, v in extra.items() if k != "run"}))
    write_results("short_files", rows, extra)


if __name__ == "__main__":
    main()
