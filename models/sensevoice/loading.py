"""Reading a SenseVoiceSmall folder as its model hub publishes it.

The folder holds ``model.pt`` (FunASR's state dict), ``config.yaml`` (frontend and encoder
settings), ``am.mvn`` (feature normalization) and the SentencePiece model named in
``config.yaml`` (``chn_jpn_yue_eng_ko_spectok.bpe.model``). Sizes come from the weights
themselves (widths, block counts, vocabulary); only what the weights cannot say (attention
heads, the SAN-M shift, frame settings) is read from ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from models.loading import ModelNotFoundError
from models.sensevoice.encoder import EncoderConfig
from models.sensevoice.frontend import FrontendConfig

TOKENIZER = "chn_jpn_yue_eng_ko_spectok.bpe.model"
REQUIRED = ("model.pt", "config.yaml", "am.mvn")


@dataclass(frozen=True)
class SenseVoiceFiles:
    directory: Path
    weights: Path
    config: Path
    cmvn: Path
    tokenizer: Path

    @property
    def name(self) -> str:
        return f"sensevoice-{self.directory.name}"


def looks_like_sensevoice(path: Path) -> bool:
    """A folder with FunASR's files (``am.mvn`` or ``model.pt`` + ``config.yaml``)."""
    return path.is_dir() and ((path / "am.mvn").exists() or (path / "model.pt").exists())


def sensevoice_files(path: Path) -> SenseVoiceFiles:
    """The folder's files; ModelNotFoundError naming each one that is missing."""
    config = _read_config(path / "config.yaml") if (path / "config.yaml").is_file() else {}
    tokenizer_name = Path(str((config.get("tokenizer_conf") or {}).get("bpemodel") or TOKENIZER)).name
    missing = [name for name in (*REQUIRED, tokenizer_name) if not (path / name).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"{path} is an incomplete SenseVoiceSmall folder: missing {', '.join(missing)} "
            f"(expected model.pt, config.yaml, am.mvn and {TOKENIZER} from its model hub)"
        )
    return SenseVoiceFiles(path, path / "model.pt", path / "config.yaml", path / "am.mvn", path / tokenizer_name)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelNotFoundError(f"{path}: not readable YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"{path}: expected a mapping of settings")
    return data


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """FunASR writes the bare state dict, or one under ``state_dict`` / ``model``."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, a pickle we refuse to run
        raise ModelNotFoundError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or "ctc.ctc_lo.weight" not in data:
        raise ModelNotFoundError(f"{path}: no SenseVoice weights (ctc.ctc_lo.weight missing)")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})


def configs(files: SenseVoiceFiles, state: dict[str, torch.Tensor]) -> tuple[EncoderConfig, FrontendConfig]:
    config = _read_config(files.config)
    encoder = dict(config.get("encoder_conf") or {})
    frontend = dict(config.get("frontend_conf") or {})
    width = state["encoder.after_norm.weight"].shape[0]
    encoder_config = EncoderConfig(
        input_size=state["encoder.encoders0.0.norm1.weight"].shape[0],
        output_size=width,
        attention_heads=int(encoder.get("attention_heads", 4)),
        linear_units=state["encoder.encoders0.0.feed_forward.w_1.weight"].shape[0],
        num_blocks=1 + _count(state, "encoder.encoders."),
        tp_blocks=_count(state, "encoder.tp_encoders."),
        kernel_size=state["encoder.encoders0.0.self_attn.fsmn_block.weight"].shape[-1],
        sanm_shift=int(encoder.get("sanm_shfit", 0)),
        vocab_size=state["ctc.ctc_lo.weight"].shape[0],
        query_rows=state["embed.weight"].shape[0],
    )
    frontend_config = FrontendConfig(
        n_mels=int(frontend.get("n_mels", 80)),
        frame_length_ms=float(frontend.get("frame_length", 25)),
        frame_shift_ms=float(frontend.get("frame_shift", 10)),
        lfr_m=int(frontend.get("lfr_m", 7)),
        lfr_n=int(frontend.get("lfr_n", 6)),
    )
    if width % encoder_config.attention_heads:
        raise ModelNotFoundError(f"{files.config}: attention_heads does not divide the width {width}")
    return encoder_config, frontend_config
