"""The header protocol carries what callers decide on, the same for both versions and the
same as ``describe()`` shows: requirements, the AF hash of new keyslots, the segments."""

from __future__ import annotations

import os

from imgcrypt.luks import luks1, luks2
from imgcrypt.luks.container import parse_header
from imgcrypt.luks.kdf import Pbkdf2
from imgcrypt.luks.luks2 import Luks2Header
from imgcrypt.luks.luks2.metadata import load_json
from imgcrypt.luks.sectors import CipherSpec

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
