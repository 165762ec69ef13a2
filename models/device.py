"""Device and dtype policy: plain functions that tests can call without a GPU."""

from __future__ import annotations

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def choose_device(setting: str, cuda_count: int) -> str:
    """``auto`` takes the first GPU when there is one, the CPU otherwise."""
    if setting == "auto":
        return "cuda:0" if cuda_count > 0 else "cpu"
    if setting.startswith("cuda"):
        index = int(setting.partition(":")[2] or 0)
        if index >= cuda_count:
            raise RuntimeError(f"recognizer.device = {setting!r} but this machine has {cuda_count} CUDA device(s)")
        return f"cuda:{index}"
    return "cpu"


def choose_dtype(setting: str, device: str) -> str:
    """``auto`` is float16 on a GPU (with float32 for fragile ops) and float32 on a CPU."""
    if setting == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return setting
