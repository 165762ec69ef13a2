"""Silero VAD v6 (16 kHz) as our own PyTorch module, with the weights that ship in ``silero-vad``.

We take only the weights from the package's TorchScript file and run them in ``SileroNet``:
importing the ``silero_vad`` module would call ``torch.set_num_threads(1)`` for the whole
process (starving the recognizer), and the package's safetensors file holds different,
older weights (its outputs differ from the TorchScript model's by up to 0.5).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

VAD_SAMPLE_RATE = 16000
VAD_WINDOW = 512  # 32 ms at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees before each window
WEIGHTS_FILE = "silero_vad.jit"
# TorchScript parameter names -> SileroNet parameter names (16 kHz branch only).
_RENAMES = {
    "stft.forward_basis_buffer": "stft_conv.weight",
    "encoder.0.reparam_conv.": "conv1.",
    "encoder.1.reparam_conv.": "conv2.",
    "encoder.2.reparam_conv.": "conv3.",
    "encoder.3.reparam_conv.": "conv4.",
    "decoder.rnn.": "lstm_cell.",
    "decoder.decoder.2.": "final_conv.",
}


def silero_weights_path() -> Path:
    """The TorchScript file inside the installed ``silero-vad`` package (not imported)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero-vad package is not installed (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; silero-vad >= 5 ships it")
    return path


def load_silero_state(path: Path) -> dict[str, Tensor]:
    """The 16 kHz model's weights, renamed for SileroNet."""
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.jit.load; we only read tensors out of the archive.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]  # torch leaves it untyped
    state: dict[str, Tensor] = {}
    for name, tensor in {**dict(scripted._model.named_parameters()), **dict(scripted._model.named_buffers())}.items():
        for old, new in _RENAMES.items():
            if name.startswith(old):
                state[new + name.removeprefix(old)] = tensor.detach().clone()
    return state


class SileroNet(nn.Module):
    """STFT as a convolution, four conv layers, an LSTM cell and a sigmoid head."""

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, kernel_size=3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, kernel_size=1)

    def features(self, x: Tensor) -> Tensor:
        """``x``: [n, 64 + 512] samples (context then window) -> [n, 128]. Windows are
        independent up to here, so many go through in one call."""
        x = F.pad(x, (0, 64), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        return x.squeeze(-1)

    def head(self, h: Tensor) -> Tensor:
        """LSTM outputs [n, 128] -> P(speech) [n]."""
        return torch.sigmoid(self.final_conv(F.relu(h).unsqueeze(-1))).mean(dim=(1, 2))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x``: [batch, 64 + 512] samples (context then window). Returns P(speech) [batch]."""
        h, c = self.lstm_cell(self.features(x), state)
        return self.head(h), (h, c)


class SileroVad:
    """Speech probability per 512-sample window. Stateful: one instance per audio stream.

    Not thread-safe; the pipeline calls it from one worker thread.
    """

    window = VAD_WINDOW

    def __init__(self, weights: Path | None = None) -> None:
        self.net = SileroNet()
        self.net.load_state_dict(load_silero_state(weights or silero_weights_path()), strict=True)
        self.net.eval()
        # The same cell as a sequence LSTM, for ``probs``: one call walks all the windows
        # instead of one Python round trip (and one set of small kernels) per 32 ms.
        self.lstm = nn.LSTM(128, 128, batch_first=True)
        cell = self.net.lstm_cell
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.lstm, f"{name}_l0").copy_(getattr(cell, name))
        self.lstm.eval()
        self.reset()

    def reset(self) -> None:
        self._context = torch.zeros(1, CONTEXT)
        self._state: tuple[Tensor, Tensor] | None = None

    @torch.inference_mode()
    def __call__(self, window: np.ndarray) -> float:
        samples = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)).reshape(1, -1)
        if samples.shape[1] != VAD_WINDOW:
            raise ValueError(f"Silero VAD takes {VAD_WINDOW}-sample windows, got {samples.shape[1]}")
        prob, self._state = self.net(torch.cat([self._context, samples], dim=1), self._state)
        self._context = samples[:, -CONTEXT:]
        return float(prob.item())

    @torch.inference_mode()
    def probs(self, windows: np.ndarray) -> np.ndarray:
        """P(speech) for consecutive windows [n, 512] at once: the same numbers as calling
        the instance on each in turn (state carries over likewise), 10-20x faster on a CPU
        for a 500 ms frame, more for a whole file."""
        samples = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if samples.ndim != 2 or samples.shape[1] != VAD_WINDOW:
            raise ValueError(f"Silero VAD takes [n, {VAD_WINDOW}] windows, got {tuple(samples.shape)}")
        if len(samples) == 0:
            return np.zeros(0, dtype=np.float32)
        contexts = torch.cat([self._context, samples[:-1, -CONTEXT:]], dim=0)
        features = self.net.features(torch.cat([contexts, samples], dim=1))
        state = None if self._state is None else (self._state[0].unsqueeze(0), self._state[1].unsqueeze(0))
        hs, (h, c) = self.lstm(features.unsqueeze(0), state)
        self._state = (h[0], c[0])
        self._context = samples[-1:, -CONTEXT:]
        return self.net.head(hs[0]).numpy().astype(np.float32)
