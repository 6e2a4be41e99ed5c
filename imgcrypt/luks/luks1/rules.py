"""cryptsetup 2.6's validity rules for LUKS1 headers, checked on every parse.

cryptsetup checks every keyslot, active or not: a damaged disabled keyslot makes the whole
header invalid (its area could later be handed to a new passphrase). Ciphers are not checked
when loading; whether imgcrypt can decrypt is a separate question
(:meth:`imgcrypt.luks.luks1.Luks1Header.unsupported`).

One rule is cryptsetup's alone: a header hash of fewer than 20 bytes (md5). qemu's LUKS driver
writes and opens such images (it derives the 20-byte master-key digest with PBKDF2, which
stretches any hash to any length), so imgcrypt opens them as qemu does, and reports
cryptsetup's refusal beside the header (:func:`cryptsetup_refusal`) instead of raising it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from imgcrypt.crypto import backend

# LUKS1 counts offsets in 512-byte sectors whatever the device's sector size.
from imgcrypt.luks.base import SECTOR as SECTOR
from imgcrypt.luks.keyslot import STRIPES, material_size
from imgcrypt.luks.rules import HeaderRuleError, Rule, rule

MIN_DIGEST = 20


class RuledKeyslot(Protocol):
    """What the rules read of a keyslot (:class:`imgcrypt.luks.luks1.Keyslot`)."""

    @property
    def key_material_offset(self) -> int: ...  # sectors
    @property
    def stripes(self) -> int: ...


class RuledHeader(Protocol):
    """What the rules read of a header (:class:`imgcrypt.luks.luks1.Luks1Header`, which
    imports this module)."""

    @property
    def hash_spec(self) -> str: ...
    @property
    def key_bytes(self) -> int: ...
    @property
    def payload_offset_sectors(self) -> int: ...
    @property
    def keyslots(self) -> Sequence[RuledKeyslot]: ...
    @property
    def header_size(self) -> int: ...  # bytes of the header and its keyslot table


RULES: dict[str, Rule] = {}
HASH_KNOWN = rule(RULES, "luks1-hash", "the header hash is one cryptsetup's backend knows")
HASH_SIZE = rule(RULES, "luks1-hash-size",
                 "the header hash gives at least 20 bytes (the master-key digest's size)")
STRIPES_4000 = rule(RULES, "luks1-stripes", "every keyslot, active or not, has 4000 stripes")
AFTER_HEADER = rule(RULES, "luks1-keyslot-after-header",
                    "every keyslot's material starts after the 592-byte header")
BEFORE_PAYLOAD = rule(RULES, "luks1-keyslot-before-payload",
                      "every keyslot's material starts before the payload")
FITS_PAYLOAD = rule(RULES, "luks1-keyslot-fits",
                    "every keyslot's 4000 stripes end before the payload")
DISJOINT = rule(RULES, "luks1-keyslots-disjoint", "no two keyslot areas overlap")
KEY_SIZE = rule(RULES, "luks1-key-size", "the volume key size is not 0")


def area_sectors(key_bytes: int) -> int:
    """Sectors of one keyslot's AF material: key_bytes * 4000, rounded up."""
    return material_size(key_bytes, STRIPES) // SECTOR


def cryptsetup_refusal(header: RuledHeader) -> HeaderRuleError | None:
    """Why cryptsetup refuses a header that qemu and imgcrypt open, or None if it loads it
    (given that :func:`check` passed)."""
    size = backend.hash_size(header.hash_spec)
    if size is not None and size < MIN_DIGEST:
        return HeaderRuleError(HASH_SIZE, f"{header.hash_spec[:32]!r} gives {size}")
    return None


def check(header: RuledHeader) -> None:
    """Raise HeaderRuleError for the first rule ``header`` breaks, in cryptsetup's order,
    except the one :func:`cryptsetup_refusal` reports."""
    if backend.hash_size(header.hash_spec) is None:
        raise HeaderRuleError(HASH_KNOWN, repr(header.hash_spec[:32]))
    span = area_sectors(header.key_bytes)
    payload = header.payload_offset_sectors
    for i, slot in enumerate(header.keyslots):
        if slot.stripes != STRIPES:
            raise HeaderRuleError(STRIPES_4000, f"keyslot {i} has {slot.stripes}")
        if slot.key_material_offset * SECTOR < header.header_size:
            raise HeaderRuleError(AFTER_HEADER, f"keyslot {i}")
        if payload == 0:  # a detached header: no payload to collide with
            continue
        if payload <= slot.key_material_offset:
            raise HeaderRuleError(BEFORE_PAYLOAD, f"keyslot {i}")
        if payload < slot.key_material_offset + span:
            raise HeaderRuleError(FITS_PAYLOAD, f"keyslot {i}")
    ordered = sorted(range(len(header.keyslots)),
                     key=lambda i: header.keyslots[i].key_material_offset)
    for prev, nxt in itertools.pairwise(ordered):
        end = header.keyslots[prev].key_material_offset + span
        if header.keyslots[nxt].key_material_offset < end:
            raise HeaderRuleError(DISJOINT, f"keyslots {prev} and {nxt}")
    if header.key_bytes == 0:
        raise HeaderRuleError(KEY_SIZE)


def end_sectors(header: RuledHeader) -> int:
    """Where the farthest keyslot area ends, in sectors (cryptsetup's LUKS_device_sectors)."""
    last = max(s.key_material_offset for s in header.keyslots)
    return last + area_sectors(header.key_bytes)
