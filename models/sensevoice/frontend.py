"""SenseVoice's input features: Kaldi filterbanks, low frame rate stacking, global CMVN.

The same features FunASR's ``WavFrontend`` computes (its Kaldi fbank backend: torchaudio's
``compliance.kaldi`` or kaldi-native-fbank), written here in torch so that the model needs
neither: samples scaled to 16-bit range, 25 ms Hamming frames every 10 ms (edges snipped),
DC offset removed, pre-emphasis 0.97, a 512-point power spectrum, 80 triangular mel bins
from 20 Hz to Nyquist, natural log with a float32-epsilon floor; then 7 frames stacked
every 6 (LFR: 560 values per 60 ms, the first frame repeated 3 times in front, the last
one after), then ``(x + shift) * scale`` from ``am.mvn``. Dither is off: the reference
dithers by default, which makes its output random; inference wants it reproducible.
The spectrum is computed in float64: the log of small powers is where float32 drifts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
FLOAT32_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class FrontendConfig:
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    lfr_m: int = 7
    lfr_n: int = 6

    @property
    def output_size(self) -> int:
        return self.n_mels * self.lfr_m


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log(1.0 + freq / 700.0)


@lru_cache(maxsize=8)
def _mel_banks(n_mels: int, padded: int) -> torch.Tensor:
    """Kaldi's triangular filters, (n_mels, padded // 2 + 1), triangles in the mel domain."""
    n_bins = padded // 2
    nyquist = SAMPLE_RATE / 2
    low, high = _mel(torch.tensor(LOW_FREQ, dtype=torch.float64)), _mel(torch.tensor(nyquist, dtype=torch.float64))
    delta = (high - low) / (n_mels + 1)
    left = low + delta * torch.arange(n_mels, dtype=torch.float64)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = _mel(torch.arange(n_bins, dtype=torch.float64) * (SAMPLE_RATE / padded))[None, :]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    # The Nyquist bin has no filter weight in Kaldi.
    return torch.nn.functional.pad(banks, (0, 1))


def fbank(samples: torch.Tensor, config: FrontendConfig) -> torch.Tensor:
    """Log mel filterbanks of one utterance (float32 in [-1, 1]), (frames, n_mels) float32."""
    wave = samples.to(torch.float64) * 32768.0
    # The reference shortens the window for audio shorter than one frame.
    length = int(min(config.frame_length_ms, wave.numel() / SAMPLE_RATE * 1000) * SAMPLE_RATE / 1000)
    shift = int(config.frame_shift_ms * SAMPLE_RATE / 1000)
    if length < 1 or wave.numel() < length:
        return torch.zeros((0, config.n_mels), dtype=torch.float32)
    frames = wave.unfold(0, length, shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - PREEMPHASIS * previous
    window = 0.54 - 0.46 * torch.cos(2 * math.pi * torch.arange(length, dtype=torch.float64) / (length - 1))
    padded = 1 << max(0, (length - 1).bit_length())
    power = torch.fft.rfft(frames * window, n=padded).abs().pow(2)
    energies = power @ _mel_banks(config.n_mels, padded).T
    return torch.log(torch.clamp(energies, min=FLOAT32_EPS)).to(torch.float32)


def stack_frames(feats: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Low frame rate: frames i*n .. i*n+m-1 side by side, for ceil(T / n) outputs.

    (m - 1) // 2 copies of the first frame go in front; reads past the end take the last
    frame, as the reference's padding does.
    """
    count = feats.shape[0]
    if count == 0:
        return feats.new_zeros((0, feats.shape[1] * m))
    left = (m - 1) // 2
    outputs = math.ceil(count / n)
    index = torch.arange(outputs)[:, None] * n + torch.arange(m)[None, :] - left
    return feats[index.clamp(0, count - 1)].reshape(outputs, -1)


def load_cmvn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``am.mvn`` (Kaldi nnet text): the <AddShift> and <Rescale> vectors."""
    lines = path.read_text(encoding="utf-8").splitlines()
    vectors: dict[str, list[float]] = {}
    for i, line in enumerate(lines[:-1]):
        head = line.split()
        following = lines[i + 1].split()
        if head and head[0] in ("<AddShift>", "<Rescale>") and following[:1] == ["<LearnRateCoef>"]:
            # "<LearnRateCoef> 0 [ v1 v2 ... ]"
            vectors[head[0]] = [float(v) for v in following[3:-1]]
    if "<AddShift>" not in vectors or "<Rescale>" not in vectors:
        raise ValueError(f"{path}: no <AddShift>/<Rescale> vectors (not a Kaldi am.mvn)")
    shift, scale = (torch.tensor(vectors[k], dtype=torch.float32) for k in ("<AddShift>", "<Rescale>"))
    return shift, scale


class Frontend:
    """Audio to the encoder's input rows, one utterance at a time (lengths differ)."""

    def __init__(self, config: FrontendConfig, cmvn: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.config = config
        self.shift, self.scale = cmvn
        if self.shift.numel() != config.output_size:
            raise ValueError(f"am.mvn has {self.shift.numel()} values per frame, the model reads {config.output_size}")

    def __call__(self, audio: np.ndarray) -> torch.Tensor:
        feats = fbank(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), self.config)
        stacked = stack_frames(feats, self.config.lfr_m, self.config.lfr_n)
        return (stacked + self.shift) * self.scale
