"""LUKS1 engine: header layout, AF splitter, keyslots and streaming, without external tools."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt.crypto import af
from imgcrypt.crypto.kdf import KdfLimits, Pbkdf2
from imgcrypt.crypto.sectors import CipherSpec
from imgcrypt.errors import (
    FormatError,
    FormatFault,
    UnsupportedError,
    UsageError,
    WrongPassphraseError,
)
from imgcrypt.luks import luks1
from imgcrypt.luks.container import parse_header
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.reader import open_payload
from imgcrypt.luks.rekey import rekey_file
from imgcrypt.luks.rules import LUKS_VERSION, HeaderRuleError
from imgcrypt.luks.transfer import decrypt_payload, decrypt_stream, encrypt_stream
from imgcrypt.luks.unlock import read_header, unlock_stream
from tests.helpers.util import raises_fault

FAST = FormatOptions(iterations=1000)
XTS = CipherSpec.parse("aes-xts-plain64")


def region(passphrase: bytes = b"pw", key: bytes | None = None, **kw: object) -> bytes:
    master = key if key is not None else os.urandom(64)
    options = {"cipher": XTS, "hash_spec": "sha256", "iterations": 1000,
               "digest_iterations": 1000, **kw}
    return luks1.format_region(master, passphrase, **options)  # type: ignore[arg-type]


# -- header layout ---------------------------------------------------------------------------

text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=31)
slots = st.builds(
    luks1.Keyslot,
    active=st.booleans(),
    iterations=st.integers(0, 2**32 - 1),
    salt=st.binary(min_size=32, max_size=32),
    key_material_offset=st.integers(0, 2**32 - 1),
    stripes=st.integers(0, 2**32 - 1),
)


@given(
    cipher_name=text, cipher_mode=text, hash_spec=text,
    payload=st.integers(0, 2**32 - 1), key_bytes=st.integers(0, 2**32 - 1),
    digest=st.binary(min_size=20, max_size=20), salt=st.binary(min_size=32, max_size=32),
    iterations=st.integers(0, 2**32 - 1), uuid=st.text(alphabet="0123456789abcdef-", max_size=39),
    keyslots=st.lists(slots, min_size=8, max_size=8),
)
def test_pack_then_unpack_is_identity(cipher_name: str, cipher_mode: str, hash_spec: str,
                                      payload: int, key_bytes: int, digest: bytes, salt: bytes,
                                      iterations: int, uuid: str,
                                      keyslots: list[luks1.Keyslot]) -> None:
    header = luks1.Luks1Header(cipher_name, cipher_mode, hash_spec, payload, key_bytes, digest,
                               salt, iterations, uuid, tuple(keyslots))
    packed = header.pack()
    assert len(packed) == luks1.HEADER_SIZE == 592
    values = luks1.HEADER_LAYOUT.unpack(packed)
    assert values["cipher_name"] == cipher_name and values["payload_offset"] == payload
    assert values["uuid"] == uuid and values["mk_digest"] == digest
    for i, slot in enumerate(keyslots):
        raw = luks1.KEYSLOT_LAYOUT.unpack(packed, 208 + 48 * i)
        assert raw["iterations"] == slot.iterations and raw["salt"] == slot.salt
        assert raw["key_material_offset"] == slot.key_material_offset
        assert raw["active"] == (luks1.KEYSLOT_ACTIVE if slot.active else luks1.KEYSLOT_INACTIVE)


def test_parse_of_formatted_header_packs_back_identically() -> None:
    data = region()
    header = luks1.Luks1Header.parse(data)
    assert header.pack() == data[:592]
    assert header.payload_offset == 4096 * 512  # cryptsetup's 1 MiB-aligned default
    assert [s.key_material_offset for s in header.keyslots] == [8 + 504 * i for i in range(8)]


def test_256_bit_key_layout_matches_cryptsetup() -> None:
    header = luks1.Luks1Header.parse(region(key=os.urandom(32)))
    assert [s.key_material_offset for s in header.keyslots] == [8 + 256 * i for i in range(8)]
    assert header.payload_offset_sectors == 4096


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700))
def test_parse_never_raises_anything_but_imgcrypt_errors(data: bytes) -> None:
    try:
        luks1.Luks1Header.parse(luks1.MAGIC + b"\x00\x01" + data)
    except FormatError:
        pass


# -- anti-forensic splitter ------------------------------------------------------------------


@settings(max_examples=50)
@given(key=st.binary(min_size=1, max_size=64), stripes=st.integers(1, 64),
       hash_name=st.sampled_from(["sha1", "sha256", "sha512"]))
def test_af_merge_inverts_split(key: bytes, stripes: int, hash_name: str) -> None:
    material = af.split(key, stripes, hash_name)
    assert len(material) == len(key) * stripes
    assert af.merge(material, len(key), stripes, hash_name) == key


def test_af_split_depends_on_every_stripe() -> None:
    key = os.urandom(32)
    material = bytearray(af.split(key, 10, "sha256"))
    material[5] ^= 1
    assert af.merge(bytes(material), 32, 10, "sha256") != key


# -- keyslots --------------------------------------------------------------------------------


def test_unlock_returns_master_key_and_slot() -> None:
    key = os.urandom(64)
    data = region(b"correct horse", key=key)
    assert luks1.Luks1Header.parse(data).unlock(data, b"correct horse") == (0, key)


def test_wrong_passphrase() -> None:
    data = region(b"right")
    with pytest.raises(WrongPassphraseError):
        luks1.Luks1Header.parse(data).unlock(data, b"wrong")


def test_corrupted_keyslot_material_does_not_open() -> None:
    data = bytearray(region(b"pw"))
    header = luks1.Luks1Header.parse(bytes(data))
    data[header.keyslots[0].key_material_offset * 512 + 1000] ^= 0xFF
    with pytest.raises(WrongPassphraseError):
        header.unlock(bytes(data), b"pw")


def test_corrupted_keyslot_state_is_an_unusable_keyslot() -> None:
    """cryptsetup loads the header and treats the keyslot as invalid, never as active."""
    data = bytearray(region(b"pw"))
    data[208:212] = b"\x12\x34\x56\x78"
    header = luks1.Luks1Header.parse(bytes(data))
    assert header.active_keyslots() == ()
    with pytest.raises(WrongPassphraseError):
        header.unlock(bytes(data), b"pw")


def test_keyslot_pointing_past_the_payload_is_refused() -> None:
    data = bytearray(region())
    data[208 + 40 : 208 + 44] = (5000).to_bytes(4, "big")
    with pytest.raises(FormatError, match="luks1-keyslot-before-payload"):
        luks1.Luks1Header.parse(bytes(data))


def test_keyslot_far_beyond_any_real_layout_is_a_limit() -> None:
    data = bytearray(region())
    data[104:108] = (2**32 - 1).to_bytes(4, "big")
    data[208 + 40 : 208 + 44] = (2**31).to_bytes(4, "big")
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED):
        luks1.Luks1Header.parse(bytes(data))


def test_hostile_iterations_are_refused_before_any_work() -> None:
    data = bytearray(region())
    data[212:216] = (2**32 - 1).to_bytes(4, "big")
    header = luks1.Luks1Header.parse(bytes(data))
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED):
        header.unlock(bytes(data), b"pw", KdfLimits(max_pbkdf2_iterations=10_000_000))


def test_bad_magic_truncation_and_version() -> None:
    data = region()
    with raises_fault(FormatError, FormatFault.BAD_MAGIC):
        luks1.Luks1Header.parse(b"NOTLUKS" + data[7:])
    with raises_fault(FormatError, FormatFault.TRUNCATED):
        luks1.Luks1Header.parse(data[:300])
    with raises_fault(HeaderRuleError, FormatFault.UNSUPPORTED) as unknown:
        parse_header(data[:6] + b"\x00\x07" + data[8:])
    assert unknown.value.rule is LUKS_VERSION


def test_unsupported_cipher_is_named() -> None:
    data = bytearray(region())
    data[8:40] = b"serpent".ljust(32, b"\0")
    header = luks1.Luks1Header.parse(bytes(data))  # valid to cryptsetup; not decryptable
    assert header.describe()["cipher"] == "serpent-xts-plain64"
    assert not header.describe()["decryptable"]
    with pytest.raises(UnsupportedError, match="serpent-xts-plain64"):
        header.unlock(bytes(data), b"pw")


@settings(max_examples=8, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 7)),
                    max_size=6))
def test_keyslot_operations_keep_exactly_the_expected_passphrases(
        ops: list[tuple[str, int]]) -> None:
    key = os.urandom(32)
    data = region(b"p0", key=key)
    live = {0: b"p0"}
    for n, (op, slot) in enumerate(ops):
        header = luks1.Luks1Header.parse(data)
        if op == "add" and slot not in live:
            update = header.add_keyslot(data, key, b"p%d" % (n + 10),
                                        Pbkdf2("sha256", 1000, os.urandom(32)), slot)
            live[slot] = b"p%d" % (n + 10)
        elif op == "remove" and slot in live and len(live) > 1:
            update = header.remove_keyslot(data, slot)
            del live[slot]
        else:
            continue
        assert len(update.region) == len(data)
        data = update.region
    header = luks1.Luks1Header.parse(data)
    assert set(header.active_keyslots()) == set(live)
    for slot, passphrase in live.items():
        assert header.unlock(data, passphrase) == (slot, key)


def test_add_to_occupied_slot_is_refused() -> None:
    key = os.urandom(64)
    data = region(key=key)
    with pytest.raises(UsageError):
        luks1.Luks1Header.parse(data).add_keyslot(data, key, b"x", Pbkdf2("sha256", 1000, b""), 0)


# -- streaming and random access -------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(length=st.integers(0, 70_000), chunk=st.integers(1, 5))
def test_stream_round_trip_any_length(length: int, chunk: int) -> None:
    payload = os.urandom(length)
    image = io.BytesIO()
    result = encrypt_stream(io.BytesIO(payload), image, b"pw", FAST)
    assert result.payload_size == length
    assert result.padded_size == -(-length // 512) * 512
    image.seek(0)
    out = io.BytesIO()
    decrypt_stream(image, out, b"pw", size=length)
    assert out.getvalue() == payload


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_access_reads_match(data: st.DataObject) -> None:
    payload = os.urandom(data.draw(st.integers(1, 20_000)))
    image = io.BytesIO()
    encrypt_stream(io.BytesIO(payload), image, b"pw", FAST)
    reader = open_payload(image, b"pw", size=len(payload))
    for _ in range(5):
        start = data.draw(st.integers(0, len(payload)))
        size = data.draw(st.integers(0, 3000))
        reader.seek(start)
        assert reader.read(size) == payload[start : start + size]


def test_truncated_payload_with_declared_size_is_reported() -> None:
    image = io.BytesIO()
    encrypt_stream(io.BytesIO(os.urandom(4096)), image, b"pw", FAST)
    short = io.BytesIO(image.getvalue()[:-1024])
    with raises_fault(FormatError, FormatFault.TRUNCATED):
        decrypt_stream(short, io.BytesIO(), b"pw", size=4096)


def test_rekey_changes_passphrase_header_only(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "img.luks")
    payload = os.urandom(100_000)
    with open(path, "wb") as f:
        header = encrypt_stream(io.BytesIO(payload), f, b"old", FAST).header
    with open(path, "rb") as f:
        before = f.read()
    result = rekey_file(path, b"old", new_passphrase=b"new", remove_old=True,
                        kdf=Pbkdf2("sha256", 1000, os.urandom(32)))
    assert (result.opened_slot, result.added_slot, result.removed_slot) == (0, 1, 0)
    with open(path, "rb") as f:
        after = f.read()
    assert after[header.payload_offset :] == before[header.payload_offset :]
    with open(path, "rb") as f:
        with pytest.raises(WrongPassphraseError):
            unlock_stream(f, b"old")
        f.seek(0)
        assert unlock_stream(f, b"new").slot == 1
    with pytest.raises(UsageError, match="last keyslot"):
        rekey_file(path, b"new", remove_slot=1)


def test_read_header_refuses_huge_metadata_claims() -> None:
    data = bytearray(region())
    data[104:108] = (2**32 - 1).to_bytes(4, "big")
    data[208 + 40 : 208 + 44] = (300_000).to_bytes(4, "big")
    with pytest.raises(FormatError):
        read_header(io.BytesIO(bytes(data)))


def test_keyslots_adding_up_beyond_the_total_budget_are_refused_before_work() -> None:
    import time

    key = os.urandom(32)
    data = region(b"p0", key=key)
    for slot in range(1, 8):
        header = luks1.Luks1Header.parse(data)
        data = header.add_keyslot(data, key, b"x", Pbkdf2("sha256", 1000, os.urandom(32)),
                                  slot).region
    hostile = bytearray(data)
    for slot in range(8):  # each just under the per-keyslot cap, 8 x 90M in all
        hostile[208 + 48 * slot + 4 : 208 + 48 * slot + 8] = (90_000_000).to_bytes(4, "big")
    header = luks1.Luks1Header.parse(bytes(hostile))
    start = time.perf_counter()
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED, match="in all"):
        header.unlock(bytes(hostile), b"wrong")
    assert time.perf_counter() - start < 1.0


def test_argon2_work_cap() -> None:
    from imgcrypt.crypto.kdf import Argon2, check_limits

    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED, match="argon2 work"):
        check_limits(Argon2("argon2id", 100, 4 * 1024 * 1024, 4, bytes(16)), 32)
    check_limits(Argon2("argon2id", 4, 1024 * 1024, 4, bytes(16)), 32)  # cryptsetup-like


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("length", [1, 4096, 100_000])
def test_output_size_is_what_decrypt_payload_writes(tmp_path: pytest.TempPathFactory,
                                                    version: int, length: int) -> None:
    path = os.path.join(str(tmp_path), "img.luks")
    payload = os.urandom(length)
    with open(path, "wb") as f:
        encrypt_stream(io.BytesIO(payload), f, b"pw",
                       FormatOptions(version=version, iterations=1000 if version == 1 else 4,
                                     pbkdf_memory_kib=32, pbkdf_parallel=1))
    image_size = os.path.getsize(path)
    for size in (None, length):
        with open(path, "rb") as f:
            opened = unlock_stream(f, b"pw")
            expected = opened.output_size(size, image_size)
            out = io.BytesIO()
            assert decrypt_payload(opened, f, out, size=size) == expected
    assert out.getvalue()[:length] == payload


def test_a_header_cryptsetup_refuses_is_read_but_never_written() -> None:
    """md5 (16 bytes) breaks cryptsetup's LUKS1 rule luks1-hash-size, not qemu's: a header with
    it parses and opens (qemu writes them), and imgcrypt's writer refuses to make one."""
    key = os.urandom(64)
    data = bytearray(region(b"pw", key))
    data[72:104] = b"md5".ljust(32, b"\0")  # the hash field, as qemu-img writes it
    header = luks1.Luks1Header.parse(bytes(data))
    assert "luks1-hash-size" in (header.cryptsetup_refusal() or "")
    assert header.describe()["cryptsetup_refuses"] == header.cryptsetup_refusal()
    with pytest.raises(UsageError, match=r"cryptsetup would refuse this image.*luks1-hash-size"):
        region(b"pw", key, hash_spec="md5")
    assert "cryptsetup_refuses" not in luks1.Luks1Header.parse(region()).describe()
