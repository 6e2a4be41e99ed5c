"""Resource caps: for each one, a hostile input that asks for more is refused fast.

Every test builds the hostile input from a valid seed (fuzz/seeds.py), changes one number, and
asserts the exact error class and that the refusal took well under a second: the cap is checked
before any of the work it guards.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fuzz import seeds, targets
from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Argon2, Pbkdf2, check_limits, derive
from imgcrypt.errors import (
    CertificateError,
    CertificateFault,
    Fault,
    FormatError,
    FormatFault,
    ImgcryptError,
    UnsupportedError,
    UsageError,
    VerificationError,
    VerificationFault,
)
from imgcrypt.luks import luks1
from imgcrypt.luks.container import parse_header
from imgcrypt.luks.rules import HeaderRuleError
from imgcrypt.luks.transfer import decrypt_stream
from imgcrypt.luks.unlock import read_header

FAST = 1.0
PW = seeds.PASSPHRASE


@contextmanager
def refused_fast(kind: type[ImgcryptError], match: str | None = None, *,
                 reason: Fault | None = None) -> Iterator[None]:
    """Refused with exactly ``kind`` and ``reason`` (None: no reason), within FAST seconds."""
    start = time.perf_counter()
    with pytest.raises(kind, match=match) as info:
        yield
    elapsed = time.perf_counter() - start
    assert type(info.value) is kind, f"{type(info.value).__name__} instead of {kind.__name__}"
    assert info.value.reason is reason, f"reason {info.value.reason!r}, not {reason!r}"
    assert elapsed < FAST, f"refusal took {elapsed:.2f} s"


# -- LUKS1 -----------------------------------------------------------------------------------


def luks1_with(header_fields: dict[str, Any] | None = None,
               slot_fields: dict[str, Any] | None = None, slot: int = 0) -> bytes:
    region = bytearray(seeds.luks1_region())
    values = luks1.HEADER_LAYOUT.unpack(bytes(region))
    values.update(header_fields or {})
    region[: luks1.HEADER_LAYOUT.size] = luks1.HEADER_LAYOUT.pack(values)
    at = luks1.HEADER_LAYOUT.size + slot * luks1.KEYSLOT_LAYOUT.size
    raw = luks1.KEYSLOT_LAYOUT.unpack(bytes(region), at)
    raw.update(slot_fields or {})
    region[at : at + luks1.KEYSLOT_LAYOUT.size] = luks1.KEYSLOT_LAYOUT.pack(raw)
    return bytes(region)


def unlock(data: bytes) -> None:
    header = parse_header(data)
    header.unlock(data + bytes(max(0, header.region_size - len(data))), PW)


def test_luks1_seed_opens() -> None:
    unlock(seeds.luks1_region())


def test_luks1_keyslot_iterations_above_cap() -> None:
    data = luks1_with(slot_fields={"iterations": 0xFFFFFFFF})
    with refused_fast(FormatError, "pbkdf2 iterations", reason=FormatFault.LIMIT_EXCEEDED):
        unlock(data)


def test_luks1_digest_iterations_above_cap() -> None:
    data = luks1_with({"mk_digest_iter": 0xFFFFFFFF})
    with refused_fast(FormatError, "pbkdf2 iterations", reason=FormatFault.LIMIT_EXCEEDED):
        unlock(data)


def test_luks1_zero_iterations() -> None:
    with refused_fast(FormatError, reason=FormatFault.LIMIT_EXCEEDED):
        unlock(luks1_with(slot_fields={"iterations": 0}))


def test_luks1_caps_checked_for_every_slot_before_any_work() -> None:
    """A good slot 0 and a hostile slot 1: refused before slot 0's KDF runs."""
    data = luks1_with(slot_fields={"active": luks1.KEYSLOT_ACTIVE, "iterations": 0xFFFFFFFF},
                      slot=1)
    with refused_fast(FormatError, reason=FormatFault.LIMIT_EXCEEDED):
        unlock(data)


def test_luks1_stripes_above_cap() -> None:
    with refused_fast(HeaderRuleError, "luks1-stripes"):
        parse_header(luks1_with(slot_fields={"stripes": 4001}))


def test_luks1_keyslot_far_away() -> None:
    data = luks1_with({"payload_offset": 0xFFFFFFFF},
                      slot_fields={"key_material_offset": 0x7FFFFFFF})
    with refused_fast(FormatError, "beyond", reason=FormatFault.LIMIT_EXCEEDED):
        parse_header(data)
    with refused_fast(FormatError, reason=FormatFault.LIMIT_EXCEEDED):
        read_header(io.BytesIO(data))


def test_luks1_key_size_hostile() -> None:
    with refused_fast(HeaderRuleError, "luks1-keyslot-fits"):
        parse_header(luks1_with({"key_bytes": 0xFFFFFFFF}))


def test_luks1_payload_far_away_in_a_short_file() -> None:
    """A payload offset of 2 TiB in a 9 KiB file: the skip ends at end of file."""
    data = luks1_with({"payload_offset": 0xFFFFFFFF})
    with refused_fast(FormatError, reason=FormatFault.TRUNCATED):
        decrypt_stream(io.BytesIO(data), io.BytesIO(), PW)


# -- LUKS2 -----------------------------------------------------------------------------------



def luks2_doc() -> dict[str, Any]:
    return json.loads(seeds.luks2_json())


def luks2_with(obj: dict[str, Any], hdr_size: int = 16384) -> bytes:
    text = json.dumps(obj).encode()
    region = bytearray(seeds.luks2_region())
    assert len(text) < hdr_size - 4096
    for offset in (0, hdr_size):
        region[offset + 4096 : offset + hdr_size] = text + bytes(hdr_size - 4096 - len(text))
    return targets._luks2_with_checksums(bytes(region))


def test_luks2_seed_opens() -> None:
    unlock(seeds.luks2_region())
    unlock(luks2_with(luks2_doc()))


def _argon(**changes: Any) -> dict[str, Any]:
    obj = luks2_doc()
    salt = base64.b64encode(bytes(32)).decode()
    kdf = {"type": "argon2id", "time": 4, "memory": 1024, "cpus": 1, "salt": salt}
    kdf.update(changes)
    obj["keyslots"]["0"]["kdf"] = kdf
    return obj


@pytest.mark.parametrize(("field", "value", "message"), [
    ("memory", 2**40, "argon2 memory"),
    ("memory", DEFAULT_LIMITS.max_argon2_memory_kib + 1, "argon2 memory"),
    ("time", 10**9, "argon2 time"),
    ("time", DEFAULT_LIMITS.max_argon2_time + 1, "argon2 time"),
    ("cpus", 1024, "argon2 parallelism"),
    ("cpus", DEFAULT_LIMITS.max_argon2_parallel + 1, "argon2 parallelism"),
])
def test_luks2_argon2_above_caps(field: str, value: int, message: str) -> None:
    with refused_fast(FormatError, message, reason=FormatFault.LIMIT_EXCEEDED):
        unlock(luks2_with(_argon(**{field: value})))


def test_luks2_argon2_beyond_u64() -> None:
    with refused_fast(FormatError, reason=FormatFault.LIMIT_EXCEEDED):
        unlock(luks2_with(_argon(memory=2**70)))


def test_luks2_pbkdf2_iterations_above_cap() -> None:
    obj = luks2_doc()
    obj["keyslots"]["0"]["kdf"]["iterations"] = DEFAULT_LIMITS.max_pbkdf2_iterations + 1
    with refused_fast(FormatError, "pbkdf2 iterations", reason=FormatFault.LIMIT_EXCEEDED):
        unlock(luks2_with(obj))


def test_luks2_digest_iterations_above_cap() -> None:
    obj = luks2_doc()
    obj["digests"]["0"]["iterations"] = 2**40
    with refused_fast(FormatError, "pbkdf2 iterations", reason=FormatFault.LIMIT_EXCEEDED):
        unlock(luks2_with(obj))


@pytest.mark.parametrize("section", ["keyslots", "tokens", "segments", "digests"])
def test_luks2_object_counts_above_cap(section: str) -> None:
    obj = luks2_doc()
    obj[section] = {str(i): {"type": "x"} for i in range(33)}
    with refused_fast(HeaderRuleError):
        parse_header(luks2_with(obj))


def test_luks2_object_id_above_cap() -> None:
    obj = luks2_doc()
    obj["tokens"] = {"4294967295": {"type": "x"}}
    with refused_fast(HeaderRuleError, "luks2-tokens"):
        parse_header(luks2_with(obj))


def test_luks2_keyslots_size_above_cap() -> None:
    obj = luks2_doc()
    obj["config"]["keyslots_size"] = str((128 << 20) + 4096)
    with refused_fast(HeaderRuleError, "luks2-keyslots-size"):
        parse_header(luks2_with(obj))


def test_luks2_keyslot_area_far_away() -> None:
    obj = luks2_doc()
    obj["keyslots"]["0"]["area"]["offset"] = str(2**63)
    with refused_fast(HeaderRuleError, "luks2-areas-placed"):
        parse_header(luks2_with(obj))


@pytest.mark.parametrize(("field", "value"), [("key_size", 513), ("stripes", 4001)])
def test_luks2_key_size_and_stripes_above_cap(field: str, value: int) -> None:
    obj = luks2_doc()
    if field == "stripes":
        obj["keyslots"]["0"]["af"]["stripes"] = value
    else:
        obj["keyslots"]["0"]["key_size"] = value
    with refused_fast(FormatError, reason=FormatFault.LIMIT_EXCEEDED):
        unlock(luks2_with(obj))


def test_luks2_json_nesting() -> None:
    obj = luks2_doc()
    text = json.dumps(obj)[:-1] + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}"
    region = bytearray(seeds.luks2_region())
    for offset in (0, 16384):
        region[offset + 4096 : offset + 16384] = text.encode().ljust(12288, b"\0")
    # json-c, cryptsetup's parser, refuses it past depth 31 before any rule is checked.
    with refused_fast(HeaderRuleError, "nested deeper than json-c reads"):
        parse_header(targets._luks2_with_checksums(bytes(region)))


def test_luks2_json_size_cap() -> None:
    from imgcrypt.luks.luks2.metadata import MAX_JSON_SIZE, load_json

    with refused_fast(FormatError, reason=FormatFault.LIMIT_EXCEEDED):
        load_json(" " * (MAX_JSON_SIZE + 1))


def test_luks2_huge_integer_literal() -> None:
    obj = luks2_doc()
    text = json.dumps(obj)[:-1] + ', "n": ' + "9" * 5000 + "}"
    region = bytearray(seeds.luks2_region())
    for offset in (0, 16384):
        region[offset + 4096 : offset + 16384] = text.encode().ljust(12288, b"\0")
    with refused_fast(HeaderRuleError, "luks2-json-parse"):
        parse_header(targets._luks2_with_checksums(bytes(region)))


def test_luks2_metadata_size_hostile() -> None:
    """A hostile hdr_size in one copy falls back to the other; in both, a FormatError."""
    data = bytearray(seeds.luks2_region())
    data[8:16] = (2**63).to_bytes(8, "big")
    header = parse_header(bytes(data))
    assert header.copies_valid == (False, True)  # type: ignore[attr-defined]
    data[16384 + 8 : 16384 + 16] = (2**63).to_bytes(8, "big")
    with refused_fast(HeaderRuleError, "luks2-hdr-size"):
        parse_header(bytes(data))


def test_luks2_largest_region_from_a_short_stream() -> None:
    """4 MiB metadata copies and 128 MiB of keyslots (the largest legal region) announced by a
    stream that ends after the metadata: a FormatError (TRUNCATED), fast, within the stream cap."""
    from imgcrypt.luks.luks2.disk import BINARY_SIZE, MAX_HDR_SIZE
    from imgcrypt.luks.unlock import MAX_REGION_SIZE

    obj = luks2_doc()
    obj["config"]["json_size"] = str(MAX_HDR_SIZE - BINARY_SIZE)
    obj["config"]["keyslots_size"] = str(128 << 20)
    obj["segments"]["0"]["offset"] = str(2 * MAX_HDR_SIZE + (128 << 20))
    obj["keyslots"]["0"]["area"]["offset"] = str(2 * MAX_HDR_SIZE)
    text = json.dumps(obj).encode()
    seed = seeds.luks2_region()
    copies = bytearray()
    for offset in (0, MAX_HDR_SIZE):
        binary = bytearray(seed[0:BINARY_SIZE] if offset == 0 else seed[16384 : 16384 + 4096])
        binary[8:16] = MAX_HDR_SIZE.to_bytes(8, "big")
        binary[0xF8:0x100] = offset.to_bytes(8, "big")
        copies += binary + text + bytes(MAX_HDR_SIZE - BINARY_SIZE - len(text))
    data = targets._luks2_with_checksums(bytes(copies))
    header = parse_header(data)
    assert header.region_size == 2 * MAX_HDR_SIZE + (128 << 20) <= MAX_REGION_SIZE
    with refused_fast(HeaderRuleError, "image-holds-header"):
        read_header(io.BytesIO(data))


def test_luks2_keyslots_size_cap_keeps_regions_within_the_stream_cap() -> None:
    from imgcrypt.luks.luks2.disk import MAX_HDR_SIZE
    from imgcrypt.luks.luks2.metadata import MAX_KEYSLOTS_SIZE
    from imgcrypt.luks.unlock import MAX_REGION_SIZE

    assert 2 * MAX_HDR_SIZE + MAX_KEYSLOTS_SIZE <= MAX_REGION_SIZE


# -- the KDF caps themselves -------------------------------------------------------------------


@pytest.mark.parametrize("kdf", [
    Pbkdf2("sha256", DEFAULT_LIMITS.max_pbkdf2_iterations + 1, bytes(32)),
    Argon2("argon2id", 1, DEFAULT_LIMITS.max_argon2_memory_kib + 1, 1, bytes(16)),
    Argon2("argon2id", DEFAULT_LIMITS.max_argon2_time + 1, 64, 1, bytes(16)),
    Argon2("argon2i", 1, 64, DEFAULT_LIMITS.max_argon2_parallel + 1, bytes(16)),
    Pbkdf2("sha256", 1, bytes(DEFAULT_LIMITS.max_salt_size + 1)),
])
def test_derive_refuses_above_caps(kdf: Pbkdf2 | Argon2) -> None:
    with refused_fast(FormatError, reason=FormatFault.LIMIT_EXCEEDED):
        derive(kdf, PW, 32)
    with refused_fast(FormatError, reason=FormatFault.LIMIT_EXCEEDED):
        derive(Pbkdf2("sha256", 1, bytes(32)), PW, DEFAULT_LIMITS.max_key_size + 1)


def test_unknown_kdf_and_hash() -> None:
    with refused_fast(UnsupportedError):
        check_limits(Argon2("argon2d", 1, 64, 1, bytes(16)), 32)
    with refused_fast(UnsupportedError):
        check_limits(Pbkdf2("shake256", 1, bytes(32)), 32)


# -- signing and properties --------------------------------------------------------------------



def test_property_part_count_above_cap() -> None:
    from imgcrypt.signing.storage import MAX_PARTS, join_value

    props = {"sig_count": str(MAX_PARTS + 1), "sig_sha256": "x"}
    with refused_fast(VerificationError, reason=VerificationFault.MALFORMED_PART):
        join_value("sig", props)


def test_property_part_flood() -> None:
    """Ten thousand part records: refused on the count, not after reading them all."""
    from imgcrypt.signing.storage import join_value

    props = {"sig_count": "2", "sig_sha256": "x"}
    props.update({f"sig_{i}": f"{i}:AAAA" for i in range(1, 10_000)})
    with refused_fast(VerificationError, reason=VerificationFault.EXTRA_PART):
        join_value("sig", props)


def test_property_joined_length_above_cap() -> None:
    from imgcrypt.signing.storage import MAX_JOINED_LENGTH, MAX_PARTS, join_value

    piece = "A" * (MAX_JOINED_LENGTH // MAX_PARTS + 10)
    props = {"sig_count": str(MAX_PARTS), "sig_sha256": "x"}
    props.update({f"sig_{i}": f"{i}:{piece}" for i in range(1, MAX_PARTS + 1)})
    with refused_fast(VerificationError, "longer than", reason=VerificationFault.MALFORMED_PART):
        join_value("sig", props)


def test_property_document_size_above_cap() -> None:
    from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES, parse_properties

    with refused_fast(VerificationError, reason=VerificationFault.MALFORMED_PROPERTIES):
        parse_properties(b" " * (MAX_DOCUMENT_BYTES + 1))


def test_glance_signature_length_above_cap() -> None:
    from imgcrypt.signing.certs import check_certificate
    from imgcrypt.signing.glance import MAX_SIGNATURE_CHARS, GlanceVerifier

    props = dict(seeds.glance_properties(), img_signature="A" * (MAX_SIGNATURE_CHARS + 4))
    checked = check_certificate([seeds.p384_certificate()], clock=targets._now)
    with refused_fast(VerificationError, reason=VerificationFault.MALFORMED_SIGNATURE):
        GlanceVerifier(props, checked)


def test_certificate_bundle_count_and_size_above_caps() -> None:
    from cryptography.hazmat.primitives import serialization

    from imgcrypt.signing.certs import (
        MAX_BUNDLE_CERTIFICATES,
        MAX_CERTIFICATE_BYTES,
        load_certificates,
    )

    pem = seeds.ed25519_certificate().public_bytes(serialization.Encoding.PEM)
    with refused_fast(CertificateError, "too many", reason=CertificateFault.LOAD):
        load_certificates(pem * (MAX_BUNDLE_CERTIFICATES + 1))
    with refused_fast(CertificateError, "larger than", reason=CertificateFault.LOAD):
        load_certificates(pem + b"\n" * MAX_CERTIFICATE_BYTES)


def _ca_chain(depth: int) -> tuple[list[Any], Any]:
    """A root, ``depth`` intermediate CAs, and a leaf: (leaf + intermediates, root)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    def cert(name: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False), critical=True)
        )
        return builder.sign(issuer_key, None)

    keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(depth + 2)]
    root = cert("root", keys[0], "root", keys[0], True)
    chain = []
    for i in range(1, depth + 1):
        chain.append(cert(f"ca{i}", keys[i], "root" if i == 1 else f"ca{i - 1}",
                          keys[i - 1], True))
    leaf = cert("leaf", keys[-1], f"ca{depth}" if depth else "root", keys[-2], False)
    return [leaf, *reversed(chain)], root


def test_certificate_chain_length_above_cap() -> None:
    from imgcrypt.signing.certs import CertificatePolicy, check_certificate

    policy = CertificatePolicy()
    ok, root = _ca_chain(2)
    check_certificate(ok, trust=[root], clock=targets._now)
    long, root = _ca_chain(policy.max_chain_depth + 2)
    with refused_fast(CertificateError, reason=CertificateFault.UNTRUSTED_CHAIN):
        check_certificate(long, trust=[root], clock=targets._now)


def test_private_key_size_above_cap() -> None:
    from imgcrypt.signing.keyfile import MAX_KEY_BYTES, load_private_key

    with refused_fast(FormatError, "too large"):
        load_private_key(b"-----BEGIN" + bytes(MAX_KEY_BYTES))


# -- files the CLI reads -----------------------------------------------------------------------


def test_passphrase_file_above_cap(tmp_path: Path) -> None:
    from imgcrypt.cli.inputs import MAX_PASSPHRASE_FILE, read_passphrase_file

    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(MAX_PASSPHRASE_FILE + 1)
    with refused_fast(UsageError, "larger than"):
        read_passphrase_file(str(big))


def test_keystore_file_above_cap(tmp_path: Path) -> None:
    from imgcrypt.keys import local
    store = local.LocalKeyStore(tmp_path / "ks")
    from imgcrypt.keys.secret import Secret

    key_id = store.store(Secret(b"k" * 32))
    path = tmp_path / "ks" / f"{key_id}.json"
    with open(path, "ab") as f:
        f.write(b" " * local.MAX_FILE_BYTES)
    with refused_fast(FormatError, "larger than"):
        store.get(key_id)


# -- the cost the caps still allow, measured ---------------------------------------------------


def _per_second(fn: Callable[[], None], units: int) -> float:
    start = time.perf_counter()
    fn()
    return units / (time.perf_counter() - start)


def test_pbkdf2_cost_at_cap_is_known() -> None:
    """Record what the iteration cap costs here, for docs/security.md; asserts a sane rate."""
    rate = _per_second(lambda: derive(Pbkdf2("sha256", 200_000, bytes(32)), PW, 32), 200_000)
    seconds_at_cap = DEFAULT_LIMITS.max_pbkdf2_iterations / rate
    print(f"pbkdf2-sha256: {rate:,.0f} iterations/s; {seconds_at_cap:.0f} s per keyslot at cap")
    assert rate > 10_000


# -- qemu-img output and service properties ----------------------------------------------------


def test_qemu_info_size_and_values_above_caps() -> None:
    from imgcrypt import qemu
    with refused_fast(FormatError, "larger than"):
        qemu.parse_image_info(b" " * (qemu.MAX_INFO_JSON + 1))
    with refused_fast(FormatError, "out of range"):
        qemu.parse_image_info(json.dumps({"format": "qcow2", "virtual-size": 2**63}).encode())
    with refused_fast(FormatError):
        qemu.parse_image_info(b'{"format": "raw", "virtual-size": ' + b"9" * 5000 + b"}")


def test_decrypt_size_claim_above_cap() -> None:
    from imgcrypt.service import claims

    props = {"os_encrypt_key_id": seeds.KEY_ID, "os_decrypt_size": str(claims.MAX_DECRYPT_SIZE + 1)}
    with refused_fast(FormatError, "byte count", reason=FormatFault.ENCRYPTION_CLAIM):
        claims.encryption_claim(props)
    with refused_fast(FormatError, "byte count", reason=FormatFault.ENCRYPTION_CLAIM):
        claims.encryption_claim({**props, "os_decrypt_size": "9" * 5000})
