"""Hotwords: recall with and without biasing, and how often ordinary text is wrongly changed.

    python bench/hotwords.py

Recall: espeak-ng speaks sentences with a rare name or term in them; we count the outputs
that contain it (and the word error rate of the whole sentences), with no hotwords, with
the hotword in the prompt only, with the prompt and
the logit boost (recognizer.hotword_weight), and with the text stage's correction on top.
False changes: the text stage's correction, given the whole hotword list, over ordinary text
(the espeak sentences and every transcript in ../shared/data/speech, English and Chinese):
the share of sentences it changes (target below 1%); and the share of ordinary spoken
sentences into which biased decoding puts a hotword. Prints a table and writes
bench/results/hotwords-<device>-<date>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from models.tokenizer import latin_script
from pipeline.text.processor import TextProcessor, TextSettings
from tests.helpers import SENTENCES, SHARED, normalize, speak

CASES = [
    ("Kubernetes", "We run the service on Kubernetes."), ("Okonkwo", "Send the report to Okonkwo today."),
    ("Xiaomei", "Please call Xiaomei after lunch."), ("Siobhan", "Siobhan will join the meeting later."),
    ("Grafana", "The dashboard is in Grafana."), ("PostgreSQL", "The data lives in PostgreSQL."),
    ("Nginx", "Restart Nginx on the server."), ("Tailscale", "Connect through Tailscale first."),
    ("Jellyfin", "Start the film on Jellyfin."), ("Proxmox", "The virtual machine runs on Proxmox."),
    ("Zigbee", "The sensor talks Zigbee."), ("Mosquitto", "The broker is Mosquitto."),
    ("Nextcloud", "Save the photos to Nextcloud."), ("Zorvath", "Tomorrow I will meet Zorvath at the station."),
    ("Anouk", "Anouk is coming for dinner."), ("Thandiwe", "Thandiwe booked the flights."),
]  # fmt: skip
OTHER_HOTWORDS = ["roomscribe", "Home Assistant", "Node-RED", "Raspberry Pi", "张晓梅", "李明", "王建国", "深圳湾"]


def main() -> None:
    from models.api import DecodingOptions
    from models.engines import load_recognizer

    hotwords = [h for h, _ in CASES] + OTHER_HOTWORDS
    boosted = load_recognizer("bundled:tiny.en", "cpu", "float32")
    prompt_only = load_recognizer("bundled:tiny.en", "cpu", "float32", DecodingOptions(hotword_weight=0.0))
    weights = {
        w: load_recognizer("bundled:tiny.en", "cpu", "float32", DecodingOptions(hotword_weight=w)) for w in (1.0, 4.0)
    }
    text = TextProcessor(TextSettings(itn=False, fillers=False))
    audios = [speak(sentence) for _, sentence in CASES]

    def recall(outputs: list[str]) -> float:
        return round(
            100 * sum(h.lower() in o.lower() for (h, _), o in zip(CASES, outputs, strict=True)) / len(CASES), 1
        )

    def wer(outputs: list[str]) -> float:
        import jiwer

        refs = [normalize(sentence) for _, sentence in CASES]
        return round(100 * jiwer.wer(refs, [normalize(o) or "-" for o in outputs]), 1)

    plain = [r.text for r in boosted.recognize(audios)]
    # As the recognize stage builds it: an English-only model gets the Latin-script hotwords
    # (in its prompt and for its decoding bias); the text stage's correction gets them all.
    decoding = [w for w in hotwords if latin_script(w)]
    prompt = ", ".join(decoding)
    prompts = [prompt] * len(audios)
    with_prompt = [r.text for r in prompt_only.recognize(audios, prompts=prompts)]
    with_boost = [r.text for r in boosted.recognize(audios, prompts=prompts, hotwords=[decoding] * len(audios))]
    corrected = [text(t, "en", hotwords) for t in with_boost]
    by_weight = {
        w: [r.text for r in rec.recognize(audios, prompts=prompts, hotwords=[decoding] * len(audios))]
        for w, rec in weights.items()
    }

    def row(name: str, outputs: list[str]) -> dict[str, Any]:
        return {"set": name, "cases": len(CASES), "pct": recall(outputs), "sentence_wer_pct": wer(outputs)}

    rows: list[dict[str, Any]] = [row("recall: no hotwords", plain), row("recall: prompt only", with_prompt)]
    rows += [row(f"recall: prompt + boost {w}", o) for w, o in by_weight.items()]
    rows.append(row(f"recall: prompt + boost {boosted.options.hotword_weight} (default)", with_boost))
    rows.append(row("recall: prompt + boost + correction", corrected))

    ordinary: list[tuple[str, str]] = [(s, "en") for s in SENTENCES]
    manifest = SHARED / "data" / "speech" / "manifest.jsonl"
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                sentence = entry["text"] if entry["language"] != "en" else entry["text"].capitalize()
                ordinary.append((sentence, entry["language"]))
    changed = [(s, text(s, lang, hotwords)) for s, lang in ordinary]
    changed = [(s, c) for s, c in changed if c != s]
    rows.append(
        {
            "set": "false corrections on ordinary text",
            "cases": len(ordinary),
            "pct": round(100 * len(changed) / len(ordinary), 2),
        }
    )

    spoken = [speak(s) for s in SENTENCES]
    results = boosted.recognize(spoken, prompts=[prompt] * len(spoken), hotwords=[decoding] * len(spoken))
    biased = [r.text for r in results]
    inserted = [o for o in biased if any(h.lower() in o.lower() for h in hotwords)]
    rows.append(
        {
            "set": "hotword put into ordinary speech",
            "cases": len(spoken),
            "pct": round(100 * len(inserted) / len(spoken), 1),
        }
    )
    write_results(
        "hotwords",
        rows,
        {
            "outputs": {"plain": plain, "prompt": with_prompt, "boost": with_boost, "corrected": corrected},
            "false_corrections": changed,
            "insertions": inserted,
        },
    )


if __name__ == "__main__":
    main()
