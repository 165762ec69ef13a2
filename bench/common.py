"""Shared bits for the benchmarks: result files and the table printout."""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    from models.device import cpu_flags, cpu_info

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    flags = cpu_flags()
    return {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        # The shared box is not always the same CPU (an AMD EPYC with or without AVX-512
        # BF16 in some sessions, an Intel Xeon with AMX tiles in others), and dtype auto
        # depends on it (models/device.native_bf16).
        "cpu_model": cpu_info("model name"),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_results(name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    """Print a table of ``rows`` and write them, with the machine, to bench/results/."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    widths = {k: max(len(k), *(len(str(row.get(k, ""))) for row in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(str(row.get(k, "")).ljust(widths[k]) for k in keys))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    info = machine()
    where = (info["gpu"] or "cpu").replace(" ", "-").lower()
    path = RESULTS / f"{name}-{where}-{stamp}.json"
    if _other_machine(path, info):  # the shared box changed CPUs the same day: keep both
        path = RESULTS / f"{name}-{where}-{stamp}-{cpu_tag(info['cpu_model'])}.json"
    payload = {"benchmark": name, "date": stamp, "machine": info, "rows": rows, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def cpu_tag(model: str | None) -> str:
    """``Intel(R) Xeon(R) Processor`` -> ``intel-xeon``: a CPU's name for a file name."""
    words = re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", re.sub(r"\((?:r|tm)\)", "", (model or "unknown").lower()))
    return "-".join(w for w in words if w not in ("processor", "cpu", "core"))[:40] or "unknown"


def _other_machine(path: Path, info: dict[str, Any]) -> bool:
    """``path`` holds results from another CPU (a run on this one would overwrite them)."""
    try:
        earlier = json.loads(path.read_text())["machine"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(earlier.get("cpu_model") != info["cpu_model"])
