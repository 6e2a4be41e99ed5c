"""Declare a fixed binary structure once; parse and pack it from that one declaration.

A :class:`Layout` is a tuple of :class:`Field` (name, offset, size, kind). ``unpack`` turns bytes
into a dict of Python values, ``pack`` turns such a dict back into bytes, and both refuse
anything that does not fit the declaration, so a round trip is the identity by construction.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgcrypt.errors import FormatError, TruncatedError


class Kind(enum.Enum):
    RAW = "raw"  # bytes, exactly ``size`` long
    TEXT = "text"  # NUL-padded ASCII
    UINT_BE = "uint_be"
    UINT_LE = "uint_le"


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    kind: Kind


@dataclass(frozen=True)
class Layout:
    name: str
    size: int
    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        end = 0
        for f in sorted(self.fields, key=lambda f: f.offset):
            if f.offset < end:
                raise ValueError(f"{self.name}: field {f.name} overlaps its predecessor")
            end = f.offset + f.size
        if end > self.size:
            raise ValueError(f"{self.name}: fields extend past size {self.size}")

    def unpack(self, data: bytes, offset: int = 0) -> dict[str, Any]:
        if len(data) - offset < self.size:
            raise TruncatedError(
                f"{self.name} needs {self.size} bytes, only {max(len(data) - offset, 0)} present"
            )
        out: dict[str, Any] = {}
        for f in self.fields:
            raw = bytes(data[offset + f.offset : offset + f.offset + f.size])
            if f.kind is Kind.RAW:
                out[f.name] = raw
            elif f.kind is Kind.TEXT:
                text = raw.split(b"\0", 1)[0]
                try:
                    out[f.name] = text.decode("ascii")
                except UnicodeDecodeError:
                    raise FormatError(f"{self.name}: field {f.name} is not ASCII text") from None
            elif f.kind is Kind.UINT_BE:
                out[f.name] = int.from_bytes(raw, "big")
            else:
                out[f.name] = int.from_bytes(raw, "little")
        return out

    def pack(self, values: Mapping[str, Any]) -> bytes:
        buf = bytearray(self.size)
        for f in self.fields:
            value = values[f.name]
            if f.kind is Kind.RAW:
                raw = bytes(value)
                if len(raw) != f.size:
                    raise ValueError(f"{self.name}.{f.name}: need {f.size} bytes, got {len(raw)}")
            elif f.kind is Kind.TEXT:
                raw = str(value).encode("ascii")
                if len(raw) >= f.size:
                    # Leave room for the terminating NUL every reader of these formats expects.
                    raise ValueError(f"{self.name}.{f.name}: text longer than {f.size - 1} bytes")
                raw = raw.ljust(f.size, b"\0")
            else:
                order: Any = "big" if f.kind is Kind.UINT_BE else "little"
                raw = int(value).to_bytes(f.size, order)
            buf[f.offset : f.offset + f.size] = raw
        return bytes(buf)


def fields(*specs: tuple[str, int, Kind]) -> tuple[Field, ...]:
    """Lay fields out back to back in declaration order: ``(name, size, kind)`` each."""
    out: list[Field] = []
    offset = 0
    for name, size, kind in specs:
        out.append(Field(name, offset, size, kind))
        offset += size
    return tuple(out)
