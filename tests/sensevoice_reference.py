"""A SenseVoiceSmall folder with random weights, made by FunASR's own reference code.

The tests compare our engine (models/sensevoice) with the reference implementation from the
``funasr`` package (test-only; the tests skip without it): the folder holds the reference
model's state dict in FunASR's ``model.pt`` layout, a ``config.yaml``, an ``am.mvn`` with
made-up statistics in Kaldi's text format, and a SentencePiece model the test trains on
our test sentences with SenseVoice's tag pieces as user symbols.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tests.helpers import SENTENCES

TAGS = [
    "<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>",
    "<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|EMO_UNKNOWN|>",
    "<|Speech|>", "<|BGM|>", "<|Laughter|>", "<|Applause|>", "<|Event_UNK|>",
    "<|withitn|>", "<|woitn|>",
]  # fmt: skip
CORPUS = [*SENTENCES, "今天天气很好", "请打开客厅的灯", "明天下午三点开会", "我们一起去公园散步吧"]
SMALL = {"output_size": 64, "attention_heads": 4, "linear_units": 96, "num_blocks": 3, "tp_blocks": 2}
FULL = {"output_size": 512, "attention_heads": 4, "linear_units": 2048, "num_blocks": 50, "tp_blocks": 20}
FRONTEND: dict[str, Any] = {
    "fs": 16000,
    "window": "hamming",
    "n_mels": 80,
    "frame_length": 25,
    "frame_shift": 10,
    "lfr_m": 7,
    "lfr_n": 6,
}
TOKENIZER = "chn_jpn_yue_eng_ko_spectok.bpe.model"


@dataclass
class Reference:
    folder: Path
    model: Any  # funasr.models.sense_voice.model.SenseVoiceSmall
    frontend: Any  # funasr.frontends.wav_frontend.WavFrontend
    tokenizer: Any  # funasr.tokenizer.sentencepiece_tokenizer.SentencepiecesTokenizer


def train_tokenizer(path: Path) -> int:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=model,
        vocab_size=120,
        user_defined_symbols=TAGS,
        character_coverage=1.0,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return int(sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size())


def write_cmvn(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-14.0, -8.0, size)
    scale = rng.uniform(0.15, 0.4, size)

    def vector(values: np.ndarray) -> str:
        return "<LearnRateCoef> 0 [ " + " ".join(f"{v:.6f}" for v in values) + " ]"

    path.write_text(
        f"<Nnet>\n<Splice> {size} {size}\n[ 0 ]\n<AddShift> {size} {size}\n{vector(shift)}\n"
        f"<Rescale> {size} {size}\n{vector(scale)}\n</Nnet>\n"
    )


def reference_encoder_conf(encoder: dict[str, int]) -> dict[str, Any]:
    """FunASR's encoder_conf for these sizes (the published settings besides them)."""
    return {**encoder, "kernel_size": 11, "sanm_shfit": 0, "input_layer": "pe", "normalize_before": True}


def make_reference(folder: Path, encoder: dict[str, int], seed: int = 0) -> Reference:
    """The folder and the reference objects reading it (FunASR must be importable)."""
    from funasr.frontends.wav_frontend import WavFrontend
    from funasr.models.sense_voice.model import SenseVoiceSmall
    from funasr.tokenizer.sentencepiece_tokenizer import SentencepiecesTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = train_tokenizer(folder / TOKENIZER)
    write_cmvn(folder / "am.mvn", FRONTEND["n_mels"] * FRONTEND["lfr_m"], seed)
    encoder_conf = reference_encoder_conf(encoder)
    torch.manual_seed(seed)
    model = SenseVoiceSmall(
        encoder="SenseVoiceEncoderSmall", encoder_conf=encoder_conf, input_size=560, vocab_size=vocab
    )
    # Default initialization leaves the CTC head nearly flat; wider weights make the greedy
    # read-out depend on every layer.
    with torch.no_grad():
        model.ctc.ctc_lo.weight.normal_(0.0, 0.5)
        model.embed.weight.normal_(0.0, 1.0)
    model.eval()
    torch.save(model.state_dict(), folder / "model.pt")
    config = {
        "model": "SenseVoiceSmall",
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": encoder_conf,
        "frontend": "WavFrontend",
        "frontend_conf": {**FRONTEND, "cmvn_file": "am.mvn"},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": TOKENIZER},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    frontend = WavFrontend(cmvn_file=str(folder / "am.mvn"), dither=0.0, **FRONTEND)
    tokenizer = SentencepiecesTokenizer(bpemodel=str(folder / TOKENIZER))
    return Reference(folder, model, frontend, tokenizer)


def reference_features(ref: Reference, audio: np.ndarray) -> torch.Tensor:
    wave = torch.from_numpy(audio)[None]
    feats, _ = ref.frontend(wave, torch.tensor([len(audio)]))
    out: torch.Tensor = feats[0]
    return out


def reference_run(
    ref: Reference, audios: list[np.ndarray], language: str = "auto", itn: bool = False
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The reference's texts for a padded batch, its encoder output and CTC logits."""
    feats = [reference_features(ref, a) for a in audios]
    lengths = torch.tensor([f.shape[0] for f in feats])
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        ref.model.encoder.register_forward_hook(lambda _m, _i, out: captured.__setitem__("encoder", out[0])),
        ref.model.ctc.ctc_lo.register_forward_hook(lambda _m, _i, out: captured.__setitem__("logits", out)),
    ]
    try:
        with torch.no_grad():
            results, _ = ref.model.inference(
                padded,
                lengths.clone(),  # the reference adds the query rows to it in place
                key=[f"u{i}" for i in range(len(audios))],
                tokenizer=ref.tokenizer,
                data_type="fbank",
                device="cpu",
                language=language,
                use_itn=itn,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return [r["text"] for r in results], captured["encoder"], captured["logits"]


def make_own_folder(folder: Path, word: str) -> Path:
    """A SenseVoiceSmall folder from our own model (no FunASR needed), small and random, but
    with a CTC head that writes ``word`` (one SentencePiece piece) for any speech: a model
    whose output a test can predict, to follow through the daemon's paths."""
    import sentencepiece

    from models.sensevoice.encoder import EncoderConfig, SenseVoiceModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = train_tokenizer(folder / TOKENIZER)
    write_cmvn(folder / "am.mvn", FRONTEND["n_mels"] * FRONTEND["lfr_m"], 0)
    piece = sentencepiece.SentencePieceProcessor(model_file=str(folder / TOKENIZER)).piece_to_id("▁" + word)
    assert piece > 0, f"{word!r} is not one piece of the test vocabulary"
    torch.manual_seed(0)
    model = SenseVoiceModel(EncoderConfig(**{**SMALL, "vocab_size": vocab}))
    with torch.no_grad():
        model.ctc.ctc_lo.weight.zero_()
        model.ctc.ctc_lo.bias.fill_(-10.0)
        model.ctc.ctc_lo.bias[piece] = 10.0
    torch.save(model.state_dict(), folder / "model.pt")
    encoder_conf = {"attention_heads": SMALL["attention_heads"], "sanm_shfit": 0}
    config = {"encoder_conf": encoder_conf, "frontend_conf": FRONTEND, "tokenizer_conf": {"bpemodel": TOKENIZER}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder
