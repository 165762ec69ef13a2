from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from tests.helpers import Mosquitto, SmallDisk

# Property tests draw the same examples on every run (seeded from each test), and no example
# database carries a failure from one checkout to the next: the suite is green every time,
# not most times. Searching wider for new failures is done by hand with more examples and
# derandomize off; what it finds goes into the test as an @example.
settings.register_profile("roomscribe", derandomize=True, database=None)
settings.load_profile("roomscribe")

if TYPE_CHECKING:
    from models.recognizer import WhisperRecognizer


@pytest.fixture(scope="session")
def recognizer() -> WhisperRecognizer:
    """The bundled Whisper tiny.en, loaded once for the whole session (CPU, dtype auto: float32,
    its encoder bfloat16 where the CPU multiplies bfloat16 natively, as a user gets it)."""
    from models.engines import load_recognizer
    from models.recognizer import WhisperRecognizer

    loaded = load_recognizer("bundled:tiny.en", device="cpu")
    assert isinstance(loaded, WhisperRecognizer)
    return loaded


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "broker")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmallDisk]:
    """A real tmpfs that fills (the tests run as root; skipped where mounting is not allowed);
    its size is SmallDisk's default unless a test asks for another (indirect parametrize)."""
    try:
        disk = SmallDisk(tmp_path / "small", **({"size": request.param} if hasattr(request, "param") else {}))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield disk
    finally:
        disk.unmount()
