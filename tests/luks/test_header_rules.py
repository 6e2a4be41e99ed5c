"""imgcrypt's verdict on a header equals cryptsetup's, for one broken header per rule.

Each case edits an image cryptsetup made (tests/helpers/headerkit.py, not imgcrypt's writer), asks
``cryptsetup luksDump`` about a copy, and asserts cryptsetup and imgcrypt both give the verdict
the case expects; a refused header must name the rule the case breaks. Hypothesis mutations on
top compare the two verdicts only, for a bounded number of cryptsetup calls.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt.luks import rules
from imgcrypt.luks.luks1 import rules as luks1_rules
from imgcrypt.luks.luks2 import rules as luks2_rules
from tests.helpers import headerkit as hk
from tests.helpers.util import imgcrypt

Builder = Callable[[bytes], bytes]
P2 = 320 * 512  # the LUKS2 base image's payload offset
SALT = base64.b64encode(bytes(32)).decode()


@pytest.fixture(scope="session")
def bases(cryptsetup: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("bases")
    key = work / "key"
    key.write_bytes(hk.PASSPHRASE)
    return {"luks1": hk.make_luks1(cryptsetup, work / "l1.img", key),
            "luks2": hk.make_luks2(cryptsetup, work / "l2.img", key)}


# -- LUKS1: (id, builder, cryptsetup loads it?, rule named when refused) ----------------------

def _l1_slot(slot: int, field: str, value: int) -> Builder:
    return lambda b: hk.luks1_slot(b, slot, field, value)


def _l1_overlap(b: bytes) -> bytes:
    return hk.luks1_slot(b, 5, "offset", hk.luks1_get_slot(b, 4, "offset") + 1)


def _l1_into_payload(b: bytes) -> bytes:
    return hk.luks1_slot(b, 7, "offset", 4096 - 10)


LUKS1_CASES: list[tuple[str, Builder, bool, str | None]] = [
    ("base", lambda b: b, True, None),
    # imgcrypt opens it as qemu does, and reports cryptsetup's refusal
    ("hash-md5", lambda b: hk.luks1_text(b, 72, "md5"), False, "luks1-hash-size"),
    ("hash-unknown", lambda b: hk.luks1_text(b, 72, "nohash"), False, "luks1-hash"),
    ("hash-whirlpool", lambda b: hk.luks1_text(b, 72, "whirlpool"), True, None),
    ("hash-uppercase", lambda b: hk.luks1_text(b, 72, "SHA256"), True, None),
    ("hash-sha512-256", lambda b: hk.luks1_text(b, 72, "sha512-256"), True, None),
    ("hash-shake256", lambda b: hk.luks1_text(b, 72, "shake256"), True, None),
    ("hash-shake128", lambda b: hk.luks1_text(b, 72, "shake128"), False, "luks1-hash-size"),
    ("hash-ripemd-alias", lambda b: hk.luks1_text(b, 72, "ripemd"), True, None),
    ("hash-python-spelling", lambda b: hk.luks1_text(b, 72, "sha3_256"), False, "luks1-hash"),
    ("inactive-stripes", _l1_slot(3, "stripes", 3999), False, "luks1-stripes"),
    ("inactive-in-header", _l1_slot(6, "offset", 1), False, "luks1-keyslot-after-header"),
    ("inactive-at-payload", _l1_slot(2, "offset", 4096), False,
     "luks1-keyslot-before-payload"),
    ("inactive-into-payload", _l1_into_payload, False, "luks1-keyslot-fits"),
    ("inactive-overlap", _l1_overlap, False, "luks1-keyslots-disjoint"),
    ("key-size-0", lambda b: hk.luks1_field(b, 108, ">I", 0), False, "luks1-key-size"),
    ("short-image", lambda b: b[: 2000 * 512], False, "image-holds-header"),
    ("invalid-state", _l1_slot(1, "active", 0x12345678), True, None),
    ("detached", lambda b: hk.luks1_field(b, 104, ">I", 0), True, None),
    ("twofish", lambda b: hk.luks1_text(b, 8, "twofish"), True, None),
    ("serpent-cbc", lambda b: hk.luks1_text(hk.luks1_text(b, 8, "serpent"), 40,
                                            "cbc-essiv:sha256"), True, None),
    ("partial-sector", lambda b: b + bytes(100), True, None),
]


# -- LUKS2 --------------------------------------------------------------------------------------

def _j(edit: Callable[[dict[str, Any]], Any]) -> Builder:
    return lambda b: hk.with_json(b, edit)


def _two_segments(first: dict[str, Any], second: dict[str, Any],
                  digest_segments: list[str]) -> Builder:
    def edit(o: dict[str, Any]) -> None:
        o["segments"] = {"0": first, "1": second}
        o["digests"]["0"]["segments"] = digest_segments
    return _j(edit)


def _crypt(offset: int, size: str) -> dict[str, Any]:
    return {"type": "crypt", "offset": str(offset), "size": size, "iv_tweak": "0",
            "encryption": "aes-xts-plain64", "sector_size": 512}


def _second_digest(o: dict[str, Any]) -> None:
    o["digests"]["1"] = dict(o["digests"]["0"], segments=[])


def _second_keyslot_overlapping(o: dict[str, Any]) -> None:
    o["keyslots"]["1"] = json.loads(json.dumps(o["keyslots"]["0"]))
    o["digests"]["0"]["keyslots"].append("1")


def _damaged_primary(b: bytes) -> bytes:
    return hk.put(b, 0, b"\0" * 6)


def _foreign_over_primary(b: bytes) -> bytes:
    return hk.put(_damaged_primary(b), 512, hk.lvm2_label(1))


def _stale_secondary(b: bytes) -> bytes:
    return hk.with_binary(b, 16, (0).to_bytes(8, "big"), copies=(1,))


def _stale_secondary_foreign(b: bytes) -> bytes:
    return hk.put(_stale_secondary(b), 512, hk.lvm2_label(1))


def _argon2_spelling(o: dict[str, Any]) -> None:
    o["keyslots"]["0"]["kdf"] = {"type": "argon2", "time": 4, "memory": 32768, "cpus": 1,
                                 "salt": SALT}


LUKS2_CASES: list[tuple[str, Builder, bool, str | None]] = [
    ("base", lambda b: b, True, None),
    # one copy on disk, both copies broken alike
    ("magic-both", lambda b: hk.put(_damaged_primary(b), 16384, b"\0" * 6), False,
     "luks-magic"),
    ("magic-primary-secondary-checksum", lambda b: hk.put(_damaged_primary(b), 16384 + 5000,
                                                          b"\1"), False, "luks2-magic"),
    ("version-3", lambda b: hk.with_binary(b, 6, b"\0\3"), False, "luks-version"),
    ("version-0", lambda b: hk.with_binary(b, 6, b"\0\0", copies=(0,)), True, None),
    ("version-0-secondary-checksum", lambda b: hk.put(
        hk.with_binary(b, 6, b"\0\0", copies=(0,)), 16384 + 5000, b"\1"), False,
     "luks2-version"),
    ("hdr-offset", lambda b: hk.with_binary(b, 0x100, (512).to_bytes(8, "big")), False,
     "luks2-hdr-offset"),
    ("hdr-size", lambda b: hk.with_binary(b, 8, (1 << 30).to_bytes(8, "big")), False,
     "luks2-hdr-size"),
    ("checksum-alg", lambda b: hk.with_binary(b, 0x48, b"nohash".ljust(32, b"\0")), False,
     "luks2-checksum-alg"),
    ("checksum", lambda b: hk.with_binary(b, 0x1C0, b"\1", fix=False), False, "luks2-checksum"),
    ("json-start", lambda b: hk.with_area(b, b" " + hk.with_json_text(b)), False,
     "luks2-json-start"),
    ("json-parse", lambda b: hk.with_area(b, b"{bad"), False, "luks2-json-parse"),
    ("json-after-text", lambda b: hk.with_area(b, hk.with_json_text(b) + b" x"), False,
     "luks2-json-trailer"),
    ("json-after-nul", lambda b: hk.with_area(b, hk.with_json_text(b) + b"\0\0junk"), False,
     "luks2-json-trailer"),
    # both copies: recovery
    ("damaged-primary", _damaged_primary, True, None),
    ("foreign-over-primary", lambda b: _foreign_over_primary(b) + bytes(2 << 20), False,
     "luks2-foreign-signature"),
    ("foreign-on-tiny-image", _foreign_over_primary, True, None),
    ("foreign-lvm-sector-0", lambda b: hk.put(_damaged_primary(b), 0, hk.lvm2_label(0)) +
     bytes(2 << 20), False, "luks2-foreign-signature"),
    ("foreign-lvm-sector-3", lambda b: hk.put(_damaged_primary(b), 1536, hk.lvm2_label(3)) +
     bytes(2 << 20), False, "luks2-foreign-signature"),
    ("lvm-label-bad-crc", lambda b: hk.put(_foreign_over_primary(b), 512 + 16, bytes(4)) +
     bytes(2 << 20), True, None),
    ("mbr-signature", lambda b: hk.put(_damaged_primary(b), 510, b"\x55\xaa") +
     bytes(2 << 20), True, None),
    ("stale-secondary", _stale_secondary, True, None),
    ("stale-secondary-foreign", lambda b: _stale_secondary_foreign(b) + bytes(2 << 20), False,
     "luks2-foreign-signature"),
    ("short-image", lambda b: b[: 2 * 16384 + 65536], False, "image-holds-header"),
    ("partial-sector", lambda b: b + bytes(100), True, None),
    # the JSON
    ("requirements", _j(hk.set_path("config/requirements", {"mandatory": "x"})), False,
     "luks2-requirements"),
    ("requirement-unknown", _j(hk.set_path("config/requirements", {"mandatory": ["x-new"]})),
     True, None),
    ("token-keyslot", _j(hk.set_path("tokens/0", {"type": "t", "keyslots": ["7"]})), False,
     "luks2-tokens"),
    ("token-ok", _j(hk.set_path("tokens/0", {"type": "luks2-keyring", "keyslots": ["0"],
                                             "key_description": "k"})), True, None),
    ("digest-keyslot", _j(hk.set_path("digests/0/keyslots", ["0", "7"])), False,
     "luks2-digests"),
    ("digest-segment", _j(hk.set_path("digests/0/segments", ["0", "3"])), False,
     "luks2-digests"),
    ("segments-empty", _j(lambda o: o.__setitem__("segments", {}) or
                          o["digests"]["0"].__setitem__("segments", [])), False,
     "luks2-segments"),
    ("segment-gap", _j(lambda o: o.__setitem__("segments", {"1": o["segments"]["0"]}) or
                       o["digests"]["0"].__setitem__("segments", ["1"])), False,
     "luks2-segments"),
    ("segment-size-zero", _j(hk.set_path("segments/0/size", "0")), False,
     "luks2-segment-fields"),
    ("segment-size-number", _j(hk.set_path("segments/0/size", 4096)), False,
     "luks2-segment-fields"),
    ("segment-offset-odd", _j(hk.set_path("segments/0/offset", str(P2 + 100))), False,
     "luks2-segment-fields"),
    ("segment-flags", _j(hk.set_path("segments/0/flags", "x")), False, "luks2-segment-fields"),
    ("segment-only-backup", _j(hk.set_path("segments/0/flags", ["backup-final"])), False,
     "luks2-segment-order"),
    ("encryption-empty", _j(hk.set_path("segments/0/encryption", "")), False,
     "luks2-crypt-segment"),
    ("iv-tweak-missing", _j(hk.drop_path("segments/0/iv_tweak")), False,
     "luks2-crypt-segment"),
    ("integrity-partial", _j(hk.set_path("segments/0/integrity", {"type": "hmac(sha256)"})),
     False, "luks2-crypt-integrity"),
    ("integrity", _j(hk.set_path("segments/0/integrity", {
        "type": "hmac(sha256)", "journal_encryption": "none",
        "journal_integrity": "none"})), True, None),
    ("sector-size-1000", _j(hk.set_path("segments/0/sector_size", 1000)), False,
     "luks2-sector-size"),
    ("sector-size-8192", _j(hk.set_path("segments/0/sector_size", 8192)), True, None),
    ("size-unaligned-to-sector", _j(lambda o: o["segments"]["0"].update(
        sector_size=4096, size="4608")), False, "luks2-sector-size"),
    ("iv-tweak-negative", _j(hk.set_path("segments/0/iv_tweak", "-1")), False,
     "luks2-iv-tweak"),
    ("segment-no-digest", _j(hk.set_path("digests/0/segments", [])), False,
     "luks2-segment-digest"),
    ("dynamic-not-last", _two_segments(_crypt(P2, "dynamic"), _crypt(P2 + 8192, "4096"),
                                       ["0", "1"]), False, "luks2-dynamic-last"),
    ("segments-overlap", _two_segments(_crypt(P2, "8192"), _crypt(P2 + 4096, "dynamic"),
                                       ["0", "1"]), False, "luks2-segments-disjoint"),
    ("linear-before-crypt", _two_segments(
        {"type": "linear", "offset": str(P2), "size": "4096"}, _crypt(P2 + 4096, "dynamic"),
        ["1"]), True, None),
    ("two-crypt", _two_segments(_crypt(P2, "4096"), _crypt(P2 + 4096, "dynamic"), ["0", "1"]),
     True, None),
    ("unknown-segment-type", _j(lambda o: o["segments"]["0"].update(type="x-future")), True,
     None),
    ("segment-size-2^64-512", _j(hk.set_path("segments/0/size", str((1 << 64) - 512))),
     True, None),
    ("keyslot-key-size-string", _j(hk.set_path("keyslots/0/key_size", "32")), False,
     "luks2-keyslots"),
    ("keyslot-key-size-negative", _j(hk.set_path("keyslots/0/key_size", -1)), False,
     "luks2-keyslots"),
    ("config-keyslots-size-missing", _j(hk.drop_path("config/keyslots_size")), False,
     "luks2-config"),
    ("config-flags", _j(hk.set_path("config/flags", [1])), False, "luks2-config"),
    ("metadata-size", _j(hk.set_path("config/json_size", "12000")), False,
     "luks2-metadata-size"),
    ("keyslots-size-unaligned", _j(hk.set_path("config/keyslots_size", "5000")), False,
     "luks2-keyslots-size"),
    ("keyslots-size-into-data", _j(hk.set_path("config/keyslots_size", str(256 << 10))),
     False, "luks2-keyslots-size"),
    ("area-offset-missing", _j(hk.drop_path("keyslots/0/area/offset")), False, "luks2-areas"),
    ("area-in-metadata", _j(hk.set_path("keyslots/0/area/offset", "16384")), False,
     "luks2-areas-placed"),
    ("areas-overlap", _j(_second_keyslot_overlapping), False, "luks2-areas-placed"),
    ("json-size", _j(lambda o: (
        o["config"].update(json_size=str(32768 - 4096), keyslots_size="65536"),
        o["keyslots"]["0"]["area"].update(offset="65536", size="65536"))), False,
     "luks2-json-size"),
    ("reencrypt-without-backups", _j(hk.set_path("config/requirements",
                                                 {"mandatory": ["online-reencrypt-v2"]})),
     False, "luks2-reencrypt-backups"),
    ("kdf-salt-missing", _j(hk.drop_path("keyslots/0/kdf/salt")), False,
     "luks2-keyslot-luks2"),
    ("af-type", _j(hk.set_path("keyslots/0/af/type", "luks2")), False, "luks2-keyslot-luks2"),
    ("area-type", _j(hk.set_path("keyslots/0/area/type", "x")), False, "luks2-keyslot-luks2"),
    ("kdf-extra-param", _j(hk.set_path("keyslots/0/kdf/time", 4)), True, None),
    ("kdf-argon2-spelling", _j(_argon2_spelling), True, None),
    ("kdf-unknown", _j(hk.set_path("keyslots/0/kdf/type", "scrypt")), True, None),
    ("keyslot-no-digest", _j(hk.set_path("digests/0/keyslots", [])), False,
     "luks2-keyslot-one-digest"),
    ("keyslot-two-digests", _j(_second_digest), False, "luks2-keyslot-one-digest"),
    ("reencrypt-keyslot-alone", _j(lambda o: o["keyslots"]["0"].update(type="reencrypt")),
     False, "luks2-reencrypt-keyslot"),
    ("unknown-keyslot-type", _j(lambda o: o["keyslots"]["0"].update(type="x-future") or
                                o["digests"]["0"].__setitem__("keyslots", [])), True, None),
    ("digest-wrong-length", _j(hk.set_path("digests/0/digest",
                                           base64.b64encode(bytes(24)).decode())), True, None),
    ("serpent", _j(hk.set_path("segments/0/encryption", "serpent-xts-plain64")), True, None),
    ("json-repeated-key", lambda b: hk.with_area(b, hk.with_json_text(b)[:-1] +
                                                 b',"tokens":{}}'), True, None),
    ("json-nan", lambda b: hk.with_area(b, hk.with_json_text(b)[:-1] + b',"x":NaN}'), True,
     None),
    ("kdf-iterations-70-bits", _j(hk.set_path("keyslots/0/kdf/iterations", 1 << 70)), True,
     None),
    ("kdf-iterations-float", _j(hk.set_path("keyslots/0/kdf/iterations", 2.0)), False,
     "luks2-keyslot-luks2"),
    ("key-size-64-bits", _j(hk.set_path("keyslots/0/key_size", 1 << 63)), False,
     "luks2-keyslots"),
    ("keyslot-id-leading-zero", _j(lambda o: (
        o["keyslots"].__setitem__("01", o["keyslots"].pop("0")),
        o["digests"]["0"].__setitem__("keyslots", ["01"]))), False, "luks2-keyslot-one-digest"),
    ("33-tokens", _j(lambda o: o["tokens"].update(
        {str(i): {"type": "x-t", "keyslots": []} for i in range(33)})), True, None),
    ("token-id-40", _j(hk.set_path("tokens/40", {"type": "x-t", "keyslots": []})), True, None),
    ("json-size-with-sign", _j(hk.set_path("config/json_size", "+12288")), True, None),
    ("segment-offset-with-sign", _j(hk.set_path("segments/0/offset", f"+{P2}")), False,
     "luks2-segment-fields"),
]

# json-c (cryptsetup's JSON parser, default mode) reads JSON that is not JSON; imgcrypt reads
# the JSON area as json-c does. (case id, text replacing the final "}", cryptsetup loads it?)
JSON_C_LENIENCY: list[tuple[str, bytes, bool]] = [
    ("comment", b"/*c*/}", True),
    ("trailing-comma", b",}", True),
    ("single-quotes", b",'x':1}", True),
    ("non-utf8", b',"x":"\xff"}', True),
    ("line-comment", b"// c\n}", True),
    ("trailing-comma-then-comment", b",/*c*/}", True),
    ("comment-after-object", b"} /*c*/ ", True),
    ("whitespace-after-object", b"}\n ", True),
    ("single-quoted-key-with-double-quote", b",'x\"y':'a\"b'}", True),
    ("control-char-in-string", b',"x":"a\tb\x01"}', True),
    ("literals-any-case", b',"x":[TRUE,False,nULL,nan,-INFINITY]}', True),
    ("lenient-numbers", b',"x":[007,1.,-.5,1e+,-0]}', True),
    ("array-trailing-comma", b',"x":[1,2,]}', True),
    ("comment-inside-string", b',"x":"/*"}', True),
    ("nul-in-string", b',"x":"a\0b"}', False),
    ("nul-in-comment", b"/*a\0b*/}", False),
    ("nul-in-line-comment", b"//a\0b\n}", False),
    ("unterminated-comment", b"/*c}", False),
    ("lone-slash", b"/}", False),
    ("unquoted-key", b",x:1}", False),
    ("two-trailing-commas", b",,}", False),
    ("leading-comma-in-array", b',"x":[,1]}', False),
    ("single-quote-escape", b",'x\\'y':1}", False),
    ("unknown-escape", b',"x":"\\q"}', False),
    ("number-then-letter", b',"x":1x}', False),
    ("nesting-31", b',"x":' + b"[" * 31 + b"]" * 31 + b"}", True),
    ("nesting-32", b',"x":' + b"[" * 31 + b"1" + b"]" * 31 + b"}", False),
    ("nesting-32-empty", b',"x":' + b"[" * 32 + b"]" * 32 + b"}", False),
    ("text-after-comment", b"} /*c*/ x", False),
]

# The same leniency where cryptsetup's rules then read the value: (case id, bytes of the base
# JSON text, their replacement, cryptsetup loads it?)
JSON_C_IN_PLACE: list[tuple[str, bytes, bytes, bool]] = [
    ("key-size-leading-zero", b'"key_size":32,"af"', b'"key_size":032,"af"', True),
    ("key-size-trailing-dot", b'"key_size":32,"af"', b'"key_size":32.,"af"', False),
    ("sector-size-trailing-e", b'"sector_size":512', b'"sector_size":512e', False),
    ("single-quoted-type", b'"type":"luks2"', b"'type':'luks2'", True),
    ("comment-before-colon", b'"tokens":{}', b'"tokens"/*c*/:{/*d*/}', True),
    ("non-utf8-cipher", b'"encryption":"aes-xts-plain64","sector_size"',
     b'"encryption":"aes-xts-plain64\xff","sector_size"', True),
    ("non-utf8-segment-type", b'"type":"crypt"', b'"type":"crypt\xff"', True),
    ("non-utf8-keyslot-id", b'"0":{"type":"luks2"', b'"0\xff":{"type":"luks2"', False),
    ("non-utf8-kdf-hash", b'"kdf":{"type":"pbkdf2","hash":"sha256"',
     b'"kdf":{"type":"pbkdf2","hash":"sha256\xff"', True),
    ("non-utf8-af-hash", b'"stripes":4000,"hash":"sha256"',
     b'"stripes":4000,"hash":"sha256\xff"', True),
]


def _check(cryptsetup: str, image: bytes, workdir: Path, valid: bool,
           rule: str | None) -> None:
    theirs = hk.cryptsetup_verdict(cryptsetup, image, workdir)
    ours, named = hk.imgcrypt_verdict(image, workdir)
    assert theirs == valid, f"cryptsetup says {'valid' if theirs else 'invalid'}"
    assert ours == theirs, f"imgcrypt says {'valid' if ours else 'invalid'} ({named})"
    if not valid and rule is not None:
        assert named == rule


@pytest.mark.parametrize(("case", "build", "valid", "rule"), LUKS1_CASES,
                         ids=[c[0] for c in LUKS1_CASES])
def test_luks1_case_agrees_with_cryptsetup(cryptsetup: str, bases: dict[str, bytes],
                                           tmp_path: Path, case: str, build: Builder,
                                           valid: bool, rule: str | None) -> None:
    _check(cryptsetup, build(bases["luks1"]), tmp_path, valid, rule)


@pytest.mark.parametrize(("case", "build", "valid", "rule"), LUKS2_CASES,
                         ids=[c[0] for c in LUKS2_CASES])
def test_luks2_case_agrees_with_cryptsetup(cryptsetup: str, bases: dict[str, bytes],
                                           tmp_path: Path, case: str, build: Builder,
                                           valid: bool, rule: str | None) -> None:
    _check(cryptsetup, build(bases["luks2"]), tmp_path, valid, rule)


@pytest.mark.parametrize(("case", "tail", "valid"), JSON_C_LENIENCY,
                         ids=[c[0] for c in JSON_C_LENIENCY])
def test_json_c_leniency_agrees_with_cryptsetup(cryptsetup: str, bases: dict[str, bytes],
                                                tmp_path: Path, case: str, tail: bytes,
                                                valid: bool) -> None:
    del case
    text = hk.with_json_text(bases["luks2"])[:-1] + tail
    _check(cryptsetup, hk.with_area(bases["luks2"], text), tmp_path, valid, None)


@pytest.mark.parametrize(("case", "old", "new", "valid"), JSON_C_IN_PLACE,
                         ids=[c[0] for c in JSON_C_IN_PLACE])
def test_json_c_leniency_in_place_agrees_with_cryptsetup(
        cryptsetup: str, bases: dict[str, bytes], tmp_path: Path, case: str, old: bytes,
        new: bytes, valid: bool) -> None:
    del case
    text = hk.with_json_text(bases["luks2"])
    assert text.count(old) == 1
    _check(cryptsetup, hk.with_area(bases["luks2"], text.replace(old, new)), tmp_path, valid,
           None)


def test_every_rule_has_a_case() -> None:
    named = {c[3] for c in LUKS1_CASES + LUKS2_CASES if c[3]}
    declared = set(luks1_rules.RULES) | set(luks2_rules.RULES) | set(rules.COMMON)
    assert declared <= named, sorted(declared - named)


# -- mutations ----------------------------------------------------------------------------------

_VALUES = st.sampled_from([
    None, True, 0, 1, -1, 512, 4096, 1 << 32, 1 << 63, "", "0", "1", "512", "4096", "16384",
    "dynamic", "-1", "x", "1.5", "18446744073709551615", [], ["0"], ["1"], {}, {"type": "x"},
])


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    return out


def _mutate(obj: dict[str, Any], path: tuple[str, ...], value: Any, delete: bool) -> None:
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@settings(max_examples=24, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_luks2_json_mutations_agree_with_cryptsetup(cryptsetup: str, bases: dict[str, bytes],
                                                    tmp_path: Path, data: st.DataObject) -> None:
    base = bases["luks2"]
    obj = hk.luks2_json(base)
    path = data.draw(st.sampled_from(_paths(obj)))
    delete = data.draw(st.booleans())
    value = data.draw(_VALUES)
    _mutate(obj, path, value, delete)
    image = hk.with_area(base, json.dumps(obj, separators=(",", ":")).encode())
    theirs = hk.cryptsetup_verdict(cryptsetup, image, tmp_path)
    ours, named = hk.imgcrypt_verdict(image, tmp_path)
    assert ours == theirs, (path, delete, value, named)


@settings(max_examples=24, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(slot=st.integers(0, 7), field=st.sampled_from(["active", "offset", "stripes"]),
       value=st.sampled_from([0, 1, 2, 8, 1000, 3999, 4000, 4001, 4095, 4096, 0xDEAD,
                              0x00AC71F3, 0xFFFFFFFF]),
       payload=st.sampled_from([None, 0, 8, 1000, 4096, 5000]),
       key_bytes=st.sampled_from([None, 0, 1, 16, 64, 100, 0xFFFFFFFF]))
def test_luks1_field_mutations_agree_with_cryptsetup(
        cryptsetup: str, bases: dict[str, bytes], tmp_path: Path, slot: int, field: str,
        value: int, payload: int | None, key_bytes: int | None) -> None:
    image = hk.luks1_slot(bases["luks1"], slot, field, value)
    if payload is not None:
        image = hk.luks1_field(image, 104, ">I", payload)
    if key_bytes is not None:
        image = hk.luks1_field(image, 108, ">I", key_bytes)
    theirs = hk.cryptsetup_verdict(cryptsetup, image, tmp_path)
    ours, named = hk.imgcrypt_verdict(image, tmp_path)
    assert ours == theirs, (slot, field, value, payload, key_bytes, named)


CLI_SAMPLE = [c for c in LUKS1_CASES if not c[2]][:4] + [c for c in LUKS2_CASES if not c[2]][::8]


@pytest.mark.parametrize(("case", "build", "valid", "rule"), CLI_SAMPLE,
                         ids=[c[0] for c in CLI_SAMPLE])
def test_inspect_exits_3_naming_the_rule(bases: dict[str, bytes], tmp_path: Path, case: str,
                                         build: Builder, valid: bool, rule: str) -> None:
    del valid
    version = "luks1" if any(case == c[0] and build is c[1] for c in LUKS1_CASES) else "luks2"
    image = tmp_path / "bad.img"
    image.write_bytes(build(bases[version]))
    proc = imgcrypt("inspect", image)
    if rule == luks1_rules.HASH_SIZE.name:
        # cryptsetup's rule alone: imgcrypt opens the header as qemu does, and says so
        assert proc.returncode == 0, proc.stderr
        assert f"cryptsetup REFUSES this header (qemu-img opens it): header breaks rule {rule}:" \
            in proc.stdout.decode()
        return
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert err.startswith("imgcrypt: error: ") and err.count("\n") == 1
    assert f"rule {rule}:" in err
