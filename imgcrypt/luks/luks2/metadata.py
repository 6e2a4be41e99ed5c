"""LUKS2 JSON metadata: the model, its one validator and its one serialiser.

The JSON text stays the source of truth. :func:`validate` checks it the way cryptsetup does
(:mod:`imgcrypt.luks.luks2.rules`, and a little stricter where input is hostile) and returns
:class:`Metadata`, whose typed fields are what the rest of imgcrypt uses. Every JSON entry
imgcrypt writes is made here, beside the code that reads it back. Rewrites start from the
original JSON object and change only the entries they mean to, so tokens, flags and keys
imgcrypt does not know survive untouched.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from imgcrypt.crypto.kdf import Argon2, Kdf, Pbkdf2
from imgcrypt.crypto.kdfparams import ARGON2I, ARGON2ID, PBKDF2
from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.luks.base import SECTOR, Segment
from imgcrypt.luks.keyslot import STRIPES, MasterKeyDigest, material_size
from imgcrypt.luks.luks2 import rules as luks2_rules
from imgcrypt.luks.luks2.jsonc import MAX_DEPTH, JsonCError, strict_text
from imgcrypt.luks.luks2.rules import (
    BINARY_SIZE,
    MAX_KEYSLOTS_SIZE,
    check_json,
    decimal_u64,
    is_int,
    mandatory,
)
from imgcrypt.luks.rules import HeaderRuleError

MAX_JSON_SIZE = 4 << 20
MAX_JSON_VALUES = 100_000
MAX_OBJECTS = 32  # keyslots, tokens, segments, digests: cryptsetup's own maxima
MAX_STRIPES = STRIPES  # a keyslot may declare fewer than cryptsetup writes, never more
MAX_KEY_SIZE = 512
MAX_U64 = (1 << 64) - 1
# Mandatory requirements imgcrypt implements; any other one makes the image read-only for us.
KNOWN_REQUIREMENTS: frozenset[str] = frozenset()

__all__ = ["MAX_KEYSLOTS_SIZE", "Digest", "Keyslot", "Metadata", "Segment", "check_area",
           "dump_json", "load_json", "validate"]


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
    kdf_type: str = ""

    @property
    def material_size(self) -> int:
        """Bytes of AF material as stored: key_size * stripes rounded up to 512-byte sectors."""
        return material_size(self.key_size, self.stripes)


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


def _cap(text: str | bytes, *, count_values: bool = True) -> None:
    if len(text) > MAX_JSON_SIZE:
        raise FormatError("LUKS2 JSON metadata exceeds 4 MiB", reason=FormatFault.LIMIT_EXCEEDED)
    if not count_values:
        return
    # json-c's syntax (comments, single quotes...) goes through imgcrypt's own reader, a
    # Python loop: 4 MiB of "[[],[],..." would cost seconds and millions of objects. Real
    # metadata in that syntax is hand-made and small. Counting separators (even inside
    # strings) bounds the work before parsing.
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") > MAX_JSON_VALUES:
        raise FormatError("LUKS2 JSON metadata has too many values",
                          reason=FormatFault.LIMIT_EXCEEDED)


_DECODER = json.JSONDecoder()


def _deeper_than(obj: Any, limit: int) -> bool:
    """True if containers nest more than ``limit`` levels in ``obj`` (level by level: one list
    of references at a time, whatever the number of values)."""
    level = [obj] if isinstance(obj, (dict, list)) else []
    for _ in range(limit):
        level = [child for value in level
                 for child in (value.values() if isinstance(value, dict) else value)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    # Millions of new containers would each trigger the cycle collector's young-generation
    # scans: with it paused the C decoder reads 4 MiB of any shape about four times faster.
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _strict(area: bytes) -> tuple[Any, str, int] | None:
    """(the value, its JSON text, where json-c stops reading) when ``area`` holds strict JSON,
    as cryptsetup writes it, read by the C decoder whatever the number of values; None for
    anything needing json-c's own syntax (comments, single quotes, raw control characters,
    bytes that are not UTF-8, nesting near json-c's depth limit), which :func:`strict_text`
    reads.

    What follows the value must be whitespace up to the first NUL (or the end): that is where
    json-c stops, and the framing rule then applies unchanged.
    """
    nul = area.find(b"\0")
    head = area if nul < 0 else area[:nul]
    try:
        text = head.decode("utf-8")
        with _no_gc():
            obj, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    # json-c's depth limit, and anything near it, is left to the exact reader
    if text[end:].strip(" \t\n\r") or _deeper_than(obj, MAX_DEPTH - 2):
        return None
    return obj, text[:end], len(head)


def load_json(text: str) -> dict[str, Any]:
    """The top-level JSON object; FormatError for anything else, never a bare exception.

    ``json.loads`` (the C decoder) reads 4 MiB of any shape in a fraction of a second, so
    only the size is capped here."""
    _cap(text, count_values=False)
    try:
        # As json-c (cryptsetup's parser): a repeated key keeps its last value, and NaN or
        # Infinity are numbers (never integers, so no rule takes them for one).
        with _no_gc():
            obj = json.loads(text)
    except RecursionError:
        raise FormatError("LUKS2 JSON metadata is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and over-long integer literals
        raise FormatError(f"LUKS2 JSON metadata does not parse: {err}") from None
    if not isinstance(obj, dict):
        raise FormatError("LUKS2 JSON metadata is not an object")
    return obj


def check_area(area: bytes, hdr_size: int) -> tuple[str, Metadata]:
    """The JSON text of one copy's JSON area and its :class:`Metadata`, after cryptsetup's
    framing and JSON rules.

    The area starts with '{', holds one JSON object as json-c reads it, and nothing but NUL
    bytes (at least one) follows it; the object must pass every rule of
    :mod:`imgcrypt.luks.luks2.rules`. The text returned is strict JSON with the same values,
    and the metadata is what :func:`validate` makes of it, so nobody validates it again.
    """
    if area[:1] != b"{":
        raise HeaderRuleError(luks2_rules.JSON_START)
    _cap(area, count_values=False)
    strict = _strict(area)
    obj: Any = None
    if strict is not None:
        # what cryptsetup writes: as many values as fit in the area (issue 23)
        obj, text, end = strict
    else:
        _cap(area)
        # Each escape and comment is a step of the json-c reader below; real metadata has a
        # few.
        if area.count(b"\\") + area.count(b"/") > MAX_JSON_VALUES:
            raise FormatError("LUKS2 JSON metadata has too many escapes or comments",
                              reason=FormatFault.LIMIT_EXCEEDED)
        try:
            # json-c's default reading (comments, trailing commas, single quotes, any bytes
            # in strings), rewritten as strict JSON; end is where json-c stops reading.
            text, end = strict_text(area)
        except JsonCError as err:
            raise HeaderRuleError(luks2_rules.JSON_PARSE, str(err)) from None
    if end >= len(area):
        raise HeaderRuleError(luks2_rules.JSON_TRAILER, "no NUL after the JSON text")
    if area[end:].count(0) != len(area) - end:
        raise HeaderRuleError(luks2_rules.JSON_TRAILER, "non-NUL bytes after the JSON text")
    _cap(text, count_values=False)
    if strict is None:
        try:
            obj = json.loads(text)
        except RecursionError:
            raise FormatError("LUKS2 JSON metadata is nested too deeply") from None
        except ValueError as err:
            raise HeaderRuleError(luks2_rules.JSON_PARSE, str(err)) from None
    return text, validate(obj, hdr_size)


def dump_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def _ids(section: dict[str, Any]) -> dict[int, Any]:
    """Entries by number; the rules already made every key digits-only and every value an
    object. cryptsetup loads more than the 32 of each it writes; the JSON value cap bounds
    how many there can be."""
    return dict(sorted((int(key or "0"), value) for key, value in section.items()))


def _id_list(value: Any) -> tuple[int, ...]:
    """The numbers of a validated array of entry names."""
    return tuple(int(item or "0") for item in value) if isinstance(value, list) else ()


def _opt_int(parent: Any, key: str, default: int = 0) -> int:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if is_int(value) else default


def _opt_str(parent: Any, key: str) -> str:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, str) else ""


def _opt_b64(parent: Any, key: str) -> bytes | None:
    try:
        return base64.b64decode(_opt_str(parent, key).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _kdf(obj: Any) -> Kdf | None:
    """The KDF imgcrypt can run for this keyslot, or None (unknown type, bad parameters)."""
    kind, salt = _opt_str(obj, "type"), _opt_b64(obj, "salt")
    if salt is None:
        return None
    if kind == PBKDF2:
        return Pbkdf2(_opt_str(obj, "hash"), _opt_int(obj, "iterations"), salt)
    if kind in (ARGON2I, ARGON2ID):
        return Argon2(kind, _opt_int(obj, "time"), _opt_int(obj, "memory"),
                      _opt_int(obj, "cpus"), salt)
    return None


def _keyslot(ident: int, obj: dict[str, Any]) -> Keyslot:
    area, af, kdf = obj.get("area", {}), obj.get("af", {}), obj.get("kdf", {})
    priority = obj.get("priority", 1)
    return Keyslot(
        id=ident, type=obj["type"], priority=priority if priority in (0, 1, 2) else 1,
        area_offset=decimal_u64(area["offset"]), area_size=decimal_u64(area["size"]),
        key_size=obj["key_size"], kdf=_kdf(kdf), kdf_type=_opt_str(kdf, "type"),
        af_hash=_opt_str(af, "hash"), stripes=_opt_int(af, "stripes"),
        area_cipher=_opt_str(area, "encryption"), area_key_size=_opt_int(area, "key_size"),
    )


def _segment(ident: int, obj: dict[str, Any]) -> Segment:
    size = None if obj["size"] == "dynamic" else decimal_u64(obj["size"])
    return Segment(
        ident, obj["type"], decimal_u64(obj["offset"]) or 0, size,
        iv_tweak=decimal_u64(_opt_str(obj, "iv_tweak")) or 0,
        cipher=_opt_str(obj, "encryption"), sector_size=_opt_int(obj, "sector_size", SECTOR),
        integrity="integrity" in obj,
        flags=tuple(obj.get("flags", ())),
    )


def _digest(ident: int, obj: dict[str, Any]) -> Digest:
    return Digest(
        ident, obj["type"], _id_list(obj["keyslots"]), _id_list(obj["segments"]),
        hash=_opt_str(obj, "hash"), iterations=_opt_int(obj, "iterations"),
        salt=_opt_b64(obj, "salt") or b"", digest=_opt_b64(obj, "digest") or b"",
    )


def validate(obj: dict[str, Any], hdr_size: int) -> Metadata:
    """cryptsetup's rules (:mod:`imgcrypt.luks.luks2.rules`), then the typed view."""
    check_json(obj, hdr_size - BINARY_SIZE)
    config = obj["config"]
    keyslots = tuple(_keyslot(i, o) for i, o in _ids(obj["keyslots"]).items())
    segments = tuple(_segment(i, o) for i, o in _ids(obj["segments"]).items())
    digests = tuple(_digest(i, o) for i, o in _ids(obj["digests"]).items())
    tokens = tuple(_ids(obj["tokens"]))
    return Metadata(hdr_size - BINARY_SIZE, decimal_u64(config["keyslots_size"]) or 0, keyslots,
                    segments, digests, tokens, tuple(config.get("flags", ())), mandatory(obj))


# -- writing: every entry imgcrypt puts into LUKS2 JSON -----------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def kdf_entry(kdf: Kdf) -> dict[str, Any]:
    if isinstance(kdf, Pbkdf2):
        return {"type": PBKDF2, "hash": kdf.hash, "iterations": kdf.iterations,
                "salt": _b64(kdf.salt)}
    return {"type": kdf.variant, "time": kdf.time, "memory": kdf.memory_kib,
            "cpus": kdf.parallel, "salt": _b64(kdf.salt)}


def keyslot_entry(*, key_size: int, kdf: Kdf, af_hash: str, stripes: int, area_offset: int,
                  area_size: int, area_cipher: str) -> dict[str, Any]:
    """A ``luks2`` keyslot whose area key is as long as the volume key, as cryptsetup makes."""
    return {
        "type": "luks2",
        "key_size": key_size,
        "af": {"type": "luks1", "stripes": stripes, "hash": af_hash},
        "area": {"type": "raw", "offset": str(area_offset), "size": str(area_size),
                 "encryption": area_cipher, "key_size": key_size},
        "kdf": kdf_entry(kdf),
    }


def crypt_segment_entry(*, offset: int, cipher: str, sector_size: int) -> dict[str, Any]:
    """A ``dynamic`` crypt segment (to the end of the device) with iv_tweak 0."""
    return {"type": "crypt", "offset": str(offset), "size": "dynamic", "iv_tweak": "0",
            "encryption": cipher, "sector_size": sector_size}


def digest_entry(digest: MasterKeyDigest, *, keyslots: list[str],
                 segments: list[str]) -> dict[str, Any]:
    return {"type": PBKDF2, "keyslots": keyslots, "segments": segments,
            "hash": digest.kdf.hash, "iterations": digest.kdf.iterations,
            "salt": _b64(digest.kdf.salt), "digest": _b64(digest.value)}


def new_document(*, segment: dict[str, Any], digest: dict[str, Any], json_size: int,
                 keyslots_size: int) -> dict[str, Any]:
    """The JSON of a new header: one segment, one digest, no keyslot or token yet."""
    return {
        "keyslots": {},
        "tokens": {},
        "segments": {"0": segment},
        "digests": {"0": digest},
        "config": {"json_size": str(json_size), "keyslots_size": str(keyslots_size)},
    }


def with_keyslot(obj: dict[str, Any], slot: int, entry: dict[str, Any],
                 digest_id: int) -> dict[str, Any]:
    """``obj`` (changed in place) with keyslot ``slot`` added and assigned to the digest."""
    keyslots = obj["keyslots"]
    keyslots[str(slot)] = entry
    obj["keyslots"] = dict(sorted(keyslots.items(), key=lambda kv: int(kv[0])))
    obj["digests"][str(digest_id)]["keyslots"].append(str(slot))
    return obj


def without_keyslot(obj: dict[str, Any], slot: int) -> dict[str, Any]:
    """``obj`` (changed in place) with keyslot ``slot`` and every reference to it gone:
    cryptsetup refuses references to keyslots that do not exist."""
    del obj["keyslots"][str(slot)]
    for section in ("digests", "tokens"):
        for entry in obj[section].values():
            if isinstance(entry.get("keyslots"), list):
                entry["keyslots"] = [k for k in entry["keyslots"] if k != str(slot)]
    return obj
