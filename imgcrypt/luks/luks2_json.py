"""LUKS2 JSON metadata: parse with caps, validate in one place, expose typed read-only views.

The JSON text stays the source of truth. :func:`parse_metadata` checks it the way cryptsetup
does (and a little stricter where input is hostile) and returns :class:`Metadata`, whose
typed fields are what the rest of imgcrypt uses. Rewrites start from the original JSON object
and change only the entries they mean to, so tokens, flags and keys imgcrypt does not know
survive untouched.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from imgcrypt.errors import FormatError, LimitExceededError, UnsupportedError
from imgcrypt.jsonkeys import unique_keys
from imgcrypt.luks.kdf import Argon2, Kdf, Pbkdf2

MAX_JSON_SIZE = 4 << 20
MAX_JSON_VALUES = 100_000
MAX_OBJECTS = 32  # keyslots, tokens, segments, digests: cryptsetup's own maxima
MAX_KEYSLOTS_SIZE = 128 << 20  # cryptsetup's LUKS2_MAX_KEYSLOTS_SIZE
MAX_STRIPES = 4000
MAX_KEY_SIZE = 512
MAX_U64 = (1 << 64) - 1
SECTOR_SIZES = (512, 1024, 2048, 4096)
# Mandatory requirements imgcrypt implements; any other one makes the image read-only for us.
KNOWN_REQUIREMENTS: frozenset[str] = frozenset()

_ID = re.compile(r"(0|[1-9][0-9]{0,9})")
_U64 = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class Keyslot:
    id: int
    type: str
    priority: int  # 0 ignore, 1 normal, 2 prefer
    area_offset: int | None
    area_size: int | None
    # Only for type "luks2":
    key_size: int = 0
    kdf: Kdf | None = None
    af_hash: str = ""
    stripes: int = 0
    area_cipher: str = ""
    area_key_size: int = 0

    @property
    def material_size(self) -> int:
        """Bytes of AF material as stored: key_size * stripes rounded up to 512-byte sectors."""
        return -(-self.key_size * self.stripes // 512) * 512


@dataclass(frozen=True)
class Segment:
    id: int
    type: str
    offset: int
    size: int | None  # None: "dynamic", to the end of the device
    iv_tweak: int = 0
    cipher: str = ""
    sector_size: int = 512
    integrity: bool = False


@dataclass(frozen=True)
class Digest:
    id: int
    type: str
    keyslots: tuple[int, ...]
    segments: tuple[int, ...]
    hash: str = ""
    iterations: int = 0
    salt: bytes = field(default=b"", repr=False)
    digest: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Metadata:
    json_size: int
    keyslots_size: int
    keyslots: tuple[Keyslot, ...]
    segments: tuple[Segment, ...]
    digests: tuple[Digest, ...]
    token_ids: tuple[int, ...]
    flags: tuple[str, ...]
    requirements: tuple[str, ...]

    def unknown_requirements(self) -> tuple[str, ...]:
        return tuple(r for r in self.requirements if r not in KNOWN_REQUIREMENTS)


# -- reading ----------------------------------------------------------------------------------


_no_duplicates = unique_keys(lambda key: FormatError(f"LUKS2 JSON repeats the key {key!r}"))


def _no_constants(name: str) -> Any:
    raise FormatError(f"LUKS2 JSON contains {name}")


def load_json(text: str) -> dict[str, Any]:
    """The top-level JSON object; FormatError for anything else, never a bare exception."""
    if len(text) > MAX_JSON_SIZE:
        raise LimitExceededError("LUKS2 JSON metadata exceeds 4 MiB")
    # 4 MiB of "[[],[],..." would become millions of Python objects; real metadata has a few
    # hundred values. Counting separators (even inside strings) bounds memory before parsing.
    if text.count(",") + text.count("[") + text.count("{") > MAX_JSON_VALUES:
        raise LimitExceededError("LUKS2 JSON metadata has too many values")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        raise FormatError("LUKS2 JSON metadata is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and over-long integer literals
        raise FormatError(f"LUKS2 JSON metadata does not parse: {err}") from None
    if not isinstance(obj, dict):
        raise FormatError("LUKS2 JSON metadata is not an object")
    return obj


def dump_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def _obj(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise FormatError(f"LUKS2 {where}: {key!r} missing or not an object")
    return value


def _str(parent: dict[str, Any], key: str, where: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str):
        raise FormatError(f"LUKS2 {where}: {key!r} missing or not a string")
    return value


def _int(parent: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = parent.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"LUKS2 {where}: {key!r} missing or not an integer")
    if not low <= value <= high:
        raise LimitExceededError(f"LUKS2 {where}: {key} {value} outside {low}..{high}")
    return value


def _u64(parent: dict[str, Any], key: str, where: str) -> int:
    """cryptsetup stores 64-bit quantities as decimal strings."""
    value = parent.get(key)
    if not isinstance(value, str) or not _U64.fullmatch(value) or int(value) > MAX_U64:
        raise FormatError(f"LUKS2 {where}: {key!r} is not a decimal string of a 64-bit value")
    return int(value)


def _b64(parent: dict[str, Any], key: str, where: str) -> bytes:
    value = _str(parent, key, where)
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise FormatError(f"LUKS2 {where}: {key!r} is not base64") from None


def _ids(section: dict[str, Any], what: str) -> dict[int, Any]:
    if len(section) > MAX_OBJECTS:
        raise LimitExceededError(f"LUKS2 metadata has {len(section)} {what} (at most 32)")
    out: dict[int, Any] = {}
    for key, value in section.items():
        if not _ID.fullmatch(key) or int(key) >= MAX_OBJECTS:
            raise FormatError(f"LUKS2 {what} id {key[:20]!r} is not a number below 32")
        if not isinstance(value, dict):
            raise FormatError(f"LUKS2 {what} {key} is not an object")
        out[int(key)] = value
    return dict(sorted(out.items()))


def _id_list(
    parent: dict[str, Any], key: str, where: str, known: dict[int, Any]
) -> tuple[int, ...]:
    value = parent.get(key)
    if not isinstance(value, list) or len(value) > MAX_OBJECTS:
        raise FormatError(f"LUKS2 {where}: {key!r} missing or not a short list")
    out = []
    for item in value:
        if not isinstance(item, str) or not _ID.fullmatch(item) or int(item) not in known:
            raise FormatError(f"LUKS2 {where}: {key!r} names an unknown entry")
        out.append(int(item))
    return tuple(out)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_OBJECTS or not all(
        isinstance(v, str) for v in value
    ):
        raise FormatError(f"LUKS2 {where} is not a short list of strings")
    return tuple(value)


def _kdf(obj: dict[str, Any], where: str) -> Kdf:
    kind = _str(obj, "type", where)
    salt = _b64(obj, "salt", where)
    if kind == "pbkdf2":
        return Pbkdf2(_str(obj, "hash", where), _int(obj, "iterations", where, 1, MAX_U64), salt)
    if kind in ("argon2i", "argon2id"):
        return Argon2(
            kind,
            _int(obj, "time", where, 1, MAX_U64),
            _int(obj, "memory", where, 1, MAX_U64),
            _int(obj, "cpus", where, 1, MAX_U64),
            salt,
        )
    raise UnsupportedError(f"LUKS2 {where}: unsupported KDF {kind[:32]!r}")


def _keyslot(ident: int, obj: dict[str, Any]) -> Keyslot:
    where = f"keyslot {ident}"
    kind = _str(obj, "type", where)
    priority = _int(obj, "priority", where, 0, 2) if "priority" in obj else 1
    area = obj.get("area")
    offset = size = None
    if isinstance(area, dict) and "offset" in area:
        offset, size = _u64(area, "offset", where), _u64(area, "size", where)
    if kind != "luks2":
        return Keyslot(ident, kind, priority, offset, size)
    area = _obj(obj, "area", where)
    offset, size = _u64(area, "offset", where), _u64(area, "size", where)
    if _str(area, "type", where) != "raw":
        raise UnsupportedError(f"LUKS2 {where}: area type {area['type'][:32]!r}")
    af = _obj(obj, "af", where)
    if _str(af, "type", where) != "luks1":
        raise UnsupportedError(f"LUKS2 {where}: AF type {af['type'][:32]!r}")
    return Keyslot(
        id=ident, type=kind, priority=priority, area_offset=offset, area_size=size,
        key_size=_int(obj, "key_size", where, 1, MAX_KEY_SIZE),
        kdf=_kdf(_obj(obj, "kdf", where), where),
        af_hash=_str(af, "hash", where),
        stripes=_int(af, "stripes", where, 1, MAX_STRIPES),
        area_cipher=_str(area, "encryption", where),
        area_key_size=_int(area, "key_size", where, 1, MAX_KEY_SIZE),
    )


def _segment(ident: int, obj: dict[str, Any]) -> Segment:
    where = f"segment {ident}"
    kind = _str(obj, "type", where)
    offset = _u64(obj, "offset", where)
    size = None if obj.get("size") == "dynamic" else _u64(obj, "size", where)
    if kind != "crypt":
        return Segment(ident, kind, offset, size)
    sector_size = _int(obj, "sector_size", where, 512, 4096)
    if sector_size not in SECTOR_SIZES:
        raise FormatError(f"LUKS2 {where}: sector size {sector_size} not in {SECTOR_SIZES}")
    if offset % 512 or (size is not None and size % sector_size):
        raise FormatError(f"LUKS2 {where}: offset or size not aligned to its sectors")
    if "flags" in obj:
        _strings(obj["flags"], f"{where} flags")
    return Segment(
        ident, kind, offset, size, iv_tweak=_u64(obj, "iv_tweak", where),
        cipher=_str(obj, "encryption", where), sector_size=sector_size,
        integrity="integrity" in obj,
    )


def _digest(ident: int, obj: dict[str, Any], keyslots: dict[int, Any],
            segments: dict[int, Any]) -> Digest:
    where = f"digest {ident}"
    kind = _str(obj, "type", where)
    ks = _id_list(obj, "keyslots", where, keyslots)
    segs = _id_list(obj, "segments", where, segments)
    if kind != "pbkdf2":
        return Digest(ident, kind, ks, segs)
    return Digest(
        ident, kind, ks, segs, hash=_str(obj, "hash", where),
        iterations=_int(obj, "iterations", where, 1, MAX_U64),
        salt=_b64(obj, "salt", where), digest=_b64(obj, "digest", where),
    )


def parse_metadata(text: str, hdr_size: int) -> Metadata:
    """Parse and validate the JSON of a copy whose metadata (binary + JSON) is ``hdr_size``."""
    obj = load_json(text)
    return validate(obj, hdr_size)


def validate(obj: dict[str, Any], hdr_size: int) -> Metadata:
    """Every structural and bounds check, before anything uses the metadata."""
    raw_keyslots = _ids(_obj(obj, "keyslots", "metadata"), "keyslots")
    raw_tokens = _ids(_obj(obj, "tokens", "metadata"), "tokens")
    raw_segments = _ids(_obj(obj, "segments", "metadata"), "segments")
    raw_digests = _ids(_obj(obj, "digests", "metadata"), "digests")
    config = _obj(obj, "config", "metadata")

    json_size = _u64(config, "json_size", "config")
    if json_size != hdr_size - 4096:
        raise FormatError(f"LUKS2 config json_size {json_size} does not match hdr_size {hdr_size}")
    keyslots_size = _u64(config, "keyslots_size", "config")
    if keyslots_size % 4096 or keyslots_size > MAX_KEYSLOTS_SIZE:
        raise LimitExceededError(f"LUKS2 keyslots_size {keyslots_size} invalid or above 128 MiB")
    flags = _strings(config.get("flags", []), "config flags")
    requirements: tuple[str, ...] = ()
    if "requirements" in config:
        req = _obj(config, "requirements", "config")
        requirements = _strings(req.get("mandatory", []), "mandatory requirements")

    for tid, token in raw_tokens.items():
        _str(token, "type", f"token {tid}")
        if "keyslots" in token:
            _id_list(token, "keyslots", f"token {tid}", raw_keyslots)

    keyslots = tuple(_keyslot(i, o) for i, o in raw_keyslots.items())
    segments = tuple(_segment(i, o) for i, o in raw_segments.items())
    digests = tuple(_digest(i, o, raw_keyslots, raw_segments) for i, o in raw_digests.items())

    area_start, area_end = 2 * hdr_size, 2 * hdr_size + keyslots_size
    areas = []
    for ks in keyslots:
        if ks.area_offset is None or ks.area_size is None:
            continue
        start, end = ks.area_offset, ks.area_offset + ks.area_size
        if start < area_start or end > area_end:
            raise FormatError(f"LUKS2 keyslot {ks.id} area lies outside the keyslots area")
        if ks.type == "luks2" and ks.material_size > ks.area_size:
            raise FormatError(f"LUKS2 keyslot {ks.id} area is smaller than its key material")
        areas.append((start, end, ks.id))
    areas.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(areas):
        if start < end:
            raise FormatError(f"LUKS2 keyslots {a} and {b} overlap")
    for seg in segments:
        if seg.offset < area_end:
            raise FormatError(
                f"LUKS2 segment {seg.id} starts at {seg.offset}, inside the metadata "
                "(detached headers are not supported)"
            )
        if seg.size is not None and seg.offset + seg.size > MAX_U64:
            raise FormatError(f"LUKS2 segment {seg.id} ends beyond 2^64")
    return Metadata(json_size, keyslots_size, keyslots, segments, digests,
                    tuple(raw_tokens), flags, requirements)
