"""Declare a fixed binary structure once; parse and pack it from that one declaration.

A :class:`Layout` is a tuple of :class:`Field` (name, offset, size, kind). ``unpack`` turns bytes
into a dict of Python values, ``pack`` turns such a dict back into bytes, and both refuse
anything that does not fit the declaration, so a round trip is the identity by construction.

A structure that has a record type is declared as that frozen dataclass: each stored field is
annotated with how it is stored (``Annotated[int, uint_be(4)]``), and :func:`declare` derives
the :class:`Layout` from the class, so the field list exists once. :meth:`Layout.unpack_record`
and :meth:`Layout.pack_record` convert between bytes and the record.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from imgcrypt.errors import FormatError, FormatFault

T = TypeVar("T")


class Kind(enum.Enum):
    RAW = "raw"  # bytes, exactly ``size`` long
    TEXT = "text"  # NUL-padded ASCII
    UINT_BE = "uint_be"
    UINT_LE = "uint_le"


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Field:
    name: str  # the name in the format's own documentation, and the key of unpack's dict
    offset: int
    size: int
    kind: Kind
    # For a record (see :func:`declare`): its attribute, and the conversions between the
    # stored value and the attribute's. An empty ``attr``: stored, but not in the record.
    attr: str = ""
    decode: Callable[[Any], Any] = _same
    encode: Callable[[Any], Any] = _same


_STRUCT_INTS = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclass(frozen=True)
class Layout:
    name: str
    size: int
    fields: tuple[Field, ...]
    # One struct.Struct reads every field at once; unpack only fixes up text and odd sizes.
    _struct: struct.Struct = dataclasses.field(init=False, repr=False, compare=False)
    _names: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)
    # Fields struct cannot give as their final value: text, and integers of odd sizes.
    _fixups: tuple[tuple[int, Field], ...] = dataclasses.field(
        init=False, repr=False, compare=False)
    _decoders: tuple[tuple[int, str, Callable[[Any], Any]], ...] = dataclasses.field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        end = 0
        for f in sorted(self.fields, key=lambda f: f.offset):
            if f.offset < end:
                raise ValueError(f"{self.name}: field {f.name} overlaps its predecessor")
            end = f.offset + f.size
        if end > self.size:
            raise ValueError(f"{self.name}: fields extend past size {self.size}")
        fmt, fixups = self._plan()
        object.__setattr__(self, "_struct", struct.Struct(fmt))
        object.__setattr__(self, "_fixups", fixups)
        object.__setattr__(self, "_names", tuple(f.name for f in self.fields))
        object.__setattr__(self, "_decoders", tuple(
            (i, f.attr, f.decode) for i, f in enumerate(self.fields) if f.attr))

    def _plan(self) -> tuple[str, tuple[tuple[int, Field], ...]]:
        """A struct format reading every field in declaration order (pad bytes for gaps), and
        the fields whose value it reads as bytes to be converted: text, and integers of odd
        sizes or the other byte order. "0s" when fields are declared out of order."""
        order = ">" if all(f.kind is not Kind.UINT_LE for f in self.fields) else "<"
        parts, fixups, at = [order], [], 0
        for i, f in enumerate(self.fields):
            if f.offset < at:  # out of order: every field is read on its own
                return "0s", tuple((j, g) for j, g in enumerate(self.fields)
                                   if g.kind is not Kind.RAW)
            if f.offset > at:
                parts.append(f"{f.offset - at}x")
            native = f.kind in (Kind.UINT_BE, Kind.UINT_LE) and f.size in _STRUCT_INTS and (
                (f.kind is Kind.UINT_BE) == (order == ">"))
            parts.append(_STRUCT_INTS[f.size] if native else f"{f.size}s")
            if not native and f.kind is not Kind.RAW:
                fixups.append((i, f))
            at = f.offset + f.size
        return "".join(parts), tuple(fixups)

    def _values(self, data: bytes, offset: int) -> list[Any]:
        """Every field's value, in declaration order."""
        if len(data) - offset < self.size:
            raise FormatError(
                f"{self.name} needs {self.size} bytes, only {max(len(data) - offset, 0)} present",
                reason=FormatFault.TRUNCATED,
            )
        values: list[Any]
        if self._struct.size == 0:
            values = [bytes(data[offset + f.offset : offset + f.offset + f.size])
                      for f in self.fields]
        else:
            values = list(self._struct.unpack_from(data, offset))
        for i, f in self._fixups:
            value = values[i]
            if f.kind is Kind.TEXT:
                try:
                    values[i] = value.split(b"\0", 1)[0].decode("ascii")
                except UnicodeDecodeError:
                    raise FormatError(f"{self.name}: field {f.name} is not ASCII text") from None
            else:
                values[i] = int.from_bytes(value, "big" if f.kind is Kind.UINT_BE else "little")
        return values

    def unpack(self, data: bytes, offset: int = 0) -> dict[str, Any]:
        return dict(zip(self._names, self._values(data, offset), strict=True))

    def unpack_record(self, record: type[T], data: bytes, offset: int = 0,
                      **extra: Any) -> T:
        """The record of type ``record`` stored at ``offset``; ``extra`` gives the attributes
        that are not stored in this layout."""
        values = self._values(data, offset)
        for i, attr, decode in self._decoders:
            extra[attr] = values[i] if decode is _same else decode(values[i])
        return record(**extra)

    def pack_record(self, record: object, **stored: Any) -> bytes:
        """The bytes of ``record``; ``stored`` gives the fields that are not in the record."""
        values = {f.name: f.encode(getattr(record, f.attr)) for f in self.fields if f.attr}
        return self.pack({**values, **stored})

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


# -- declaring a record type ------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """How one record attribute is stored: ``Annotated[type, Stored(...)]`` on the attribute."""

    size: int
    kind: Kind
    name: str = ""  # the stored name when it differs from the attribute's
    decode: Callable[[Any], Any] = _same
    encode: Callable[[Any], Any] = _same


def raw(size: int) -> Stored:
    return Stored(size, Kind.RAW)


def text(size: int) -> Stored:
    return Stored(size, Kind.TEXT)


def uint_be(size: int, *, name: str = "") -> Stored:
    return Stored(size, Kind.UINT_BE, name)


def flag(size: int, *, on: int, off: int) -> Stored:
    """A bool stored big-endian as ``on`` or ``off``; any value but ``on`` reads as False."""
    return Stored(size, Kind.UINT_BE, decode=lambda v: v == on,
                  encode=lambda v: on if v else off)


def declare(record: type, name: str, size: int | None = None,
            head: tuple[tuple[str, int, Kind], ...] = ()) -> Layout:
    """The layout of dataclass ``record``: ``head`` (stored fields the record does not keep,
    such as a magic), then every attribute annotated with :class:`Stored`, back to back in
    declaration order. ``size`` defaults to where the last field ends."""
    hints = typing.get_type_hints(record, include_extras=True)
    out = list(fields(*head))
    offset = out[-1].offset + out[-1].size if out else 0
    for attr in dataclasses.fields(record):
        spec = next((m for m in getattr(hints[attr.name], "__metadata__", ())
                     if isinstance(m, Stored)), None)
        if spec is None:
            continue
        out.append(Field(spec.name or attr.name, offset, spec.size, spec.kind, attr.name,
                         spec.decode, spec.encode))
        offset += spec.size
    return Layout(name, offset if size is None else size, tuple(out))
