"""Size-safe property storage: one long value as numbered parts no longer than a limit.

Image services cap property values (Glance documents 255 characters, Nova truncates to 255
when it copies properties, Swift allows 256 bytes a value). A value ``V`` stored under the base
name ``NAME`` becomes::

    NAME_count   = "N"                       number of parts, decimal, no leading zeros
    NAME_sha256  = base64url(sha256(V))      unpadded, 43 characters: tells complete from damaged
    NAME_1       = "1:" + V[0:k1]            each part repeats its own number ...
    ...
    NAME_N       = "N:" + V[..]              ... so a part stored under the wrong key is noticed

Every record, numbers included, is at most ``max_length`` characters. Reading checks, in this
order, and raises a distinct error for each fault: malformed records, duplicated parts (two
records claiming one number), extra parts (numbers beyond the count), missing parts, reordered
parts (a record under another number's key), and finally the digest of the joined value.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping

from imgcrypt.errors import UsageError, VerificationError, VerificationFault

#: The longest value written, by default: Glance's documented limit on property values.
DEFAULT_MAX_LENGTH = 255
#: The smallest limit accepted: the digest record is 43 characters, and below this a useful
#: part would hold almost nothing.
MIN_MAX_LENGTH = 64
#: A cap for hostile property sets: an ML-DSA-87 signature needs about 100 parts at the
#: minimum limit, so this (and MAX_JOINED_LENGTH) leave a wide margin while bounding memory
#: and time.
MAX_PARTS = 4096
MAX_JOINED_LENGTH = 1 << 20

_DECIMAL = re.compile(r"[0-9]+")
_PART_VALUE = re.compile(r"([0-9]+):(.*)", re.DOTALL)


def check_max_length(max_length: int) -> None:
    """Refuse a value length limit too small to hold a useful part (:data:`MIN_MAX_LENGTH`)."""
    if max_length < MIN_MAX_LENGTH:
        raise UsageError(
            f"the value length limit must be at least {MIN_MAX_LENGTH}, not {max_length}"
        )


def _digest(value: str) -> str:
    raw = hashlib.sha256(value.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def count_key(name: str) -> str:
    return f"{name}_count"


def digest_key(name: str) -> str:
    return f"{name}_sha256"


def part_key(name: str, index: int) -> str:
    return f"{name}_{index}"


def split_value(name: str, value: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, str]:
    """The records that store ``value`` under ``name``, none longer than ``max_length``."""
    check_max_length(max_length)
    parts: list[str] = []
    position = 0
    index = 1
    # An empty value still gets one (empty) part, so "no parts" always means "missing".
    while position < len(value) or not parts:
        prefix = f"{index}:"
        room = max_length - len(prefix)
        parts.append(prefix + value[position : position + room])
        position += room
        index += 1
    if len(parts) > MAX_PARTS or len(value) > MAX_JOINED_LENGTH:
        raise UsageError(f"value too long to store in parts of {max_length} characters")
    records = {count_key(name): str(len(parts)), digest_key(name): _digest(value)}
    for number, part in enumerate(parts, start=1):
        records[part_key(name, number)] = part
    return records


def has_parts(name: str, properties: Mapping[str, str]) -> bool:
    """Whether any record of ``name`` is present (so its absence is not an error)."""
    if count_key(name) in properties or digest_key(name) in properties:
        return True
    return any(_part_number(name, key) is not None for key in properties)


def _part_number(name: str, key: str) -> str | None:
    prefix = f"{name}_"
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    return rest if _DECIMAL.fullmatch(rest) else None


def _canonical_int(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text) or (len(text) > 1 and text[0] == "0") or len(text) > 9:
        raise VerificationError(f"{what} is not a canonical decimal number",
                                reason=VerificationFault.MALFORMED_PART)
    return int(text)


def join_value(name: str, properties: Mapping[str, str]) -> str:
    """Reassemble the value stored under ``name``; each kind of damage has its own error."""
    if count_key(name) not in properties:
        raise VerificationError(f"{count_key(name)} is missing",
                                reason=VerificationFault.MISSING_PART)
    if digest_key(name) not in properties:
        raise VerificationError(f"{digest_key(name)} is missing",
                                reason=VerificationFault.MISSING_PART)
    count = _canonical_int(properties[count_key(name)], count_key(name))
    if not 1 <= count <= MAX_PARTS:
        raise VerificationError(f"{count_key(name)} must be between 1 and {MAX_PARTS}",
                                reason=VerificationFault.MALFORMED_PART)

    by_key: dict[int, str] = {}
    padded: list[tuple[str, int]] = []
    for key, value in properties.items():
        digits = _part_number(name, key)
        if digits is None:
            continue
        if len(by_key) + len(padded) > MAX_PARTS:
            raise VerificationError(f"more than {MAX_PARTS} parts of {name}",
                                    reason=VerificationFault.EXTRA_PART)
        # Numbers too long to be real parts are kept as "beyond the count" without int().
        number = int(digits) if len(digits) <= 9 else MAX_PARTS + 1
        if len(digits) > 1 and digits[0] == "0":
            padded.append((key, number))
        else:
            by_key[number] = value
    for key, number in padded:
        if number in by_key:
            raise VerificationError(f"{key} duplicates {part_key(name, number)}",
                                    reason=VerificationFault.DUPLICATE_PART)
        raise VerificationError(f"{key} is not a canonical part number",
                                reason=VerificationFault.MALFORMED_PART)

    claimed: dict[int, int] = {}
    for number, value in by_key.items():
        match = _PART_VALUE.fullmatch(value)
        if match is None:
            raise VerificationError(f"{part_key(name, number)} does not start with its number",
                                    reason=VerificationFault.MALFORMED_PART)
        own = _canonical_int(match.group(1), f"the number inside {part_key(name, number)}")
        if own in claimed:
            raise VerificationError(
                f"{part_key(name, number)} and {part_key(name, claimed[own])} both hold part {own}",
                reason=VerificationFault.DUPLICATE_PART,
            )
        claimed[own] = number

    outside = [n for n in (*by_key, *claimed) if not 1 <= n <= count]
    extra = sorted(outside)
    if extra:
        raise VerificationError(f"part {extra[0]} of {name} is outside 1..{count}",
                                reason=VerificationFault.EXTRA_PART)
    missing = [n for n in range(1, count + 1) if n not in by_key]
    if missing:
        raise VerificationError(f"part {missing[0]} of {name} is missing ({count} expected)",
                                reason=VerificationFault.MISSING_PART)
    moved = [n for n, own in claimed.items() if own != n]
    if moved:
        first = min(moved)
        raise VerificationError(
            f"{part_key(name, claimed[first])} holds part {first}: parts of {name} are reordered",
            reason=VerificationFault.REORDERED_PART,
        )

    pieces: list[str] = []
    total = 0
    for number in range(1, count + 1):
        piece = by_key[number].split(":", 1)[1]
        total += len(piece)
        if total > MAX_JOINED_LENGTH:
            raise VerificationError(f"{name} is longer than {MAX_JOINED_LENGTH} characters",
                                    reason=VerificationFault.MALFORMED_PART)
        pieces.append(piece)
    joined = "".join(pieces)
    if _digest(joined) != properties[digest_key(name)]:
        raise VerificationError(f"the parts of {name} do not match {digest_key(name)}",
                                reason=VerificationFault.CORRUPT_PARTS)
    return joined


def record_keys(name: str, properties: Mapping[str, str]) -> list[str]:
    """Every key in ``properties`` that belongs to the parts of ``name``."""
    keys = [k for k in (count_key(name), digest_key(name)) if k in properties]
    keys.extend(k for k in properties if _part_number(name, k) is not None)
    return keys


__all__ = [
    "DEFAULT_MAX_LENGTH",
    "MAX_PARTS",
    "MIN_MAX_LENGTH",
    "check_max_length",
    "has_parts",
    "join_value",
    "record_keys",
    "split_value",
]
