from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.ct2 import ModelFormatError, read_ct2
from models.device import choose_device, choose_dtype, choose_encoder_dtype, cpu_flags, precision_name
from models.loading import ModelNotFoundError, dims_from_ct2, resolve_model, state_dict_from_ct2
from models.mel import mel_filters
from models.whisper import Whisper


@pytest.fixture(scope="module")
def bundled():  # type: ignore[no-untyped-def]
    files = resolve_model("bundled:tiny.en")
    return files, read_ct2(files.weights)


def test_bundled_ct2_file_reads_completely(bundled) -> None:  # type: ignore[no-untyped-def]
    _, ct2 = bundled
    assert ct2.spec == "WhisperSpec"
    assert ct2.variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert ct2.variables["decoder/embeddings/weight"].dtype == np.float16
    # The output projection is stored as an alias of the embeddings (tied weights).
    assert ct2.variables["decoder/projection/weight"] is ct2.variables["decoder/embeddings/weight"]
    dims = dims_from_ct2(ct2)
    assert (dims.n_encoder_layers, dims.n_decoder_layers, dims.width, dims.n_heads) == (4, 4, 384, 6)
    assert (dims.n_audio_ctx, dims.n_text_ctx, dims.n_mels) == (1500, 448, 80)
    assert not dims.multilingual


def test_every_weight_maps_to_a_parameter(bundled) -> None:  # type: ignore[no-untyped-def]
    _, ct2 = bundled
    model = Whisper(dims_from_ct2(ct2))
    state = state_dict_from_ct2(ct2)
    expected = dict(model.state_dict())
    assert set(state) == set(expected)
    for name, tensor in state.items():
        assert tuple(tensor.shape) == tuple(expected[name].shape), name
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    assert torch.equal(
        model.decoder.embeddings.weight, torch.from_numpy(ct2.variables["decoder/embeddings/weight"].astype(np.float32))
    )


def test_truncated_model_file_is_a_clear_error(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files, _ = bundled
    cut = tmp_path / "model.bin"
    cut.write_bytes(files.weights.read_bytes()[:100000])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_ct2(cut)


def test_not_a_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x63\x00\x00\x00" + b"junk" * 10)
    with pytest.raises(ModelFormatError, match="version 99"):
        read_ct2(bad)


def test_model_paths_that_are_not_models(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nothing"))
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"missing tokenizer\.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="unknown bundled model"):
        resolve_model("bundled:huge")


def test_mel_filterbank_is_slaney_normalised() -> None:
    filters = mel_filters(80)
    assert filters.shape == (80, 201)
    assert (filters >= 0).all()
    # Each triangle peaks once, at increasing frequencies; area-normalised so heights fall.
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()
    assert filters[0].max() > filters[-1].max()


def test_device_and_dtype_policy() -> None:
    assert choose_device("auto", 0) == "cpu"
    assert choose_device("auto", 2) == "cuda:0"
    assert choose_device("cuda:1", 2) == "cuda:1"
    with pytest.raises(RuntimeError, match="1 CUDA device"):
        choose_device("cuda:1", 1)
    assert choose_dtype("auto", "cpu") == "float32"
    assert choose_dtype("auto", "cuda:0") == "float16"
    assert choose_dtype("bfloat16", "cpu") == "bfloat16"


def test_auto_runs_the_encoder_in_bfloat16_only_on_a_cpu_that_multiplies_it_natively() -> None:
    amx = frozenset({"avx512f", "amx_tile", "amx_bf16"})
    zen4 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    assert choose_encoder_dtype("auto", "cpu", "float32", "none", amx) == "bfloat16"
    assert choose_encoder_dtype("auto", "cpu", "float32", "none", zen4) == "bfloat16"
    # Without AMX or AVX-512 BF16 bfloat16 is emulated (slower): float32 stays, as it does
    # on a GPU, with an explicit dtype and with int8.
    for emulated in (frozenset({"avx2", "avx512f", "avx512_vnni"}), frozenset({"avx2", "fma"})):
        assert choose_encoder_dtype("auto", "cpu", "float32", "none", emulated) == "float32"
    assert choose_encoder_dtype("auto", "cuda:0", "float16", "none", amx) == "float16"
    assert choose_encoder_dtype("float32", "cpu", "float32", "none", amx) == "float32"
    assert choose_encoder_dtype("auto", "cpu", "float32", "int8", amx) == "float32"
    assert precision_name("float32", "bfloat16") == "float32, encoder bfloat16"
    assert precision_name("float16", "float16") == "float16"
    assert isinstance(cpu_flags(), frozenset)
