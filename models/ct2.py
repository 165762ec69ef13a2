"""Reader for CTranslate2 ``model.bin`` files (binary version 6).

CTranslate2 stores every weight as a named variable with its shape and dtype, followed by
aliases (a name that shares another variable's data). We read the file with numpy only, so
the weights can be inspected and converted without the ctranslate2 package.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# dtype codes used by CTranslate2's serialization.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16: raw bits, converted by the caller
}
_BFLOAT16_CODE = 5
SUPPORTED_BINARY_VERSIONS = (5, 6)


class ModelFormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


@dataclass
class Ct2Model:
    """Variables of a CTranslate2 model, by name, plus the spec it was written with."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    bfloat16: set[str] = field(default_factory=set)

    def scalar(self, name: str) -> int:
        return int(self.variables[name].reshape(()))


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ModelFormatError(f"{self.path}: truncated at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        (value,) = struct.unpack(fmt, self.take(size))
        return int(value)

    def string(self) -> str:
        length = self.unpack("<H")
        return self.take(length).rstrip(b"\0").decode("utf-8")


def read_ct2(path: str | Path, parts: Sequence[Path] = ()) -> Ct2Model:
    """Read every variable of a CTranslate2 ``model.bin`` into numpy arrays; ``parts``: a
    model.bin shipped split in pieces (read in order, joined in memory: no copy on disk)."""
    path = Path(path)
    data = b"".join(part.read_bytes() for part in parts) if parts else path.read_bytes()
    reader = _Reader(data, path)
    version = reader.unpack("<I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ModelFormatError(
            f"{path}: CTranslate2 binary version {version} is not supported "
            f"(expected one of {SUPPORTED_BINARY_VERSIONS})"
        )
    spec = reader.string()
    revision = reader.unpack("<I")
    model = Ct2Model(spec=spec, revision=revision)
    for _ in range(reader.unpack("<I")):
        name = reader.string()
        rank = reader.unpack("<B")
        shape = tuple(reader.unpack("<I") for _ in range(rank))
        code = reader.unpack("<B")
        nbytes = reader.unpack("<I")
        if code not in _DTYPES:
            raise ModelFormatError(f"{path}: variable {name} has unknown dtype code {code}")
        raw = reader.take(nbytes)
        model.variables[name] = np.frombuffer(raw, dtype=_DTYPES[code]).reshape(shape)
        if code == _BFLOAT16_CODE:
            model.bfloat16.add(name)
    for _ in range(reader.unpack("<I")):
        alias = reader.string()
        target = reader.string()
        model.variables[alias] = model.variables[target]
    return model
