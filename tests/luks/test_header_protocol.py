"""The header protocol carries what callers decide on, the same for both versions and the
same as ``describe()`` shows: requirements, the AF hash of new keyslots, the segments."""

from __future__ import annotations

import os

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from imgcrypt.crypto.kdf import Pbkdf2
from imgcrypt.crypto.sectors import CipherSpec
from imgcrypt.errors import FormatError
from imgcrypt.luks import luks1, luks2
from imgcrypt.luks.container import parse_header, payload_span
from imgcrypt.luks.engine import plan_decrypt
from imgcrypt.luks.luks2 import Luks2Header
from imgcrypt.luks.luks2.metadata import load_json

XTS = CipherSpec.parse("aes-xts-plain64")


def test_luks1_header_answers_from_its_one_hash_and_implicit_segment() -> None:
    region = luks1.format_region(os.urandom(32), b"pw", cipher=XTS, hash_spec="sha512",
                                 iterations=1000, digest_iterations=1000)
    header = parse_header(region)
    assert header.requirements == ()
    assert header.af_hash == "sha512" == header.describe()["hash"]
    (segment,) = header.segments
    assert (segment.type, segment.offset, segment.size, segment.sector_size, segment.cipher) == (
        "crypt", header.payload_offset, None, 512, "aes-xts-plain64")


def test_luks2_header_answers_from_its_json() -> None:
    kdf = Pbkdf2("sha512", 1000, os.urandom(32))
    region = luks2.format_region(os.urandom(64), b"pw", cipher=XTS, kdf=kdf,
                                 digest_iterations=1000, sector_size=4096)
    header = parse_header(region)
    assert isinstance(header, Luks2Header)
    assert header.requirements == ()
    # New keyslots use the digest's hash for AF, as the first one did.
    assert header.af_hash == "sha512" == header.describe()["keyslots"][0]["af_hash"]
    (segment,) = header.segments
    assert (segment.offset, segment.size, segment.sector_size) == (header.payload_offset, None,
                                                                   4096)
    obj = load_json(header.json_text)
    obj["config"]["requirements"] = {"mandatory": ["some-future-feature"]}
    changed = header.with_metadata(obj)
    assert changed.requirements == ("some-future-feature",)
    assert list(changed.requirements) == changed.describe()["requirements"]


# -- the payload span: one rule for both versions ------------------------------------------------

_SPAN_HEADERS: dict[str, object] = {}


def _span_header(kind: str) -> object:
    """A real LUKS1 header, a LUKS2 one with a dynamic segment (4096-byte sectors) and the same
    with a fixed 1 MiB segment, made once."""
    if kind not in _SPAN_HEADERS:
        if kind == "luks1":
            region = luks1.format_region(os.urandom(32), b"pw", cipher=XTS, hash_spec="sha256",
                                         iterations=1000, digest_iterations=1000)
            _SPAN_HEADERS[kind] = parse_header(region)
        else:
            dynamic = _span_header("luks2") if kind == "luks2-fixed" else None
            if dynamic is None:
                kdf = Pbkdf2("sha256", 1000, os.urandom(32))
                region = luks2.format_region(os.urandom(64), b"pw", cipher=XTS, kdf=kdf,
                                             digest_iterations=1000, sector_size=4096)
                _SPAN_HEADERS[kind] = parse_header(region)
            else:
                assert isinstance(dynamic, Luks2Header)
                obj = load_json(dynamic.json_text)
                obj["segments"]["0"]["size"] = str(1 << 20)
                _SPAN_HEADERS[kind] = dynamic.with_metadata(obj)
    return _SPAN_HEADERS[kind]


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["luks1", "luks2", "luks2-fixed"]),
       image_extra=st.one_of(st.none(), st.integers(-4096, 3 << 20)),
       decrypt_size=st.one_of(st.none(), st.integers(-1, 3 << 20)))
def test_payload_span_is_the_one_rule_the_engine_plans_by(
        kind: str, image_extra: int | None, decrypt_size: int | None) -> None:
    """Whatever the version and segment: a known image's span lies inside it, in whole sectors
    unless a size trims it; a fixed segment or os_decrypt_size is the exact plaintext; and the
    engine's decrypt plan reads and writes exactly the span."""
    header = _span_header(kind)
    assert isinstance(header, luks1.Luks1Header | Luks2Header)
    image_size = None if image_extra is None else header.payload_offset + image_extra
    try:
        span = payload_span(header, image_size=image_size, decrypt_size=decrypt_size)
    except FormatError:
        assume(False)
        return
    segment = header.payload_size
    assert span.offset == header.payload_offset
    if decrypt_size is not None:
        assert span.limit == decrypt_size and (segment is None or decrypt_size <= segment)
    else:
        assert span.limit == segment
    if image_size is not None:
        assert span.length is not None and 0 <= span.length <= image_size - span.offset
        if span.limit is None:
            assert span.length % 512 == 0 and span.length > image_size - span.offset - 512
            assert span.size == span.length
    elif span.limit is None:
        assert span.length is None and span.size is None
    plan = plan_decrypt(header, size=decrypt_size,
                        available=None if image_size is None else image_size - span.offset) \
        if image_size is None or span.limit is None or span.length >= span.limit else None
    if plan is not None:
        assert (plan.read_limit, plan.output_limit) == (span.length, span.limit)


def test_payload_span_refuses_what_no_image_holds() -> None:
    fixed = _span_header("luks2-fixed")
    assert isinstance(fixed, Luks2Header) and fixed.payload_size == 1 << 20
    with pytest.raises(FormatError, match="ends inside its 1048576-byte payload segment"):
        payload_span(fixed, image_size=fixed.payload_offset + (1 << 20) - 4096)
    with pytest.raises(FormatError, match="does not fit the payload"):
        payload_span(fixed, decrypt_size=(1 << 20) + 1)
    dynamic = _span_header("luks1")
    assert isinstance(dynamic, luks1.Luks1Header)
    with pytest.raises(FormatError, match="ends before its payload starts"):
        payload_span(dynamic, image_size=dynamic.payload_offset - 1)
    # 3,146,505 bytes of plaintext encrypted: the image's payload is 3,146,752 bytes; only
    # os_decrypt_size gives back the exact figure.
    image_size = dynamic.payload_offset + 3_146_752
    assert payload_span(dynamic, image_size=image_size).size == 3_146_752
    assert payload_span(dynamic, image_size=image_size, decrypt_size=3_146_505).size == 3_146_505


# -- the unlock extent: what an upload keeps to prove its key --------------------------------


@pytest.mark.parametrize("kind", ["luks1", "luks2"])
def test_both_versions_answer_the_bytes_an_unlock_reads(kind: str) -> None:
    """``unlock_extent`` is the protocol's answer for both versions: the bytes from the image's
    start that an unlock reads. Zeros past it change nothing."""
    if kind == "luks1":
        region = luks1.format_region(os.urandom(32), b"pw", cipher=XTS, hash_spec="sha256",
                                     iterations=1000, digest_iterations=1000)
    else:
        region = luks2.format_region(os.urandom(64), b"pw", cipher=XTS,
                                     kdf=Pbkdf2("sha256", 1000, os.urandom(32)),
                                     digest_iterations=1000)
    header = parse_header(region)
    extent = header.unlock_extent
    assert header.payload_offset >= header.region_size >= extent > 0
    if kind == "luks1":
        assert extent == header.region_size  # LUKS1's keyslot areas are the whole region
    else:  # the keyslot area the JSON places ends it, not the 16 MiB keyslots area
        (slot,) = header.describe()["keyslots"]
        assert extent == slot["area_offset"] + slot["area_size"] < header.region_size
    kept = region[:extent] + bytes(header.region_size - extent)
    slot_index, key = header.unlock(kept, b"pw")
    assert (slot_index, len(key)) == (0, header.key_bytes)
