"""The memory policy with an injected memory probe and a fake out-of-memory error."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest

from models.memory import (
    DEFAULT_CUDA_ALLOC_CONF,
    RECOVER_AFTER_BATCHES,
    BatchPolicy,
    available_ram_bytes,
    configure_cuda_allocator,
)

if TYPE_CHECKING:
    from models.recognizer import WhisperRecognizer

MB = 1 << 20


class FakeOOM(Exception):
    pass


def is_fake_oom(exc: BaseException) -> bool:
    return isinstance(exc, FakeOOM)


def test_auto_batch_follows_free_memory() -> None:
    free = {"bytes": 1000 * MB}
    policy = BatchPolicy("auto", per_item_bytes=100 * MB, free_bytes=lambda: free["bytes"])
    assert policy.size() == 5  # half of the free memory, 100 MB an item
    free["bytes"] = 150 * MB
    assert policy.size() == 1  # never zero
    free["bytes"] = 100_000 * MB
    assert policy.size() == policy.cap


def test_fixed_batch_size() -> None:
    assert BatchPolicy(4, per_item_bytes=1, free_bytes=lambda: 0).size() == 4


def test_oom_halves_and_loses_nothing() -> None:
    calls: list[int] = []
    released: list[bool] = []

    def call(items: Sequence[int]) -> list[int]:
        calls.append(len(items))
        if len(items) > 3:  # pretend anything above three items does not fit
            raise FakeOOM
        return [i * 10 for i in items]

    policy = BatchPolicy(8, per_item_bytes=1, free_bytes=lambda: 0)
    out = policy.run(list(range(10)), call, is_fake_oom, lambda: released.append(True))
    assert out == [i * 10 for i in range(10)]
    assert calls[:3] == [8, 4, 2]  # 8 fails, 4 fails, then 2 at a time
    assert policy.ooms == 2 and len(released) == 2
    assert policy.size() == 2


def test_single_item_is_retried_once_then_the_error_surfaces() -> None:
    attempts: list[int] = []

    def always_oom(items: Sequence[int]) -> list[int]:
        attempts.append(len(items))
        raise FakeOOM

    policy = BatchPolicy(1, per_item_bytes=1, free_bytes=lambda: 0)
    with pytest.raises(FakeOOM):
        policy.run([1], always_oom, is_fake_oom)
    assert attempts == [1, 1]


def test_other_errors_are_not_retried() -> None:
    def broken(items: Sequence[int]) -> list[int]:
        raise ValueError("bad audio")

    with pytest.raises(ValueError):
        BatchPolicy(4, per_item_bytes=1, free_bytes=lambda: 0).run([1, 2], broken, is_fake_oom)


def test_batch_size_grows_back_after_a_run_of_successes() -> None:
    policy = BatchPolicy(8, per_item_bytes=1, free_bytes=lambda: 0)
    policy.shrink(8)
    assert policy.size() == 4
    for _ in range(RECOVER_AFTER_BATCHES):
        policy.succeeded()
    assert policy.size() == 8


def test_cuda_allocator_setting_respects_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    configure_cuda_allocator(DEFAULT_CUDA_ALLOC_CONF)
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == DEFAULT_CUDA_ALLOC_CONF
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    configure_cuda_allocator(DEFAULT_CUDA_ALLOC_CONF)
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_available_ram_is_plausible() -> None:
    assert 64 * MB < available_ram_bytes() < 1 << 50


def test_recognizer_survives_a_real_oom_in_its_model_call(
    recognizer: WhisperRecognizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real recognizer: its batch call fails with torch's OOM above two items."""
    import torch

    from tests.helpers import SENTENCES, speak

    original = recognizer._recognize_batch

    def flaky(audios, language, prompts, hotwords, timestamps=False, sentence_end=False):  # type: ignore[no-untyped-def]
        if len(audios) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(audios, language, prompts, hotwords, timestamps, sentence_end)

    monkeypatch.setattr(recognizer, "_recognize_batch", flaky)
    monkeypatch.setattr(recognizer, "batch_policy", BatchPolicy(4, 1, lambda: 0))
    audios = [speak(s) for s in SENTENCES[:4]]
    results = recognizer.recognize(audios)
    assert len(results) == 4 and all(r.text for r in results)
    assert recognizer.batch_policy.ooms == 1


def test_heap_trim_gives_freed_memory_back() -> None:
    """glibc keeps freed pages; malloc_trim returns them: resident memory falls after a big
    allocation pattern is freed and the heap trimmed."""
    import ctypes
    import platform

    import psutil

    from models.memory import trim_heap

    if platform.libc_ver()[0] != "glibc":
        assert trim_heap() is False
        return
    process = psutil.Process()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # Many small blocks (below the mmap threshold, so they live in the heap), touched.
    blocks = [libc.malloc(60_000) for _ in range(2000)]
    for b in blocks:
        ctypes.memset(b, 1, 60_000)
    before_free = process.memory_info().rss
    for b in blocks[:-1]:  # the last one stays: the heap's top cannot simply shrink
        libc.free(b)
    after_free = process.memory_info().rss
    assert trim_heap() is True
    after_trim = process.memory_info().rss
    libc.free(blocks[-1])
    assert after_trim < after_free - 50_000_000, (before_free, after_free, after_trim)


def test_cuda_attention_leaves_out_cudnn_plans() -> None:
    # What a recognizer on CUDA calls before loading (see its docstring for the measurement).
    import torch

    from models.device import avoid_per_shape_attention_plans

    before = torch.backends.cuda.cudnn_sdp_enabled()  # type: ignore[no-untyped-call]  # untyped in torch
    try:
        avoid_per_shape_attention_plans()
        assert not torch.backends.cuda.cudnn_sdp_enabled()  # type: ignore[no-untyped-call]
        cuda = torch.backends.cuda
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled()  # type: ignore[no-untyped-call]
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
