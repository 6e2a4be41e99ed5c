"""imgcrypt.luks.layout: what one declaration reads and writes, checked field by field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.luks.layout import Field, Kind, Layout, declare, flag, raw, text, uint_be
from tests.helpers.util import raises_fault

# Gaps, odd integer sizes and both byte orders: every path of the struct-based reader.
MIXED = Layout("mixed", 40, (
    Field("a", 0, 2, Kind.UINT_BE),
    Field("b", 3, 3, Kind.UINT_BE),
    Field("c", 6, 4, Kind.UINT_LE),
    Field("d", 12, 8, Kind.TEXT),
    Field("e", 20, 5, Kind.RAW),
    Field("f", 32, 8, Kind.UINT_LE),
))
OUT_OF_ORDER = Layout("reversed", 12, (
    Field("late", 8, 4, Kind.UINT_BE),
    Field("early", 0, 4, Kind.UINT_LE),
))


def by_hand(layout: Layout, data: bytes, offset: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in layout.fields:
        chunk = data[offset + f.offset : offset + f.offset + f.size]
        if f.kind is Kind.RAW:
            out[f.name] = chunk
        elif f.kind is Kind.TEXT:
            out[f.name] = chunk.split(b"\0", 1)[0].decode("ascii")
        else:
            out[f.name] = int.from_bytes(chunk, "big" if f.kind is Kind.UINT_BE else "little")
    return out


@given(st.binary(min_size=52, max_size=52), st.integers(0, 12))
def test_unpack_reads_every_field_as_its_declaration_says(data: bytes, offset: int) -> None:
    # The text field (bytes 12..20 of the layout) holds ASCII; everything else any byte.
    data = bytes(b & 0x7F if offset + 12 <= i < offset + 20 else b for i, b in enumerate(data))
    assert MIXED.unpack(data, offset) == by_hand(MIXED, data, offset)
    assert OUT_OF_ORDER.unpack(data, offset) == by_hand(OUT_OF_ORDER, data, offset)


def test_short_input_and_non_ascii_text_are_typed_errors() -> None:
    with raises_fault(FormatError, FormatFault.TRUNCATED):
        MIXED.unpack(bytes(39))
    with pytest.raises(FormatError):
        MIXED.unpack(bytes(12) + b"\xff" + bytes(27))


@dataclass(frozen=True)
class Sample:
    on: Annotated[bool, flag(4, on=0xAC71F3, off=0xDEAD)]
    count: Annotated[int, uint_be(4, name="stored_count")]
    label: Annotated[str, text(8)]
    blob: Annotated[bytes, raw(4)] = field(repr=False)
    kept_apart: tuple[int, ...] = ()


SAMPLE = declare(Sample, "sample", head=(("magic", 2, Kind.RAW),))


def test_declare_derives_names_offsets_and_size_from_the_record() -> None:
    assert [(f.name, f.offset, f.size) for f in SAMPLE.fields] == [
        ("magic", 0, 2), ("on", 2, 4), ("stored_count", 6, 4), ("label", 10, 8),
        ("blob", 18, 4)]
    assert SAMPLE.size == 22


@given(st.booleans(), st.integers(0, 2**32 - 1),
       st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=7),
       st.binary(min_size=4, max_size=4))
def test_record_round_trip(on: bool, count: int, label: str, blob: bytes) -> None:
    record = Sample(on, count, label, blob, (1, 2))
    packed = SAMPLE.pack_record(record, magic=b"MG")
    assert SAMPLE.unpack(packed)["on"] == (0xAC71F3 if on else 0xDEAD)
    assert SAMPLE.unpack_record(Sample, packed, kept_apart=(1, 2)) == record


def test_a_flag_reads_anything_but_its_on_value_as_false() -> None:
    values = {"magic": b"MG", "on": 7, "stored_count": 1, "label": "", "blob": bytes(4)}
    assert SAMPLE.unpack_record(Sample, SAMPLE.pack(values)).on is False
