"""Silero VAD, loaded from the weights that ship in the ``silero-vad`` package."""

from __future__ import annotations

import numpy as np
import torch

VAD_SAMPLE_RATE = 16000
VAD_WINDOW = 512  # Silero's window at 16 kHz: 32 ms


class SileroVad:
    """Speech probability per 512-sample window. Stateful: one instance per audio stream.

    Not thread-safe; the pipeline calls it from one worker thread.
    """

    window = VAD_WINDOW

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        self._model = load_silero_vad(onnx=False)

    def reset(self) -> None:
        self._model.reset_states()

    @torch.inference_mode()
    def __call__(self, window: np.ndarray) -> float:
        return float(self._model(torch.from_numpy(window), VAD_SAMPLE_RATE).item())
