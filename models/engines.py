"""load_recognizer: the engine for what the model setting names, on the chosen device and
in the chosen precision (models/device.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from models.api import DecodingOptions, Recognizer
from models.device import choose_device, choose_dtype, choose_encoder_dtype, cpu_flags
from models.loading import BUNDLED_PREFIX, resolve_model
from models.recognizer import WhisperRecognizer
from models.sensevoice.loading import looks_like_sensevoice


def load_recognizer(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    options: DecodingOptions | None = None,
    batch_size: int | str = "auto",
    quantize: str = "none",
) -> Recognizer:
    """Load the configured recognizer; raises ModelNotFoundError with a clear message.

    A SenseVoiceSmall folder (FunASR's files) loads the SenseVoice engine; everything else
    is read as a Whisper checkpoint.
    """
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    chosen = choose_device(device, cuda_count)
    model_dtype = choose_dtype(dtype, chosen)
    encoder_dtype = choose_encoder_dtype(dtype, chosen, model_dtype, quantize, cpu_flags())
    path = Path(model).expanduser()
    if not model.startswith(BUNDLED_PREFIX) and looks_like_sensevoice(path):
        from models.sensevoice.recognizer import SenseVoiceRecognizer

        # SenseVoice is an encoder and a CTC head: all of it runs in the encoder's dtype.
        return SenseVoiceRecognizer(path, chosen, encoder_dtype, options, batch_size, quantize)
    files = resolve_model(model)
    return WhisperRecognizer(files, chosen, model_dtype, options, batch_size, quantize, encoder_dtype)
