"""Device memory policy: batch size from free memory, halving on out-of-memory, cache release.

Plain functions and a small class, so tests can inject the memory probe and a fake
out-of-memory error without a GPU.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

DEFAULT_CUDA_ALLOC_CONF = "garbage_collection_threshold:0.8,max_split_size_mb:128"
# Use at most this share of the free memory for one batch: the rest is for the allocator's
# fragmentation, other rooms' VADs and whatever else runs on the machine.
FREE_MEMORY_SHARE = 0.5
MAX_AUTO_BATCH = 32
# After this many successful batches at a reduced size, try the next size up again.
RECOVER_AFTER_BATCHES = 50

T = TypeVar("T")
R = TypeVar("R")


def configure_cuda_allocator(setting: str) -> None:
    """Set PYTORCH_CUDA_ALLOC_CONF before CUDA initializes; an explicit environment wins."""
    if setting:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", setting)


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (what the kernel could give without swapping)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def free_device_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return available_ram_bytes()


def bytes_per_item(
    n_audio_ctx: int, width: int, n_heads: int, n_layers: int, n_text_ctx: int, dtype_bytes: int, beam: int
) -> int:
    """A deliberately generous estimate of the memory one utterance needs in a batch."""
    mel = 80 * 2 * n_audio_ctx * 4
    encoder = 8 * 2 * n_audio_ctx * width * dtype_bytes  # conv output, residual, q/k/v, ffn hidden
    attention = n_heads * n_audio_ctx * n_audio_ctx * 4  # one layer's scores, if not fused
    cross_kv = 2 * n_layers * n_audio_ctx * width * dtype_bytes * beam
    self_kv = 2 * n_layers * n_text_ctx * width * dtype_bytes * beam * 2  # the cache is copied per step
    return mel + encoder + attention + cross_kv + self_kv


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # The CPU allocator raises a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def release_cached_memory(device: str) -> None:
    """Give cached device memory back (CUDA caching allocator) and collect garbage."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


_LIBC: object | None = None


def trim_heap() -> bool:
    """Hand freed heap memory back to the system (glibc's malloc_trim); False where there is
    no glibc. On a CPU every recognition allocates and frees hundreds of MB of activations
    in sizes that vary with the batch; glibc keeps the freed pages, fragmented, and resident
    memory creeps up over hours (bench/soak.py measured +7 MiB a minute). Trimming after each
    call keeps it flat, for a millisecond or two."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL("libc.so.6")  # glibc on Linux, without asking ldconfig
        except OSError:
            name = ctypes.util.find_library("c")
            try:
                _LIBC = ctypes.CDLL(name) if name else False
            except OSError:
                _LIBC = False
        if _LIBC and not hasattr(_LIBC, "malloc_trim"):
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)  # type: ignore[attr-defined]
    return True


@dataclass
class BatchPolicy:
    """How many utterances go into one model call.

    ``setting`` is a fixed size or ``"auto"`` (free memory / per-item estimate). An
    out-of-memory error halves the size for the next batches; it grows back after a run of
    successful batches.
    """

    setting: int | str
    per_item_bytes: int
    free_bytes: Callable[[], int]
    cap: int = MAX_AUTO_BATCH
    ooms: int = 0
    _limit: int | None = None
    _successes: int = 0

    def size(self) -> int:
        if isinstance(self.setting, int):
            wanted = self.setting
        else:
            wanted = int(self.free_bytes() * FREE_MEMORY_SHARE // max(1, self.per_item_bytes))
            wanted = min(self.cap, wanted)
        if self._limit is not None:
            wanted = min(wanted, self._limit)
        return max(1, wanted)

    def shrink(self, failed_size: int) -> None:
        self.ooms += 1
        self._limit = max(1, failed_size // 2)
        self._successes = 0

    def succeeded(self) -> None:
        if self._limit is None:
            return
        self._successes += 1
        if self._successes >= RECOVER_AFTER_BATCHES:
            self._limit *= 2
            self._successes = 0

    def run(
        self,
        items: Sequence[T],
        call: Callable[[Sequence[T]], list[R]],
        is_oom: Callable[[BaseException], bool],
        on_oom: Callable[[], None] = lambda: None,
    ) -> list[R]:
        """``call`` on consecutive slices of ``items``; an out-of-memory slice is retried in
        halves, so no item is lost. A single item is retried once after releasing cached
        memory; only if it still does not fit is that an error."""
        results: list[R] = []
        start = 0
        single_retried = False
        while start < len(items):
            size = min(self.size(), len(items) - start)
            try:
                results.extend(call(items[start : start + size]))
            except Exception as exc:
                if not is_oom(exc) or (size == 1 and single_retried):
                    raise
                on_oom()
                self.shrink(size)
                single_retried = size == 1
                continue
            self.succeeded()
            single_retried = False
            start += size
        return results
