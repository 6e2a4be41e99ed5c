"""LUKS2 headers without external tools: format, parse, unlock, rekey, damage, hostility."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt.crypto.kdf import Argon2, KdfLimits, Pbkdf2
from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
from imgcrypt.errors import (
    FormatError,
    FormatFault,
    ImgcryptError,
    UnsupportedError,
    UsageError,
    WrongPassphraseError,
)
from imgcrypt.luks import luks2
from imgcrypt.luks.container import bytes_to_parse, parse_header
from imgcrypt.luks.luks2 import Luks2Header
from imgcrypt.luks.luks2.disk import LAYOUT, BinaryHeader, MetadataCopy, find_copies, pack_copy
from imgcrypt.luks.luks2.metadata import Metadata, check_area, dump_json, load_json, validate
from imgcrypt.luks.rules import HeaderRuleError
from tests.helpers import headerkit as hk
from tests.helpers.util import raises_fault
from tests.luks.test_luks2_support import (
    PASS,
    XTS,
    apply_steps,
    cheap_kdf,
    make_region,
    rewrite_json,
)

OTHER = b"another passphrase"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture(scope="module")
def base() -> tuple[bytes, bytes]:
    return make_region()


def parse(region: bytes, limits: KdfLimits | None = None) -> Luks2Header:
    header = parse_header(region[: bytes_to_parse(region[:4096])],
                          *(() if limits is None else (limits,)))
    assert isinstance(header, Luks2Header)
    return header


# -- format, parse, unlock ---------------------------------------------------------------------


@pytest.mark.parametrize("kdf", ["pbkdf2", "argon2i", "argon2id"])
@pytest.mark.parametrize("sector_size", [512, 4096])
@pytest.mark.parametrize("key_bytes", [32, 64])
def test_format_then_unlock_returns_the_master_key(kdf: str, sector_size: int,
                                                   key_bytes: int) -> None:
    region, mk = make_region(os.urandom(key_bytes), kdf=kdf, sector_size=sector_size,
                             label="my disk", uuid="12345678-1234-5678-9abc-def012345678")
    header = parse(region)
    assert header.unlock(region, PASS) == (0, mk)
    assert (header.version, header.key_bytes, header.sector_size) == (2, key_bytes, sector_size)
    assert header.payload_offset == len(region) == 1 << 20
    assert header.payload_size is None and header.iv_tweak == 0
    assert header.region_size == 1 << 20
    assert header.label == "my disk"
    assert header.uuid == "12345678-1234-5678-9abc-def012345678"
    assert str(header.cipher) == "aes-xts-plain64"
    info = header.describe()
    assert info["keyslots"][0]["kdf"] == kdf
    assert info["header_copies"] == {"primary": "valid", "secondary": "valid"}
    with pytest.raises(WrongPassphraseError):
        header.unlock(region, b"wrong")


def test_default_layout_matches_cryptsetup() -> None:
    region = luks2.format_region(os.urandom(64), PASS, cipher=XTS, kdf=cheap_kdf(),
                                 digest_iterations=1000)
    header = parse(region)
    info = header.describe()
    assert (info["payload_offset"], info["metadata_size"], info["keyslots_size"]) == (
        16 << 20, 16384, (16 << 20) - 32768)
    assert info["keyslots"][0]["area_offset"] == 32768
    assert info["keyslots"][0]["area_size"] == 258048
    obj = json.loads(header.json_text)
    assert obj["tokens"] == {}
    assert obj["config"] == {"json_size": "12288", "keyslots_size": str((16 << 20) - 32768)}
    assert obj["segments"]["0"]["size"] == "dynamic"


def test_digest_iterations_default_to_a_time_budget() -> None:
    region = luks2.format_region(os.urandom(32), PASS, cipher=XTS, kdf=cheap_kdf(),
                                 keyslots_size=(1 << 20) - 32768)
    assert parse(region).describe()["digests"][0]["iterations"] >= 1000


@pytest.mark.parametrize("metadata_size", [16384, 65536, 4 << 20])
def test_every_metadata_size_round_trips(metadata_size: int) -> None:
    region, mk = make_region(metadata_size=metadata_size, keyslots_size=1 << 20)
    header = parse(region)
    assert header.hdr_size == metadata_size
    assert header.unlock(region, PASS)[1] == mk
    assert bytes_to_parse(region[:4096]) == 2 * metadata_size


@pytest.mark.parametrize("kwargs", [
    {"sector_size": 1000}, {"metadata_size": 20000}, {"keyslots_size": 4096},
    {"keyslots_size": 1 << 30}, {"payload_align": 100}, {"label": "x" * 48},
    {"uuid": "not-a-uuid"}, {"sector_size": 4096, "payload_align": 2048},
])
def test_format_refuses_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ImgcryptError) as err:
        luks2.format_region(os.urandom(64), PASS, cipher=XTS, kdf=cheap_kdf(),
                            digest_iterations=1000, **kwargs)
    assert type(err.value) is UsageError and err.value.exit_code == 2


def test_sector_cipher_counts_iv_in_512_byte_units() -> None:
    key = os.urandom(64)
    data = os.urandom(3 * 4096)
    big = SectorCipher(XTS, key, 4096).encrypt(data, 16)
    for k in range(3):
        one = SectorCipher(XTS, key, 4096).encrypt(data[k * 4096 : (k + 1) * 4096], 16 + 8 * k)
        assert big[k * 4096 : (k + 1) * 4096] == one


# -- keyslots and priorities -----------------------------------------------------------------


def test_add_and_remove_keyslots(base: tuple[bytes, bytes]) -> None:
    region, mk = base
    header = parse(region)
    added = header.add_keyslot(region, mk, OTHER, cheap_kdf("argon2id"))
    assert added.slot == 1
    h2 = parse(added.region)
    assert h2.seqid == header.seqid + 1
    assert h2.active_keyslots() == (0, 1)
    assert h2.unlock(added.region, OTHER) == (1, mk)
    assert h2.unlock(added.region, PASS) == (0, mk)
    area = h2.describe()["keyslots"][1]
    assert area["area_offset"] == 32768 + 258048
    removed = h2.remove_keyslot(added.region, 0)
    h3 = parse(removed.region)
    assert h3.active_keyslots() == (1,)
    assert h3.seqid == header.seqid + 2
    with pytest.raises(WrongPassphraseError):
        h3.unlock(removed.region, PASS)
    assert h3.unlock(removed.region, OTHER) == (1, mk)
    assert json.loads(h3.json_text)["digests"]["0"]["keyslots"] == ["1"]
    # slot 0's area is free again and is reused first
    again = h3.add_keyslot(removed.region, mk, PASS, cheap_kdf(), slot=None)
    assert again.slot == 0
    assert parse(again.region).describe()["keyslots"][0]["area_offset"] == 32768


def test_add_keyslot_refuses_wrong_master_key_and_busy_slot(base: tuple[bytes, bytes]) -> None:
    region, mk = base
    header = parse(region)
    with pytest.raises(WrongPassphraseError):
        header.add_keyslot(region, os.urandom(64), OTHER, cheap_kdf())
    with pytest.raises(UsageError):
        header.add_keyslot(region, mk, OTHER, cheap_kdf(), slot=0)
    with pytest.raises(UsageError):
        header.add_keyslot(region, mk, OTHER, cheap_kdf(), slot=32)
    with pytest.raises(UsageError):
        header.remove_keyslot(region, 5)
    with pytest.raises(UsageError):
        header.unlock(region, PASS, slot=3)


def test_keyslots_area_runs_out_cleanly() -> None:
    region, mk = make_region(keyslots_size=2 * 258048 + 4096 * 3)
    header = parse(region)
    update = header.add_keyslot(region, mk, OTHER, cheap_kdf())
    with pytest.raises(FormatError, match="no room"):
        parse(update.region).add_keyslot(update.region, mk, OTHER, cheap_kdf())


def test_update_steps_keep_one_valid_copy_at_every_instant(base: tuple[bytes, bytes]) -> None:
    region, mk = base
    header = parse(region)
    add = header.add_keyslot(region, mk, OTHER, cheap_kdf())
    hdr = header.hdr_size
    material = add.steps[0]
    assert add.steps[1:] == ((0, hdr), (hdr, 2 * hdr))
    assert material[0] >= 2 * hdr
    for done in range(len(add.steps) + 1):
        for torn in (False, True):
            disk = apply_steps(region, add.region, add.steps, done, torn)
            h = parse(disk)
            assert h.unlock(disk, PASS)[1] == mk
    remove = parse(add.region).remove_keyslot(add.region, 0)
    assert remove.steps[:2] == ((0, hdr), (hdr, 2 * hdr))
    assert remove.steps[2][0] == 32768
    for done in range(len(remove.steps) + 1):
        for torn in (False, True):
            disk = apply_steps(add.region, remove.region, remove.steps, done, torn)
            assert parse(disk).unlock(disk, OTHER)[1] == mk


def test_priorities(base: tuple[bytes, bytes]) -> None:
    region, mk = base
    two = parse(region).add_keyslot(region, mk, PASS, cheap_kdf()).region

    def set_priority(slot: str, value: int) -> Any:
        return lambda obj: obj["keyslots"][slot].__setitem__("priority", value)

    prefer = rewrite_json(two, set_priority("1", 2))
    assert parse(prefer).unlock(prefer, PASS) == (1, mk)
    assert parse(two).unlock(two, PASS) == (0, mk)
    ignored = rewrite_json(region, set_priority("0", 0))
    h = parse(ignored)
    assert h.describe()["keyslots"][0]["priority"] == "ignore"
    with pytest.raises(WrongPassphraseError):
        h.unlock(ignored, PASS)
    assert h.unlock(ignored, PASS, slot=0) == (0, mk)


# -- preservation and requirements -----------------------------------------------------------


def _decorate(obj: dict[str, Any]) -> None:
    obj["tokens"]["0"] = {"type": "x-custom", "keyslots": ["0"], "blob": {"a": [1, 2, "x"]}}
    obj["tokens"]["3"] = {"type": "luks2-keyring", "keyslots": [], "key_description": "k"}
    obj["config"]["flags"] = ["allow-discards", "x-future-flag"]
    obj["x_unknown_top"] = {"keep": True}
    obj["keyslots"]["0"]["x_unknown_slot_key"] = "kept"
    obj["segments"]["0"]["flags"] = ["x-segment-flag"]


def test_unknown_tokens_flags_and_keys_survive_rewrites(base: tuple[bytes, bytes]) -> None:
    region, mk = base
    decorated = rewrite_json(region, _decorate)
    header = parse(decorated)
    info = header.describe()
    assert info["tokens"]["0"]["type"] == "x-custom"
    assert info["flags"] == ["allow-discards", "x-future-flag"]
    added = header.add_keyslot(decorated, mk, OTHER, cheap_kdf())
    removed = parse(added.region).remove_keyslot(added.region, 0)
    after = json.loads(parse(removed.region).json_text)
    before = json.loads(header.json_text)
    assert after["x_unknown_top"] == before["x_unknown_top"]
    assert after["config"]["flags"] == before["config"]["flags"]
    assert after["segments"] == before["segments"]
    assert after["tokens"]["3"] == before["tokens"]["3"]
    assert after["tokens"]["0"] == {**before["tokens"]["0"], "keyslots": []}
    mid = json.loads(parse(added.region).json_text)
    assert mid["keyslots"]["0"]["x_unknown_slot_key"] == "kept"
    assert mid["tokens"] == before["tokens"]


def test_unknown_mandatory_requirement_reads_but_refuses_writes(
        base: tuple[bytes, bytes]) -> None:
    region, mk = base
    marked = rewrite_json(region, lambda o: o["config"].__setitem__(
        "requirements", {"mandatory": ["x-quantum-reencrypt"]}))
    header = parse(marked)
    assert header.unlock(marked, PASS) == (0, mk)
    assert header.describe()["requirements"] == ["x-quantum-reencrypt"]
    with pytest.raises(UnsupportedError, match="x-quantum-reencrypt"):
        header.add_keyslot(marked, mk, OTHER, cheap_kdf())
    with pytest.raises(UnsupportedError, match="x-quantum-reencrypt"):
        header.remove_keyslot(marked, 0)


# -- damaged copies --------------------------------------------------------------------------


def _flip(region: bytes, offset: int) -> bytes:
    out = bytearray(region)
    out[offset] ^= 0x40
    return bytes(out)


def test_damaged_primary_opens_from_secondary_and_a_rewrite_heals_it(
        base: tuple[bytes, bytes]) -> None:
    region, mk = base
    damaged = _flip(region, 4096 + 20)  # inside the primary JSON area
    header = parse(damaged)
    assert header.describe()["header_copies"] == {"primary": "damaged", "secondary": "valid"}
    assert header.unlock(damaged, PASS) == (0, mk)
    healed = header.add_keyslot(damaged, mk, OTHER, cheap_kdf()).region
    assert parse(healed).describe()["header_copies"] == {"primary": "valid",
                                                         "secondary": "valid"}


def test_damaged_primary_binary_header_is_probed_past(base: tuple[bytes, bytes]) -> None:
    region, mk = base
    out = bytearray(region)
    out[8:16] = (12345).to_bytes(8, "big")  # hdr_size no longer valid
    damaged = bytes(out)
    assert bytes_to_parse(damaged[:4096]) == 8 << 20
    header = parse(damaged)
    assert header.describe()["header_copies"]["primary"] == "damaged"
    assert header.unlock(damaged, PASS) == (0, mk)


def test_primary_with_destroyed_magic_opens_from_a_probed_secondary(
        base: tuple[bytes, bytes]) -> None:
    region, mk = base
    damaged = bytes(16) + region[16:]
    header = Luks2Header.parse(damaged[: 8 << 20])
    assert header.describe()["header_copies"] == {"primary": "damaged", "secondary": "valid"}
    assert header.unlock(damaged, PASS) == (0, mk)
    healed = header.remove_keyslot(damaged, 0).region
    assert healed[:6] == b"LUKS\xba\xbe"
    assert parse(healed).active_keyslots() == ()


def test_damaged_secondary_is_reported(base: tuple[bytes, bytes]) -> None:
    region, _ = base
    damaged = _flip(region, 16384 + 200)
    info = parse(damaged).describe()
    assert info["header_copies"] == {"primary": "valid", "secondary": "damaged"}


def test_higher_seqid_wins(base: tuple[bytes, bytes]) -> None:
    region, _ = base
    newer = rewrite_json(region, lambda o: o["config"].__setitem__("flags", ["x-new"]),
                         which=(1,), seqid_delta=1)
    assert parse(newer).metadata.flags == ("x-new",)
    older = rewrite_json(region, lambda o: o["config"].__setitem__("flags", ["x-old"]),
                         which=(1,), seqid_delta=-1)
    assert parse(older).metadata.flags == ()


def test_both_copies_damaged_is_a_checksum_error(base: tuple[bytes, bytes]) -> None:
    region, _ = base
    damaged = _flip(_flip(region, 4096 + 20), 16384 + 4096 + 20)
    with raises_fault(FormatError, FormatFault.CHECKSUM) as err:
        parse(damaged)
    assert err.value.exit_code == 3


def test_json_without_nul_is_a_format_error(base: tuple[bytes, bytes]) -> None:
    region, _ = base
    unterminated = rewrite_json(region, nul=False)
    with pytest.raises(FormatError, match="NUL") as err:
        parse(unterminated)
    assert err.value.reason is not FormatFault.CHECKSUM


def test_truncated_and_foreign_input() -> None:
    with raises_fault(FormatError, FormatFault.TRUNCATED):
        Luks2Header.parse(b"LUKS\xba\xbe\x00\x02" + bytes(100))
    with raises_fault(FormatError, FormatFault.BAD_MAGIC):
        Luks2Header.parse(bytes(65536))
    region, _ = make_region()
    with raises_fault(FormatError, FormatFault.TRUNCATED):
        parse(region).unlock(region[:40000], PASS)


# -- hostile metadata -------------------------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for p in parents:
            obj = obj[p]
        obj[last] = value
    return edit


# Headers cryptsetup refuses: refused when parsed, naming the rule.
INVALID = [
    (_set("config/keyslots_size", str(1 << 40)), "luks2-keyslots-size"),
    (_set("config/keyslots_size", "12x"), "luks2-config"),
    (_set("config/keyslots_size", 4096), "luks2-config"),
    (_set("config/json_size", "4096"), "luks2-metadata-size"),
    (_set("keyslots/0/area/offset", str(1 << 63)), "luks2-areas-placed"),
    (_set("keyslots/0/area/offset", "0"), "luks2-areas-placed"),
    (_set("keyslots/0/area/offset", "-1"), "luks2-areas"),
    (_set("keyslots/0/area/offset", "1" * 30), "luks2-areas"),
    (_set("keyslots/0/kdf/iterations", True), "luks2-keyslot-luks2"),
    (_set("segments/0/offset", "1000"), "luks2-segment-fields"),
    (_set("segments/0/size", "4095"), "luks2-segment-fields"),
    (_set("digests/0/keyslots", ["7"]), "luks2-digests"),
    (_set("keyslots/99", {}), "luks2-keyslots"),
    (_set("keyslots/01", {}), "luks2-keyslots"),
    (_set("tokens", []), "luks2-tokens"),
    (_set("tokens/0", {"type": "t", "keyslots": ["9"]}), "luks2-tokens"),
    (lambda o: o.pop("tokens"), "luks2-tokens"),
    (lambda o: o["keyslots"].update({str(i): {"type": "x"} for i in range(1, 40)}),
     "luks2-keyslots"),
]
# Headers cryptsetup loads (luksDump shows them) but imgcrypt cannot open: refused on unlock.
UNUSABLE = [
    (_set("keyslots/0/key_size", 1 << 31), FormatError, FormatFault.LIMIT_EXCEEDED),
    (_set("keyslots/0/af/stripes", 10 ** 9), FormatError, FormatFault.LIMIT_EXCEEDED),
    (_set("keyslots/0/kdf/iterations", 1 << 40), FormatError, FormatFault.LIMIT_EXCEEDED),
    (_set("keyslots/0/kdf/salt", "!!"), UnsupportedError, None),
    (_set("keyslots/0/kdf/type", "scrypt"), UnsupportedError, None),
    (_set("segments/0/offset", "0"), UnsupportedError, None),
    (_set("segments/0/sector_size", 8192), UnsupportedError, None),
    (_set("digests/0/iterations", 1 << 40), FormatError, FormatFault.LIMIT_EXCEEDED),
    (_set("segments/0/type", "linear"), UnsupportedError, None),
]


@pytest.mark.parametrize(("edit", "rule"), INVALID)
def test_invalid_metadata_is_refused_quickly(base: tuple[bytes, bytes], edit: Any,
                                             rule: str) -> None:
    region, _ = base
    hostile = rewrite_json(region, edit)
    start = time.perf_counter()
    with pytest.raises(HeaderRuleError, match=rule) as err:
        parse(hostile)
    assert err.value.rule.name == rule
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(("edit", "error", "reason"), UNUSABLE)
def test_valid_but_unusable_metadata_loads_and_is_refused_on_unlock(
        base: tuple[bytes, bytes], edit: Any, error: type[FormatError],
        reason: FormatFault | None) -> None:
    region, _ = base
    hostile = rewrite_json(region, edit)
    header = parse(hostile)
    assert header.describe()["format"] == "luks2"
    start = time.perf_counter()
    with pytest.raises(error) as err:
        header.unlock(hostile, PASS)
        header.check_decryptable()  # what decrypt asks before any payload byte
    assert type(err.value) is error and err.value.reason is reason
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("kdf", [
    {"type": "argon2id", "time": 4, "memory": 1 << 40, "cpus": 1},
    {"type": "argon2i", "time": 1 << 40, "memory": 32768, "cpus": 1},
    {"type": "argon2id", "time": 4, "memory": 32768, "cpus": 1000},
    {"type": "pbkdf2", "hash": "sha256", "iterations": 1 << 40},
    {"type": "pbkdf2", "hash": "md4", "iterations": 1000},
])
def test_hostile_kdf_parameters_are_refused_before_any_work(base: tuple[bytes, bytes],
                                                            kdf: dict[str, Any]) -> None:
    region, _ = base
    hostile = rewrite_json(region, lambda o: o["keyslots"]["0"]["kdf"].update(kdf))
    start = time.perf_counter()
    with pytest.raises(FormatError) as err:
        parse(hostile).unlock(hostile, PASS)
    assert (type(err.value) is UnsupportedError
            or err.value.reason is FormatFault.LIMIT_EXCEEDED), err.value
    assert err.value.exit_code == 3
    assert time.perf_counter() - start < 0.5


def test_unlock_checks_every_candidate_against_its_limits(base: tuple[bytes, bytes]) -> None:
    region, mk = base
    two = parse(region).add_keyslot(region, mk, OTHER, Argon2("argon2id", 4, 65536, 1, b""))
    header = parse(two.region)
    tight = KdfLimits(max_argon2_memory_kib=32768)
    start = time.perf_counter()
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED):
        header.unlock(two.region, PASS, tight)
    assert time.perf_counter() - start < 0.05
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED):
        parse(two.region, tight).unlock(two.region, PASS, tight)


def test_json_value_count_is_capped_before_parsing() -> None:
    """json-c's own syntax goes through imgcrypt's Python reader: its values are counted
    first. Strict JSON (what cryptsetup writes) is read by the C decoder whatever the count
    (issue 23): a million values cost well under the header's other bounds."""
    region, _ = make_region(metadata_size=4 << 20, keyslots_size=1 << 20)
    flood = '{"a":[' + ",".join(["[]"] * 1_000_000) + "]}"
    hostile = rewrite_json(region, text=lambda _: flood.replace('{"a"', '{/**/"a"'))
    start = time.perf_counter()
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED, match="too many values"):
        Luks2Header.parse(hostile)
    assert time.perf_counter() - start < 0.5
    hostile = rewrite_json(region, text=lambda _: flood)
    start = time.perf_counter()
    with pytest.raises(HeaderRuleError):  # read whole, then refused by cryptsetup's rules
        Luks2Header.parse(hostile)
    assert time.perf_counter() - start < 5


def test_json_escapes_and_comments_are_capped_before_parsing() -> None:
    region, _ = make_region(metadata_size=4 << 20, keyslots_size=1 << 20)
    # json-c-only syntax (single quotes, comments): imgcrypt's own reader, so counted first;
    # the same escapes in strict JSON go to the C decoder (issue 23)
    for flood in ["{'a':'" + "\\n" * 1_000_000 + "'}", "{" + "/**/" * 500_000 + "}"]:
        hostile = rewrite_json(region, text=lambda _, f=flood: f)
        start = time.perf_counter()
        with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED,
                          match="too many escapes or comments"):
            Luks2Header.parse(hostile)
        assert time.perf_counter() - start < 0.5
    hostile = rewrite_json(region, text=lambda _: '{"a":"' + "\\n" * 1_000_000 + '"}')
    start = time.perf_counter()
    with pytest.raises(HeaderRuleError):  # read whole, then refused by cryptsetup's rules
        Luks2Header.parse(hostile)
    assert time.perf_counter() - start < 0.5


def test_hostile_json_syntax(base: tuple[bytes, bytes]) -> None:
    region, _ = base
    for text in ["[" * 12000, '{"a":1,"a":2}', '{"x":NaN}', "1" * 5000, "[]", "{"]:
        hostile = rewrite_json(region, text=lambda _, t=text: t)
        with pytest.raises(FormatError):
            parse(hostile)


# -- hypothesis --------------------------------------------------------------------------------

binary_headers = st.builds(
    BinaryHeader,
    magic=st.binary(min_size=6, max_size=6),
    version=st.integers(0, 0xFFFF),
    hdr_size=st.integers(0, 2**64 - 1),
    seqid=st.integers(0, 2**64 - 1),
    label=st.binary(min_size=48, max_size=48),
    checksum_alg=st.binary(min_size=32, max_size=32),
    salt=st.binary(min_size=64, max_size=64),
    uuid=st.binary(min_size=40, max_size=40),
    subsystem=st.binary(min_size=48, max_size=48),
    hdr_offset=st.integers(0, 2**64 - 1),
    csum=st.binary(min_size=64, max_size=64),
    padding=st.binary(min_size=184, max_size=184),
    padding4096=st.binary(min_size=3584, max_size=3584),
)


@given(binary_headers)
@settings(max_examples=200, suppress_health_check=[HealthCheck.large_base_example])
def test_binary_header_pack_parse_identity(hdr: BinaryHeader) -> None:
    packed = hdr.pack()
    assert len(packed) == LAYOUT.size == 4096
    assert BinaryHeader.unpack(packed) == hdr


@given(st.binary(min_size=4096, max_size=4096))
@settings(max_examples=100, suppress_health_check=[HealthCheck.large_base_example])
def test_binary_header_bytes_identity(raw: bytes) -> None:
    assert BinaryHeader.unpack(raw).pack() == raw


kdfs = st.one_of(
    st.builds(lambda h, i, s: {"type": "pbkdf2", "hash": h, "iterations": i, "salt": s},
              st.sampled_from(["sha256", "sha512", "sha1"]), st.integers(1, 10**6),
              st.binary(min_size=32, max_size=32).map(lambda b: __import__("base64")
                                                      .b64encode(b).decode())),
    st.builds(lambda v, t, m, c: {"type": v, "time": t, "memory": m, "cpus": c,
                                  "salt": "AAAAAAAAAAAAAAAAAAAAAA=="},
              st.sampled_from(["argon2i", "argon2id"]), st.integers(1, 40),
              st.integers(64, 1 << 19), st.integers(1, 4)),  # within the cost budget
)


@st.composite
def metadata_objects(draw: st.DrawFn) -> dict[str, Any]:
    hdr = draw(st.sampled_from([16384, 32768, 1 << 20]))
    n = draw(st.integers(0, 6))
    ids = draw(st.lists(st.integers(0, 31), min_size=n, max_size=n, unique=True))
    keyslots = {}
    for index, ident in enumerate(ids):
        keyslots[str(ident)] = {
            "type": "luks2", "key_size": 64,
            "af": {"type": "luks1", "stripes": 4000, "hash": "sha256"},
            "area": {"type": "raw", "offset": str(2 * hdr + index * 258048), "size": "258048",
                     "encryption": "aes-xts-plain64", "key_size": 64},
            "kdf": draw(kdfs),
        }
        if draw(st.booleans()):
            keyslots[str(ident)]["priority"] = draw(st.integers(0, 2))
    keyslots_size = 6 * 258048 + 4096 * draw(st.integers(0, 100))
    offset = 2 * hdr + keyslots_size + 512 * draw(st.integers(0, 1000))
    tokens = {str(i): {"type": draw(st.text(min_size=1, max_size=10)), "keyslots": [],
                       "extra": draw(st.dictionaries(st.text(max_size=5), st.integers()))}
              for i in draw(st.lists(st.integers(0, 31), max_size=3, unique=True))}
    return {
        "keyslots": keyslots,
        "tokens": tokens,
        "segments": {"0": {"type": "crypt", "offset": str(offset),
                           "size": draw(st.sampled_from(["dynamic", "4096", "1048576"])),
                           "iv_tweak": str(draw(st.integers(0, 2**64 - 1))),
                           "encryption": "aes-xts-plain64",
                           "sector_size": draw(st.sampled_from([512, 4096]))}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": sorted(keyslots), "segments": ["0"],
                          "hash": "sha256", "iterations": 1000, "salt": "AAAA",
                          "digest": "AAAA"}},
        "config": {"json_size": str(hdr - 4096), "keyslots_size": str(keyslots_size),
                   "flags": draw(st.lists(st.text(max_size=8), max_size=3))},
        "hdr": hdr,
    }


@given(metadata_objects())
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_json_metadata_round_trips(obj: dict[str, Any]) -> None:
    hdr = obj.pop("hdr")
    meta = validate(obj, hdr)
    text = dump_json(obj)
    assert load_json(text) == obj
    assert validate(load_json(text), hdr) == meta
    assert [ks.id for ks in meta.keyslots] == sorted(int(k) for k in obj["keyslots"])
    seg = meta.segments[0]
    assert str(seg.iv_tweak) == obj["segments"]["0"]["iv_tweak"]


@given(metadata_objects(), st.integers(0, 2**64 - 2) | st.just(2**64 - 1))
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
def test_packed_copies_parse_back(obj: dict[str, Any], seqid: int) -> None:
    hdr = obj.pop("hdr")
    if not obj["keyslots"]:
        return
    text = dump_json(obj)
    region = b""
    for offset, magic in ((0, b"LUKS\xba\xbe"), (hdr, b"SKUL\xba\xbe")):
        binary = BinaryHeader(magic=magic, version=2, hdr_size=hdr, seqid=seqid,
                              label=b"l".ljust(48, b"\0"), checksum_alg=b"sha256".ljust(32, b"\0"),
                              salt=os.urandom(64), uuid=b"u".ljust(40, b"\0"),
                              subsystem=bytes(48), hdr_offset=offset, csum=bytes(64))
        region += pack_copy(binary, text)
    header = Luks2Header.parse(region)
    assert header.seqid == seqid
    assert json.loads(header.json_text) == obj
    if seqid == 2**64 - 1:
        with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED):
            header.with_metadata(obj)
        return
    again = Luks2Header.parse(header.with_metadata(obj).pack_copies())
    assert again.seqid == seqid + 1
    assert json.loads(again.json_text) == obj


@given(st.integers(0, 32767), st.integers(0, 255))
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_byte_corruption_gives_a_typed_outcome(position: int, value: int) -> None:
    region = _SMALL[: 2 * 16384]
    out = bytearray(region)
    out[position] = value
    try:
        Luks2Header.parse(bytes(out))
    except ImgcryptError:
        pass


@given(st.text(max_size=300))
@settings(max_examples=150)
def test_arbitrary_json_text_gives_a_typed_outcome(text: str) -> None:
    hostile = rewrite_json(_SMALL[: 2 * 16384], text=lambda _: text.replace("\0", ""))
    try:
        Luks2Header.parse(hostile)
    except ImgcryptError:
        pass


_SMALL = make_region(kdf="pbkdf2", keyslots_size=258048)[0]


def test_describe_is_json_serialisable(base: tuple[bytes, bytes]) -> None:
    region, _ = base
    info = parse(rewrite_json(region, _decorate)).describe()
    assert json.loads(json.dumps(info)) == info
    assert set(info) >= {"format", "version", "cipher", "key_size", "sector_size",
                         "payload_offset", "uuid", "keyslots", "metadata_size", "keyslots_size",
                         "segments", "tokens", "flags", "label", "subsystem", "seqid",
                         "header_copies"}


def test_pbkdf2_digest_kdf_check(base: tuple[bytes, bytes]) -> None:
    region, mk = base
    header = parse(region)
    assert header.verify_master_key(mk)
    assert not header.verify_master_key(bytes(64))
    assert isinstance(header.metadata.keyslots[0].kdf, Pbkdf2)
    assert CipherSpec.parse(header.metadata.keyslots[0].area_cipher) == XTS


# -- each copy's JSON is read and validated once ------------------------------------------------


def _counted_copies(image: bytes) -> tuple[MetadataCopy[Metadata], MetadataCopy[Metadata], int]:
    calls: list[int] = []

    def counting(area: bytes, hdr_size: int) -> tuple[str, Metadata]:
        calls.append(hdr_size)
        return check_area(area, hdr_size)

    copies = find_copies(image, counting)
    assert isinstance(copies.primary, MetadataCopy)
    assert isinstance(copies.secondary, MetadataCopy)
    return copies.primary, copies.secondary, len(calls)


def test_the_winner_keeps_the_metadata_its_copy_was_validated_into() -> None:
    image = (FIXTURES / "luks2-pbkdf2-512.img").read_bytes()  # made by cryptsetup
    primary, secondary, checks = _counted_copies(image)
    # Identical JSON areas: one reading serves both copies.
    assert checks == 1 and secondary.checked is primary.checked
    header = parse(image)
    assert header.metadata == primary.checked == validate(load_json(primary.json_text),
                                                          header.hdr_size)
    # A secondary whose JSON differs (still valid, same seqid) is read on its own.
    differing = hk.with_json(image, hk.set_path("config/flags", ["allow-discards"]), (1,))
    primary, secondary, checks = _counted_copies(differing)
    assert checks == 2
    assert secondary.checked.flags == ("allow-discards",) and primary.checked.flags == ()
    assert parse(differing).metadata == primary.checked
