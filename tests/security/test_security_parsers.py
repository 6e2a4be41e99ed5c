"""Every parser on hostile bytes: nothing but ImgcryptError escapes, and no input takes 1 s.

The quick, hypothesis-driven twin of ``make fuzz`` (scripts/fuzz.py, atheris). Each entry point
of :mod:`fuzz.targets` gets arbitrary bytes, mutations of valid seeds that imgcrypt itself
made, and inputs built field by field; a finding of the long runs is replayed from
``fuzz/corpus/regressions`` forever after.
"""

from __future__ import annotations

import base64
import json
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import seeds, targets
from imgcrypt.errors import ImgcryptError

TARGETS = targets.targets()
SETTINGS = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
SLOW = 1.0

# Bugs found by fuzzing and reported for fixing (see docs/security.md, "Findings"). While one
# is open its exact signature is tolerated by the property tests below; the regression tests at
# the end of this file are strict xfails, so they turn red the moment the fix lands, as a
# reminder to delete the entry here and the marker there.
KNOWN_BUGS: tuple[tuple[type[BaseException], str, str], ...] = (
    # (exception type, text in its message, file of the frame that raised it)
    # cryptography parses a certificate's names and dates lazily and raises ValueError,
    # TypeError or InvalidVersion on malformed ones; any of those, out of certs.py.
)


def _known(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    imgcrypt_frames = [f.filename for f in frames if "/imgcrypt/" in f.filename]
    return any(
        isinstance(error, kind) and text in str(error) and imgcrypt_frames
        and imgcrypt_frames[-1].endswith(where)
        for kind, text, where in KNOWN_BUGS
    )


_WARM: set[str] = set()


def assert_handled(name: str, data: bytes) -> None:
    target = TARGETS[name]
    if name not in _WARM:
        # Imports and one-time set-up (the upload target's keystore) are not per-input costs.
        for seed in seeds.SEEDS[name]():
            targets.check(target, seed)
        _WARM.add(name)
    start = time.perf_counter()
    error = targets.check(target, data)
    elapsed = time.perf_counter() - start
    if error is not None:
        if not _known(error):
            raise AssertionError(
                f"{name}: {type(error).__name__} escaped on input "
                f"{base64.b64encode(data[:512]).decode()}..."
            ) from error
    assert elapsed < SLOW, f"{name} took {elapsed:.2f} s on one input"


# -- strategies ------------------------------------------------------------------------------

INTERESTING = (0, 1, 2, 7, 8, 255, 256, 511, 512, 4095, 4096, 4097, 16384, 0x7FFFFFFF,
               0x80000000, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A seed with a few byte, integer, splice or truncation edits."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("byte", "int", "truncate", "insert", "splice")))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from((1, 2, 4, 8)))
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**64 - 1))
            order = draw(st.sampled_from(("big", "little")))
            data[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, order)
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:
            length = draw(st.integers(1, 64))
            other = draw(st.integers(0, len(data) - 1))
            data[pos : pos + length] = data[other : other + length]
    return bytes(data)


def seeds_of(name: str) -> list[bytes]:
    return seeds.SEEDS[name]()


def _json_values() -> st.SearchStrategy[Any]:
    scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
               | st.sampled_from(INTERESTING) | st.text(max_size=12)
               | st.sampled_from(["0", "1", "4096", "18446744073709551615",
                                  "18446744073709551616", "-1", "dynamic", "pbkdf2",
                                  "argon2id", "argon2i", "luks2", "raw", "crypt", "sha256",
                                  "aes-xts-plain64", "aes-cbc-essiv:sha256", "luks1"]))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                        max_leaves=8)


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    return out


@st.composite
def luks2_json_documents(draw: st.DrawFn) -> bytes:
    """The seed's JSON with values replaced, keys deleted or added, anywhere in the tree."""
    obj = json.loads(seeds.luks2_json())
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(obj) if p]
        path = draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(("replace", "delete", "add")))
        if action == "replace":
            parent[path[-1]] = draw(_json_values())
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["0", "1", "31", "32", "x", "type"]))] = draw(
                _json_values())
        if not isinstance(obj, dict):
            break
    return json.dumps(obj).encode()


@st.composite
def luks1_headers(draw: st.DrawFn) -> bytes:
    """LUKS1 headers built field by field, each field either sane or hostile."""
    from imgcrypt.luks import luks1

    u32 = st.sampled_from(INTERESTING[:16]) | st.integers(0, 2**32 - 1)
    text = st.sampled_from(["aes", "serpent", "twofish", "xts-plain64", "cbc-essiv:sha256",
                            "cbc-plain", "ecb", "sha1", "sha256", "sha512", "ripemd160",
                            "whirlpool", "SHA-256", ""]) | st.text(
        st.characters(max_codepoint=127), max_size=31)
    values = {
        "magic": luks1.MAGIC, "version": draw(st.sampled_from([1, 1, 1, 2, 0, 65535])),
        "cipher_name": draw(text), "cipher_mode": draw(text), "hash_spec": draw(text),
        "payload_offset": draw(u32), "key_bytes": draw(st.sampled_from([16, 32, 64]) | u32),
        "mk_digest": draw(st.binary(min_size=20, max_size=20)),
        "mk_digest_salt": draw(st.binary(min_size=32, max_size=32)),
        "mk_digest_iter": draw(u32), "uuid": draw(st.text(st.characters(max_codepoint=127),
                                                          max_size=39)),
    }
    try:
        out = luks1.HEADER_LAYOUT.pack(values)
    except (ValueError, UnicodeEncodeError):
        out = luks1.HEADER_LAYOUT.pack({**values, "uuid": "", "cipher_name": "aes",
                                        "cipher_mode": "xts-plain64", "hash_spec": "sha256"})
    for _ in range(luks1.NUM_KEYSLOTS):
        out += luks1.KEYSLOT_LAYOUT.pack({
            "active": draw(st.sampled_from([luks1.KEYSLOT_ACTIVE, luks1.KEYSLOT_INACTIVE]) | u32),
            "iterations": draw(u32), "salt": bytes(32),
            "key_material_offset": draw(u32), "stripes": draw(st.sampled_from([1, 8, 4000])
                                                              | u32),
        })
    return out + draw(st.binary(max_size=2048))


PROPERTY_NAMES = sorted(set(seeds.imgcrypt_properties()) | set(seeds.glance_properties()) | {
    "imgcrypt_sign_signature_0", "imgcrypt_sign_signature_01", "imgcrypt_sign_signature_3",
    "imgcrypt_sign_signature_99999999999", "os_encrypt_format", "img_signature_key_type"})


@st.composite
def property_sets(draw: st.DrawFn, base: dict[str, str]) -> bytes:
    props = dict(base)
    for _ in range(draw(st.integers(1, 5))):
        key = draw(st.sampled_from(PROPERTY_NAMES) | st.text(max_size=8))
        action = draw(st.sampled_from(("set", "delete", "swap", "dup")))
        if action == "set":
            props[key] = draw(st.text(max_size=80) | st.sampled_from(
                ["", "1", "0", "01", "2:", "1:AAAA", "RSA-PSS", "DSA", "ECC_SECP521R1",
                 "SHA-1", "SHA-512", "ed25519", "ml-dsa-65", "sha3-512", "9" * 30]))
        elif action == "delete":
            props.pop(key, None)
        elif action == "swap" and len(props) > 1:
            a, b = draw(st.sampled_from(sorted(props))), draw(st.sampled_from(sorted(props)))
            props[a], props[b] = props[b], props[a]
    text = json.dumps(props)
    if draw(st.booleans()):
        # A duplicate key, as a hostile property document may carry.
        key = draw(st.sampled_from(sorted(props) or ["x"]))
        text = text[:-1] + (", " if props else "") + json.dumps(key) + ': "dup"}'
    return text.encode()


# -- arbitrary bytes and seed mutations, for every target ------------------------------------


@pytest.mark.parametrize("name", sorted(TARGETS))
@SETTINGS
@given(data=st.data())
def test_arbitrary_bytes(name: str, data: st.DataObject) -> None:
    assert_handled(name, data.draw(st.binary(max_size=8192)))


@pytest.mark.parametrize("name", sorted(TARGETS))
@SETTINGS
@given(data=st.data())
def test_mutated_seeds(name: str, data: st.DataObject) -> None:
    assert_handled(name, data.draw(mutated(seeds_of(name))))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_are_accepted(name: str) -> None:
    """The seeds are valid inputs: the targets get past parsing on every one of them."""
    for seed in seeds_of(name):
        try:
            TARGETS[name].run(seed)
        except ImgcryptError as exc:
            # Refusals by design: a self-signed certificate is no chain to the other one; the
            # upload seeds carry a signature over other bytes or a claim without a LUKS image.
            assert name in ("certificates", "service_upload"), f"{name} refused its seed: {exc}"


# -- structured inputs -------------------------------------------------------------------------


@SETTINGS
@given(header=luks1_headers())
def test_luks1_headers_field_by_field(header: bytes) -> None:
    for name in ("luks1_header", "luks_parse_header", "stream_read_header", "luks_unlock"):
        assert_handled(name, header)


@SETTINGS
@given(document=luks2_json_documents())
def test_luks2_json_documents(document: bytes) -> None:
    assert_handled("luks2_json", document)


@SETTINGS
@given(region=mutated([seeds.luks2_region()[:36864]]))
def test_luks2_regions_with_valid_checksums(region: bytes) -> None:
    assert_handled("luks2_region", region)


@SETTINGS
@given(document=property_sets(seeds.imgcrypt_properties()))
def test_imgcrypt_property_sets(document: bytes) -> None:
    assert_handled("verify_imgcrypt", document)
    assert_handled("property_parts", document)


@SETTINGS
@given(document=property_sets(seeds.glance_properties()))
def test_glance_property_sets(document: bytes) -> None:
    assert_handled("verify_glance", document)


@SETTINGS
@given(value=st.text(max_size=600), limit=st.integers(64, 300))
def test_parts_round_trip(value: str, limit: int) -> None:
    from imgcrypt.signing.storage import join_value, split_value

    records = split_value("imgcrypt_sign_signature", value, max_length=limit)
    assert all(len(v) <= limit for v in records.values())
    assert join_value("imgcrypt_sign_signature", records) == value


@SETTINGS
@given(header=luks1_headers())
def test_luks1_pack_parse_round_trip(header: bytes) -> None:
    """Whatever parses packs to bytes that parse to the same header (one declaration)."""
    from imgcrypt.luks.luks1 import Luks1Header

    try:
        parsed = Luks1Header.parse(header)
    except ImgcryptError:
        return
    assert Luks1Header.parse(parsed.pack()) == parsed


# -- findings of the long runs, replayed -------------------------------------------------------

REGRESSIONS = Path(seeds.CORPUS_DIR) / "regressions"


def _regressions() -> list[tuple[str, Path]]:
    if not REGRESSIONS.is_dir():
        return []
    return [(d.name, f) for d in sorted(REGRESSIONS.iterdir()) if d.name in TARGETS
            for f in sorted(d.iterdir())]


# Open findings (reported with their fixes, see docs/security.md); a fixed one XPASSes and
# fails strictly, so its marker gets removed.
OPEN_FINDINGS: dict[str, str] = {}


def test_cli_decrypt_of_a_keyslot_area_without_offset(tmp_path: Path) -> None:
    """The LUKS2 finding through the command line: a one-line error, exit 3, no traceback."""
    from tests.helpers.util import imgcrypt, secret_file

    obj = json.loads(seeds.luks2_json())
    del obj["keyslots"]["0"]["area"]["offset"]
    text = json.dumps(obj).encode()
    region = bytearray(seeds.luks2_region())
    for offset in (0, 16384):
        region[offset + 4096 : offset + 16384] = text.ljust(12288, b"\0")
    image = tmp_path / "hostile.luks"
    image.write_bytes(targets._luks2_with_checksums(bytes(region)))
    pw = secret_file(tmp_path, "pw", seeds.PASSPHRASE)
    proc = imgcrypt("decrypt", image, tmp_path / "out", "--passphrase-file", pw)
    assert proc.returncode == 3 and proc.stderr.decode().count("\n") == 1, proc.stderr



@pytest.mark.parametrize(
    ("name", "path"),
    [pytest.param(n, p, id=f"{n}/{p.name}", marks=[pytest.mark.xfail(
        strict=True, reason=OPEN_FINDINGS[n])] if n in OPEN_FINDINGS else [])
     for n, p in _regressions()],
)
def test_regression_inputs(name: str, path: Path) -> None:
    error = targets.check(TARGETS[name], path.read_bytes())
    assert error is None, f"{type(error).__name__}: {error}"
