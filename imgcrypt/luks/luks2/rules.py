"""cryptsetup 2.6's validity rules for LUKS2 metadata, checked on every parse of every copy.

The disk rules (magic, offsets, checksum, JSON area framing) are applied by
:mod:`imgcrypt.luks.luks2.disk` to each copy; :func:`check_json` applies the JSON rules in
the order cryptsetup's ``LUKS2_hdr_validate`` does. A copy that breaks any rule is not valid,
exactly as for cryptsetup; which parts imgcrypt can *decrypt* is decided elsewhere
(:meth:`imgcrypt.luks.luks2.header.Luks2Header.unsupported`), so a valid header with an unknown
segment type or KDF still loads and shows.

Values follow json-c's types: a JSON integer is an ``int`` (never a ``bool``), 64-bit
quantities are decimal strings.
"""

from __future__ import annotations

import re
from typing import Any, TypeGuard

from imgcrypt.crypto.kdfparams import ARGON2I, ARGON2ID, PBKDF2
from imgcrypt.luks.rules import HeaderRuleError, Rule, rule

# Every metadata size cryptsetup accepts: 16 KiB .. 4 MiB, powers of two.
HDR_SIZES = tuple(16384 << i for i in range(9))
BINARY_SIZE = 4096
MAX_KEYSLOTS_SIZE = 128 << 20
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
_DIGITS = re.compile(r"[0-9]*")
_REENCRYPT_FLAG = re.compile(r"online-reencrypt(-v[0-9]+)?")

RULES: dict[str, Rule] = {}
# -- one copy on disk
MAGIC = rule(RULES, "luks2-magic", "each copy starts with its magic (LUKS or SKUL, then BA BE)")
VERSION = rule(RULES, "luks2-version", "each copy's binary header says version 2")
HDR_OFFSET = rule(RULES, "luks2-hdr-offset", "each copy's hdr_offset is where the copy sits")
HDR_SIZE = rule(RULES, "luks2-hdr-size",
                "hdr_size is 16 KiB..4 MiB and the secondary copy sits at hdr_size")
CHECKSUM_ALG = rule(RULES, "luks2-checksum-alg", "the checksum algorithm is a known hash")
CHECKSUM = rule(RULES, "luks2-checksum", "the checksum covers the binary header and JSON area")
JSON_START = rule(RULES, "luks2-json-start", "the JSON area starts with '{'")
JSON_PARSE = rule(RULES, "luks2-json-parse", "the JSON area holds one JSON object")
JSON_TRAILER = rule(RULES, "luks2-json-trailer",
                    "only NUL bytes, at least one, follow the JSON text in its area")
# -- both copies
FOREIGN_SIGNATURE = rule(RULES, "luks2-foreign-signature",
                         "a damaged or stale copy is not recovered while another signature "
                         "(LVM2, a filesystem) sits on the image; run repair")
# -- the JSON (LUKS2_hdr_validate's order)
REQUIREMENTS = rule(RULES, "luks2-requirements",
                    "config.requirements.mandatory is an array of strings with at most one "
                    "online-reencrypt flag")
TOKENS = rule(RULES, "luks2-tokens",
              "every token is numbered, has a type and a keyslots array of existing keyslots")
DIGESTS = rule(RULES, "luks2-digests",
               "every digest is numbered, has a type and keyslots/segments arrays naming "
               "existing entries")
SEGMENTS = rule(RULES, "luks2-segments",
                "segments is a non-empty object of numbered entries without gaps")
SEGMENT_FIELDS = rule(RULES, "luks2-segment-fields",
                      "every segment has string type, decimal offset and non-zero size "
                      "(or \"dynamic\"), both multiples of 512, and string flags")
SEGMENT_ORDER = rule(RULES, "luks2-segment-order",
                     "regular segments come first and at least one exists; backups follow")
CRYPT_SEGMENT = rule(RULES, "luks2-crypt-segment",
                     "a crypt segment has iv_tweak, encryption and an integer sector_size")
CRYPT_INTEGRITY = rule(RULES, "luks2-crypt-integrity",
                       "an integrity section has type, journal_encryption and "
                       "journal_integrity")
SECTOR_SIZE = rule(RULES, "luks2-sector-size",
                   "sector_size is a non-zero 32-bit multiple of 512 dividing the size")
IV_TWEAK = rule(RULES, "luks2-iv-tweak", "iv_tweak is a decimal 64-bit number")
SEGMENT_DIGEST = rule(RULES, "luks2-segment-digest", "every crypt segment has a digest")
DYNAMIC_LAST = rule(RULES, "luks2-dynamic-last",
                    "only the last regular segment may have size \"dynamic\"")
SEGMENTS_DISJOINT = rule(RULES, "luks2-segments-disjoint", "regular segments do not overlap")
REENCRYPT_BACKUPS = rule(RULES, "luks2-reencrypt-backups",
                         "online re-encryption needs backup-final and backup-previous segments")
KEYSLOTS = rule(RULES, "luks2-keyslots",
                "every keyslot is numbered, has a type and a 32-bit integer key_size")
CONFIG = rule(RULES, "luks2-config",
              "config has json_size and keyslots_size as decimal strings, and string flags")
METADATA_SIZE = rule(RULES, "luks2-metadata-size",
                     "json_size + 4096 is a LUKS2 metadata size (16 KiB..4 MiB, power of 2)")
KEYSLOTS_SIZE = rule(RULES, "luks2-keyslots-size",
                     "keyslots_size is a multiple of 4096, at most 128 MiB, and ends before "
                     "the first segment")
AREAS = rule(RULES, "luks2-areas",
             "every keyslot has an area with type and decimal offset/size")
AREAS_PLACED = rule(RULES, "luks2-areas-placed",
                    "keyslot areas are non-empty, lie after both copies inside the keyslots "
                    "area and do not overlap")
JSON_SIZE = rule(RULES, "luks2-json-size",
                 "config.json_size equals the JSON area size of the binary header")
KEYSLOT_LUKS2 = rule(RULES, "luks2-keyslot-luks2",
                     "a luks2 keyslot has kdf (type and its parameters), af (luks1, hash, "
                     "stripes) and a raw area (encryption, key_size)")
KEYSLOT_ONE_DIGEST = rule(RULES, "luks2-keyslot-one-digest",
                          "every luks2 keyslot is assigned to exactly one digest")
REENCRYPT_KEYSLOT = rule(RULES, "luks2-reencrypt-keyslot",
                         "at most one reencrypt keyslot, present exactly when an online "
                         "re-encryption requirement is")


def _fail(which: Rule, detail: str = "") -> HeaderRuleError:
    return HeaderRuleError(which, detail)


def is_int(value: object) -> TypeGuard[int]:
    """A JSON integer, of any size: json-c keeps even a 70-bit literal an integer."""
    return isinstance(value, int) and not isinstance(value, bool)


def _string(obj: Any, key: str) -> str | None:
    """obj[key] if it is a non-empty string (cryptsetup's json_contains_string)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) and value else None


def _numbered(text: str) -> bool:
    return _DIGITS.fullmatch(text) is not None


def decimal_u64(text: str) -> int | None:
    """strtoull on a string that must be digits only; None on overflow (and "" is 0)."""
    if not _numbered(text):
        return None
    value = int(text) if text else 0
    return value if value <= U64 else None


def _strtoull(text: str) -> int | None:
    """strtoull without the digits-only check (config values): sign and leading space allowed."""
    match = re.fullmatch(r"\s*([+-]?)([0-9]*)", text)
    if not match:
        return None
    value = int(match.group(2) or "0")
    if value > U64:
        return None
    return (-value) % (1 << 64) if match.group(1) == "-" else value


def _section(obj: dict[str, Any], key: str, which: Rule) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise _fail(which, f"{key} missing or not an object")
    return value


def _flags(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


def mandatory(obj: dict[str, Any]) -> tuple[str, ...]:
    req = obj.get("config", {}).get("requirements", {})
    found = _flags(req.get("mandatory", [])) if isinstance(req, dict) else None
    return found or ()


def _check_requirements(obj: dict[str, Any]) -> None:
    config = _section(obj, "config", CONFIG)
    if "requirements" not in config:
        return
    req = config["requirements"]
    if not isinstance(req, dict):
        raise _fail(REQUIREMENTS, "requirements is not an object")
    if "mandatory" in req:
        flags = _flags(req["mandatory"])
        if flags is None:
            raise _fail(REQUIREMENTS, "mandatory is not an array of strings")
        if sum(1 for f in flags if _REENCRYPT_FLAG.fullmatch(f)) > 1:
            raise _fail(REQUIREMENTS, "several online-reencrypt flags")


def _names_existing(value: Any, section: dict[str, Any]) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and isinstance(section.get(v), dict) for v in value
    )


def _check_tokens(obj: dict[str, Any]) -> None:
    keyslots = obj.get("keyslots")
    tokens = _section(obj, "tokens", TOKENS)
    if not isinstance(keyslots, dict):
        raise _fail(TOKENS, "keyslots missing")
    for key, token in tokens.items():
        if not _numbered(key) or not isinstance(token, dict) or not _string(token, "type"):
            raise _fail(TOKENS, f"token {key[:16]!r}")
        if not _names_existing(token.get("keyslots"), keyslots):
            raise _fail(TOKENS, f"token {key[:16]} keyslots")


def _check_digests(obj: dict[str, Any]) -> None:
    digests = _section(obj, "digests", DIGESTS)
    keyslots = _section(obj, "keyslots", DIGESTS)
    segments = _section(obj, "segments", DIGESTS)
    for key, digest in digests.items():
        if not _numbered(key) or not isinstance(digest, dict) or not _string(digest, "type"):
            raise _fail(DIGESTS, f"digest {key[:16]!r}")
        if not _names_existing(digest.get("keyslots"), keyslots):
            raise _fail(DIGESTS, f"digest {key[:16]} names a missing keyslot")
        if not _names_existing(digest.get("segments"), segments):
            raise _fail(DIGESTS, f"digest {key[:16]} names a missing segment")


def is_backup(segment: dict[str, Any]) -> bool:
    flags = segment.get("flags")
    return isinstance(flags, list) and any(
        isinstance(f, str) and f.startswith("backup-") for f in flags
    )


def _segment_bounds(key: str, seg: Any) -> tuple[int, int]:
    """(offset, size) of a segment, size 0 for dynamic; SEGMENT_FIELDS if malformed."""
    if not isinstance(seg, dict):
        raise _fail(SEGMENT_FIELDS, f"segment {key[:16]} is not an object")
    offset_text, size_text = _string(seg, "offset"), _string(seg, "size")
    if not _string(seg, "type") or offset_text is None or size_text is None:
        raise _fail(SEGMENT_FIELDS, f"segment {key[:16]}")
    offset = decimal_u64(offset_text)
    size = 0 if size_text == "dynamic" else decimal_u64(size_text)
    if offset is None or size is None or (size == 0 and size_text != "dynamic"):
        raise _fail(SEGMENT_FIELDS, f"segment {key[:16]} offset or size")
    if offset % 512 or size % 512:
        raise _fail(SEGMENT_FIELDS, f"segment {key[:16]} not aligned to 512 bytes")
    if "flags" in seg and _flags(seg["flags"]) is None:
        raise _fail(SEGMENT_FIELDS, f"segment {key[:16]} flags")
    return offset, size


def _check_crypt_segment(key: str, seg: dict[str, Any], size: int,
                         digests: dict[str, Any]) -> None:
    tweak = _string(seg, "iv_tweak")
    raw_sector_size = seg.get("sector_size")
    if tweak is None or not _string(seg, "encryption") or not is_int(raw_sector_size):
        raise _fail(CRYPT_SEGMENT, f"segment {key}")
    sector_size = raw_sector_size
    if "integrity" in seg:
        integrity = seg["integrity"]
        if not isinstance(integrity, dict) or not all(
            _string(integrity, k) for k in ("type", "journal_encryption", "journal_integrity")
        ):
            raise _fail(CRYPT_INTEGRITY, f"segment {key}")
    if not 0 < sector_size <= U32 or sector_size % 512:
        raise _fail(SECTOR_SIZE, f"segment {key}: {sector_size}")
    if decimal_u64(tweak) is None:
        raise _fail(IV_TWEAK, f"segment {key}")
    if size % sector_size:
        raise _fail(SECTOR_SIZE, f"segment {key} size is not a multiple of {sector_size}")
    if not any(isinstance(d, dict) and isinstance(d.get("segments"), list)
               and key in d["segments"] for d in digests.values()):
        raise _fail(SEGMENT_DIGEST, f"segment {key}")


def _check_segments(obj: dict[str, Any]) -> None:
    segments = _section(obj, "segments", SEGMENTS)
    if not segments:
        raise _fail(SEGMENTS, "no segment")
    digests = obj.get("digests", {})
    first_backup = -1
    for key, seg in segments.items():
        if not _numbered(key):
            raise _fail(SEGMENTS, f"segment key {key[:16]!r}")
        _, size = _segment_bounds(key, seg)
        index = int(key or "0")
        if is_backup(seg):
            if first_backup < 0 or index < first_backup:
                first_backup = index
        elif 0 <= first_backup <= index:
            raise _fail(SEGMENT_ORDER, f"regular segment {key} after backup {first_backup}")
        if seg.get("type") == "crypt":
            _check_crypt_segment(key, seg, size, digests)
    count = len(segments)
    if first_backup == 0:
        raise _fail(SEGMENT_ORDER, "no regular segment")
    if first_backup >= count:
        raise _fail(SEGMENTS, f"gap before backup segment {first_backup}")
    regular = count if first_backup < 0 else first_backup
    intervals = []
    for i in range(count):
        if str(i) not in segments:
            raise _fail(SEGMENTS, f"gap at segment {i}")
        if i < regular:
            offset, size = _segment_bounds(str(i), segments[str(i)])
            intervals.append((offset, size or U64))
    _check_intervals(intervals)
    _check_reencrypt_backups(obj, segments, regular, count)


def _check_intervals(intervals: list[tuple[int, int]]) -> None:
    last = len(intervals) - 1
    for i, (offset, length) in enumerate(intervals):
        if length == U64 and i != last:
            raise _fail(DYNAMIC_LAST, f"segment {i}")
        for j, (other, other_length) in enumerate(intervals):
            if i == j:
                continue
            if other_length != U64 and other > U64 - other_length:
                raise _fail(SEGMENTS_DISJOINT, f"segment {j} ends beyond 2^64")
            if offset >= other and (other_length == U64 or offset < other + other_length):
                raise _fail(SEGMENTS_DISJOINT, f"segments {i} and {j}")


def _check_reencrypt_backups(obj: dict[str, Any], segments: dict[str, Any], regular: int,
                             count: int) -> None:
    if not any(_REENCRYPT_FLAG.fullmatch(f) for f in mandatory(obj)):
        return
    flags = {f for i in range(regular, count) for f in segments[str(i)].get("flags", [])}
    if not {"backup-final", "backup-previous"} <= flags:
        raise _fail(REENCRYPT_BACKUPS)


def _check_keyslots(obj: dict[str, Any]) -> None:
    keyslots = _section(obj, "keyslots", KEYSLOTS)
    for key, slot in keyslots.items():
        if not _numbered(key) or not isinstance(slot, dict) or not _string(slot, "type"):
            raise _fail(KEYSLOTS, f"keyslot {key[:16]!r}")
        size = slot.get("key_size")
        if not is_int(size) or not 0 <= size <= U32:
            raise _fail(KEYSLOTS, f"keyslot {key} key_size")


def _min_segment_offset(segments: dict[str, Any]) -> int:
    offsets = [decimal_u64(s["offset"]) or 0 for s in segments.values() if not is_backup(s)]
    return min(offsets, default=U64)


def _check_config(obj: dict[str, Any]) -> tuple[int, int]:
    config = _section(obj, "config", CONFIG)
    json_text, keyslots_text = _string(config, "json_size"), _string(config, "keyslots_size")
    json_size = None if json_text is None else _strtoull(json_text)
    keyslots_size = None if keyslots_text is None else _strtoull(keyslots_text)
    if json_size is None or keyslots_size is None:
        raise _fail(CONFIG, "json_size or keyslots_size")
    metadata_size = (json_size + BINARY_SIZE) % (1 << 64)
    if metadata_size not in HDR_SIZES:
        raise _fail(METADATA_SIZE, str(metadata_size))
    if keyslots_size % 4096 or keyslots_size > MAX_KEYSLOTS_SIZE:
        raise _fail(KEYSLOTS_SIZE, str(keyslots_size))
    first = _min_segment_offset(obj["segments"])
    if first and (first < keyslots_size or first - keyslots_size < 2 * metadata_size):
        raise _fail(KEYSLOTS_SIZE, f"keyslots area runs into the data at {first}")
    if "flags" in config and _flags(config["flags"]) is None:
        raise _fail(CONFIG, "flags")
    return json_size, keyslots_size


def _check_areas(obj: dict[str, Any], metadata_size: int, keyslots_size: int) -> None:
    intervals = []
    for key, slot in obj["keyslots"].items():
        area = slot.get("area")
        offset_text, size_text = _string(area, "offset"), _string(area, "size")
        if not _string(area, "type") or offset_text is None or size_text is None:
            raise _fail(AREAS, f"keyslot {key}")
        offset, length = decimal_u64(offset_text), decimal_u64(size_text)
        if offset is None or length is None:
            raise _fail(AREAS, f"keyslot {key} offset or size")
        intervals.append((offset, length, key))
    end = 2 * metadata_size + keyslots_size
    for offset, length, key in intervals:
        if offset < 2 * metadata_size or not length or offset > U64 - length:
            raise _fail(AREAS_PLACED, f"keyslot {key}")
        if offset + length > end:
            raise _fail(AREAS_PLACED, f"keyslot {key} area runs past the keyslots area")
        for other, other_length, other_key in intervals:
            if other_key != key and other <= offset < other + other_length:
                raise _fail(AREAS_PLACED, f"keyslots {key} and {other_key} overlap")


def _check_luks2_keyslot(key: str, slot: dict[str, Any]) -> None:
    kdf, af, area = slot.get("kdf"), slot.get("af"), slot.get("area")
    if not (isinstance(kdf, dict) and isinstance(af, dict) and isinstance(area, dict)):
        raise _fail(KEYSLOT_LUKS2, f"keyslot {key}: kdf, af or area")
    kind = _string(kdf, "type")
    if kind is None:
        raise _fail(KEYSLOT_LUKS2, f"keyslot {key}: kdf type")
    # cryptsetup first drops parameters another KDF type would use (its header repair).
    if kind == PBKDF2 and not (
        _string(kdf, "hash") and is_int(kdf.get("iterations")) and _string(kdf, "salt")
    ):
        raise _fail(KEYSLOT_LUKS2, f"keyslot {key}: pbkdf2 parameters")
    if kind in (ARGON2I, ARGON2ID) and not (
        all(is_int(kdf.get(k)) for k in ("time", "memory", "cpus")) and _string(kdf, "salt")
    ):
        raise _fail(KEYSLOT_LUKS2, f"keyslot {key}: argon2 parameters")
    if _string(af, "type") != "luks1" or not _string(af, "hash") or not is_int(af.get("stripes")):
        raise _fail(KEYSLOT_LUKS2, f"keyslot {key}: af")
    if _string(area, "type") != "raw" or not _string(area, "encryption") or not is_int(
        area.get("key_size")
    ):
        raise _fail(KEYSLOT_LUKS2, f"keyslot {key}: area")


def _check_keyslot_types(obj: dict[str, Any]) -> None:
    reencrypt = 0
    for key, slot in obj["keyslots"].items():
        if slot["type"] == "luks2":
            _check_luks2_keyslot(key, slot)
            # cryptsetup looks the keyslot up by its number printed back: "01" is not found.
            name = str(int(key or "0"))
            owners = [d for d in obj["digests"].values() if name in d["keyslots"]]
            if len(owners) != 1:
                raise _fail(KEYSLOT_ONE_DIGEST, f"keyslot {key} is in {len(owners)} digests")
        elif slot["type"] == "reencrypt":
            reencrypt += 1
    online = any(_REENCRYPT_FLAG.fullmatch(f) for f in mandatory(obj))
    if reencrypt > 1 or bool(reencrypt) != online:
        raise _fail(REENCRYPT_KEYSLOT, f"{reencrypt} reencrypt keyslot(s)")


def check_json(obj: Any, json_area_size: int) -> None:
    """Every JSON rule, in cryptsetup's order; ``json_area_size`` is hdr_size - 4096."""
    if not isinstance(obj, dict):
        raise _fail(JSON_PARSE, "not an object")
    _check_requirements(obj)
    _check_tokens(obj)
    _check_digests(obj)
    _check_segments(obj)
    _check_keyslots(obj)
    json_size, keyslots_size = _check_config(obj)
    _check_areas(obj, json_size + BINARY_SIZE, keyslots_size)
    if json_size != json_area_size:
        raise _fail(JSON_SIZE, f"{json_size} != {json_area_size}")
    _check_keyslot_types(obj)
