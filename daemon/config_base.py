"""What every config section shares: strict validation, and the mapping onto the
dataclasses the settings feed."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints

DataclassT = TypeVar("DataclassT")


def by_keyword(cls: type[DataclassT], section: BaseModel, **extra: Any) -> DataclassT:
    """``cls`` (a dataclass) from the section's keys of the same names, plus ``extra``; a list
    becomes a tuple (the dataclasses are frozen)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.model_dump().items() if k in names}
    return cls(**{**values, **extra})


class Section(BaseModel):
    # strict: TOML has real types, so "1883" for a port is a mistake to name, not to coerce;
    # no inf/nan: an infinite delay or limit makes arithmetic (backoff, deadlines) nan.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# A hotword, as the config and the hotwords command (daemon/commands.py) take it.
Hotword = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
