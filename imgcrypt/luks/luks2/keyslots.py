"""LUKS2 keyslots of type ``luks2``: where a new one goes, how an existing one opens.

The cryptography itself (AF, keyslot encryption, KDF budget) is the one both versions share,
in :mod:`imgcrypt.luks.keyslot`; this module maps LUKS2's JSON keyslots onto it.
"""

from __future__ import annotations

from typing import Any

from imgcrypt.crypto import af
from imgcrypt.crypto.kdf import Argon2, Pbkdf2, check_hash
from imgcrypt.crypto.sectors import CipherSpec
from imgcrypt.errors import FormatError, FormatFault, UnsupportedError, UsageError
from imgcrypt.luks.keyslot import KEYSLOT_ALIGN, SlotMaterial
from imgcrypt.luks.luks2.metadata import MAX_KEY_SIZE, MAX_OBJECTS, MAX_STRIPES, Keyslot, Metadata

PRIORITY_NAMES = {0: "ignore", 1: "normal", 2: "prefer"}


def round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def free_id(metadata: Metadata, slot: int | None) -> int:
    """``slot`` if it is free, else the lowest free keyslot number when ``slot`` is None."""
    used = {ks.id for ks in metadata.keyslots}
    if slot is None:
        free = [i for i in range(MAX_OBJECTS) if i not in used]
        if not free:
            raise UsageError(f"all {MAX_OBJECTS} LUKS2 keyslots are in use")
        slot = free[0]
    if not 0 <= slot < MAX_OBJECTS or slot in used:
        raise UsageError(f"keyslot {slot} is not free")
    return slot


def free_area(metadata: Metadata, hdr_size: int, size: int) -> int:
    """Lowest 4 KiB-aligned offset in the keyslots area with ``size`` bytes unused."""
    start, end = 2 * hdr_size, 2 * hdr_size + metadata.keyslots_size
    taken = sorted(
        (ks.area_offset, ks.area_offset + ks.area_size)
        for ks in metadata.keyslots
        if ks.area_offset is not None and ks.area_size is not None
    )
    candidate = start
    for a, b in taken:
        if candidate + size <= a:
            break
        candidate = max(candidate, round_up(b, KEYSLOT_ALIGN))
    if candidate + size > end:
        raise FormatError("no room left in the LUKS2 keyslots area for another keyslot")
    return candidate


def material(ks: Keyslot) -> SlotMaterial:
    """Refuse a keyslot whose parameters imgcrypt cannot or will not compute, before any KDF;
    else where and how it keeps the master key."""
    if not 1 <= ks.key_size <= MAX_KEY_SIZE or not 1 <= ks.stripes <= MAX_STRIPES:
        raise FormatError(f"LUKS2 keyslot {ks.id}: key size {ks.key_size} or "
                                 f"{ks.stripes} stripes out of range",
                                 reason=FormatFault.LIMIT_EXCEEDED)
    if ks.area_size is None or ks.material_size > ks.area_size:
        raise FormatError(f"LUKS2 keyslot {ks.id} area is smaller than its key material")
    cipher = CipherSpec.parse(ks.area_cipher)
    cipher.check_key_size(ks.area_key_size)
    af.check_hash(ks.af_hash)
    assert ks.kdf is not None and ks.area_offset is not None
    return SlotMaterial(ks.id, ks.kdf, cipher, ks.area_key_size, ks.key_size, ks.stripes,
                        ks.af_hash, ks.area_offset)


def problems(ks: Keyslot) -> list[str]:
    """Why imgcrypt cannot compute keyslot ``ks`` (its KDF, hash, area cipher, AF hash); empty
    if it can. The same checks :func:`material` and the KDF make at unlock, without any work."""
    if ks.kdf is None:
        return [f"keyslot {ks.id}: unsupported KDF {ks.kdf_type[:32]!r}"]
    try:
        if isinstance(ks.kdf, Pbkdf2):
            check_hash(ks.kdf.hash)
        CipherSpec.parse(ks.area_cipher).check_key_size(ks.area_key_size)
        af.check_hash(ks.af_hash)
    except UnsupportedError as err:
        return [f"keyslot {ks.id}: {err}"]
    return []


def describe(ks: Keyslot) -> dict[str, Any]:
    out: dict[str, Any] = {"slot": ks.id, "type": ks.type,
                           "priority": PRIORITY_NAMES[ks.priority]}
    if isinstance(ks.kdf, Pbkdf2):
        out.update(kdf=ks.kdf.name, hash=ks.kdf.hash, iterations=ks.kdf.iterations)
    elif isinstance(ks.kdf, Argon2):
        out.update(kdf=ks.kdf.variant, time=ks.kdf.time, memory=ks.kdf.memory_kib,
                   parallel=ks.kdf.parallel)
    elif ks.kdf_type:
        out.update(kdf=ks.kdf_type)
    if ks.type == "luks2":
        out.update(key_size=ks.key_size * 8, cipher=ks.area_cipher,
                   cipher_key_size=ks.area_key_size * 8, af_hash=ks.af_hash,
                   stripes=ks.stripes)
    if ks.area_offset is not None:
        out.update(area_offset=ks.area_offset, area_size=ks.area_size)
    return out
