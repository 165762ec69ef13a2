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


def cpu_info(key: str) -> str:
    """The first CPU's ``key`` line of /proc/cpuinfo ("flags", "model name"); empty where
    there is none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not)."""
    return frozenset(cpu_info("flags").split())


BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16(flags: frozenset[str]) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware: AMX tiles (Intel Xeon since Sapphire
    Rapids) or AVX-512 BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake). oneDNN
    uses either for torch's bfloat16 GEMMs; without them bfloat16 is emulated and slower."""
    return any(flag in flags for flag in BF16_FLAGS)


def choose_encoder_dtype(setting: str, device: str, dtype: str, quantize: str, flags: frozenset[str]) -> str:
    """The encoder's dtype: the model's, except that ``auto`` on a CPU that multiplies
    bfloat16 natively (``native_bf16``) runs the encoder in bfloat16. There a bfloat16 GEMM
    is 2-3x (AVX-512 BF16) to 3-7x (AMX) a float32 one, and the encoder (a 30 s window for
    Whisper, the whole model for SenseVoice) is where the arithmetic is; Whisper's decoder,
    whose steps are small and whose word choices are the fragile part, stays float32.
    tiny.en on bench/recognizer.py's 101 utterances: 5.40% -> 5.48% WER greedy, 5.24% both
    at beam 5 (docs/architecture.md, Precision). Without either bfloat16 is emulated and
    slower, so float32 stays.
    """
    if setting == "auto" and device == "cpu" and dtype == "float32" and quantize == "none" and native_bf16(flags):
        return "bfloat16"
    return dtype


def precision_name(dtype: str, encoder_dtype: str) -> str:
    """What status and logs call a model's precision: ``float32`` or ``float32, encoder bfloat16``."""
    return dtype if encoder_dtype == dtype else f"{dtype}, encoder {encoder_dtype}"


def avoid_per_shape_attention_plans() -> None:
    """Leave cuDNN out of scaled_dot_product_attention (flash, memory-efficient and math remain).

    cuDNN's attention builds an execution plan for every new shape, and decoding makes new
    shapes all the time: the key length grows by one per token, and batches differ in size
    and prompt length. On an H100 (torch 2.11, cu130) float16 ran at 49x real time on its
    first pass over 101 utterances and 124x once every shape had been seen, while float32,
    which cuDNN attention does not take, ran at 140x cold and warm; in `roomscribe transcribe`
    a sampling profile put 63% of the model thread on the attention call. Process-wide: the
    recognizer is the only attention user in the daemon.
    """
    import torch

    enable = getattr(torch.backends.cuda, "enable_cudnn_sdp", None)
    if enable is not None:
        enable(False)


def quantize_linear_int8(module: object, device: str, dtype: str) -> None:
    """Make ``module``'s linear layers dynamic int8 in place (CPU, float32 weights only).

    Weights are stored int8 with one scale per output channel (per-tensor scales lost 0.3
    points more of tiny.en's word error rate at the same speed); activations are quantized
    per call. torch.ao.quantization is deprecated in favour of torchao, but is still torch's
    own int8 CPU kernel path (fbgemm); its warnings are about that future.
    """
    import warnings

    import torch

    if not device.startswith("cpu") or dtype != "float32":
        raise ValueError("quantize = int8 needs device = cpu and dtype = float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*", category=UserWarning)
        torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]  # untyped in torch
            module,
            {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8,
            inplace=True,
        )
