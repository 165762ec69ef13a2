"""Every checkpoint format loads into the same model: the bundled CTranslate2 weights are
written out as an OpenAI .pt checkpoint and as a Hugging Face safetensors folder (by the
converters below, the inverse of models/loading.py), and must give identical transcripts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from models.ct2 import ModelFormatError, read_ct2
from models.loading import ModelNotFoundError, dims_from_ct2, resolve_model, state_dict_from_ct2
from models.whisper import WhisperDims
from tests.helpers import SENTENCES, speak

if TYPE_CHECKING:
    from models.recognizer import WhisperRecognizer


def split_attention(state: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Our fused layout -> separate q/k/v/o per attention block (canonical names)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        prefix, _, rest = name.rpartition(".attention.") if ".attention." in name else ("", "", "")
        if not prefix:
            prefix, _, rest = name.rpartition(".self_attention.") if ".self_attention." in name else ("", "", "")
            block = "self_attention"
        else:
            block = "attention"
        if not prefix or rest.startswith("layer_norm"):
            out[name] = tensor
            continue
        linear, kind = rest.split(".")
        base = f"{prefix}.{block}"
        if block == "self_attention" and linear == "linear_0":
            for part, chunk in zip("qkv", torch.split(tensor, width), strict=True):
                out[f"{base}.{part}.{kind}"] = chunk
        elif block == "attention" and linear == "linear_1":
            for part, chunk in zip("kv", torch.split(tensor, width), strict=True):
                out[f"{base}.{part}.{kind}"] = chunk
        elif linear == "linear_0":
            out[f"{base}.q.{kind}"] = tensor
        else:
            out[f"{base}.o.{kind}"] = tensor
    return {k: v for k, v in out.items() if not k.endswith(".k.bias")}  # Whisper's key has no bias


def to_openai(state: dict[str, torch.Tensor], dims: WhisperDims) -> dict[str, object]:
    renames = [
        ("encoder.position_encodings.encodings", "encoder.positional_embedding"),
        ("decoder.position_encodings.encodings", "decoder.positional_embedding"),
        ("decoder.embeddings.weight", "decoder.token_embedding.weight"),
        ("encoder.layer_norm.", "encoder.ln_post."),
        ("decoder.layer_norm.", "decoder.ln."),
        (".self_attention.q.", ".attn.query."),
        (".self_attention.k.", ".attn.key."),
        (".self_attention.v.", ".attn.value."),
        (".self_attention.o.", ".attn.out."),
        (".self_attention.layer_norm.", ".attn_ln."),
        (".attention.q.", ".cross_attn.query."),
        (".attention.k.", ".cross_attn.key."),
        (".attention.v.", ".cross_attn.value."),
        (".attention.o.", ".cross_attn.out."),
        (".attention.layer_norm.", ".cross_attn_ln."),
        (".ffn.linear_0.", ".mlp.0."),
        (".ffn.linear_1.", ".mlp.2."),
        (".ffn.layer_norm.", ".mlp_ln."),
        (".layer.", ".blocks."),
    ]
    out = {}
    for name, tensor in split_attention(state, dims.width).items():
        for old, new in renames:
            name = name.replace(old, new)
        out[name] = tensor
    dims_dict = {
        "n_mels": dims.n_mels,
        "n_vocab": dims.n_vocab,
        "n_audio_ctx": dims.n_audio_ctx,
        "n_audio_state": dims.width,
        "n_audio_head": dims.n_heads,
        "n_audio_layer": dims.n_encoder_layers,
        "n_text_ctx": dims.n_text_ctx,
        "n_text_state": dims.width,
        "n_text_head": dims.n_heads,
        "n_text_layer": dims.n_decoder_layers,
    }
    return {"dims": dims_dict, "model_state_dict": out}


def to_hf(state: dict[str, torch.Tensor], dims: WhisperDims) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    renames = [
        ("encoder.position_encodings.encodings", "encoder.embed_positions.weight"),
        ("decoder.position_encodings.encodings", "decoder.embed_positions.weight"),
        ("decoder.embeddings.weight", "decoder.embed_tokens.weight"),
        (".self_attention.q.", ".self_attn.q_proj."),
        (".self_attention.k.", ".self_attn.k_proj."),
        (".self_attention.v.", ".self_attn.v_proj."),
        (".self_attention.o.", ".self_attn.out_proj."),
        (".self_attention.layer_norm.", ".self_attn_layer_norm."),
        (".attention.q.", ".encoder_attn.q_proj."),
        (".attention.k.", ".encoder_attn.k_proj."),
        (".attention.v.", ".encoder_attn.v_proj."),
        (".attention.o.", ".encoder_attn.out_proj."),
        (".attention.layer_norm.", ".encoder_attn_layer_norm."),
        (".ffn.linear_0.", ".fc1."),
        (".ffn.linear_1.", ".fc2."),
        (".ffn.layer_norm.", ".final_layer_norm."),
        (".layer.", ".layers."),
    ]
    out = {}
    for name, tensor in split_attention(state, dims.width).items():
        for old, new in renames:
            name = name.replace(old, new)
        out["model." + name] = tensor.contiguous()
    config = {
        "model_type": "whisper",
        "num_mel_bins": dims.n_mels,
        "max_source_positions": dims.n_audio_ctx,
        "max_target_positions": dims.n_text_ctx,
        "d_model": dims.width,
        "encoder_attention_heads": dims.n_heads,
        "decoder_attention_heads": dims.n_heads,
        "encoder_layers": dims.n_encoder_layers,
        "decoder_layers": dims.n_decoder_layers,
        "vocab_size": dims.n_vocab,
    }
    return out, config


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import save_file

    files = resolve_model("bundled:tiny.en")
    ct2 = read_ct2(files.weights)
    dims, state = dims_from_ct2(ct2), state_dict_from_ct2(ct2)
    root = tmp_path_factory.mktemp("models")
    torch.save(to_openai(state, dims), root / "tiny.en.pt")  # no tokenizer.json beside it on purpose
    hf = root / "whisper-tiny.en-hf"
    hf.mkdir()
    weights, config = to_hf(state, dims)
    save_file(weights, str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps(config))
    shutil.copy(files.tokenizer, hf / "tokenizer.json")
    return {"openai": root / "tiny.en.pt", "hf": hf}


@pytest.mark.parametrize("fmt", ["openai", "hf"])
def test_converted_checkpoints_give_identical_transcripts(
    converted: dict[str, Path],
    recognizer: WhisperRecognizer,
    fmt: str,
) -> None:
    from models.engines import load_recognizer

    other = load_recognizer(str(converted[fmt]), device="cpu")
    assert resolve_model(str(converted[fmt])).format == fmt
    audios = [speak(s) for s in SENTENCES[:4]]
    expected = [r.text for r in recognizer.recognize(audios)]
    assert [r.text for r in other.recognize(audios)] == expected
    assert all(expected)


def test_paths_that_are_not_models_name_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "missing", tmp_path / "notes.txt", tmp_path):
        with pytest.raises(ModelNotFoundError, match="expected a CTranslate2 Whisper folder"):
            resolve_model(str(path))


def test_a_pt_file_that_is_not_whisper(tmp_path: Path) -> None:
    from models.loading import load_whisper

    bad = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(ModelFormatError, match="not an OpenAI Whisper checkpoint"):
        load_whisper(resolve_model(str(bad)), torch.device("cpu"), torch.float32)
