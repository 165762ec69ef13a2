"""Home Assistant's own Wyoming speech-to-text integration against a Wyoming server: run with
the Python of a venv that has ``homeassistant`` and the ``wyoming`` its manifest pins (see
tests/test_wyoming.py). Prints one JSON object: what Home Assistant made of the server's
``info`` and the text it got for the WAV.

    python tests/ha_wyoming_client.py HOST PORT FILE.wav LANGUAGE
"""

from __future__ import annotations

import asyncio
import json
import sys
import wave
from collections.abc import AsyncIterator
from types import SimpleNamespace

from homeassistant.components import stt  # type: ignore[import-not-found]
from homeassistant.components.wyoming.data import WyomingService  # type: ignore[import-not-found]
from homeassistant.components.wyoming.stt import WyomingSttProvider  # type: ignore[import-not-found]


async def main(host: str, port: int, path: str, language: str) -> None:
    service = await WyomingService.create(host, port)
    if service is None:
        print(json.dumps({"error": "no info from the server"}))
        return
    provider = WyomingSttProvider(SimpleNamespace(entry_id="roomscribe-test"), service)
    with wave.open(path, "rb") as wav:
        pcm = wav.readframes(wav.getnframes())

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(pcm), 2048):  # 1024 samples, as Assist's pipeline sends
            yield pcm[start : start + 2048]

    metadata = stt.SpeechMetadata(
        language=language,
        format=stt.AudioFormats.WAV,
        codec=stt.AudioCodecs.PCM,
        bit_rate=stt.AudioBitRates.BITRATE_16,
        sample_rate=stt.AudioSampleRates.SAMPLERATE_16000,
        channel=stt.AudioChannels.CHANNEL_MONO,
    )
    result = await provider.async_process_audio_stream(metadata, stream())
    print(json.dumps({
        "name": service.get_name(),
        "platforms": [str(p) for p in service.platforms],
        "languages": sorted(provider.supported_languages),
        "state": str(result.result),
        "text": result.text,
    }))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
