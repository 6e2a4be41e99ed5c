"""LUKS2 segments: the crypt segment imgcrypt decrypts, and why it may refuse one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imgcrypt.crypto.sectors import SECTOR_SIZES, CipherSpec
from imgcrypt.errors import UnsupportedError
from imgcrypt.luks.base import Segment
from imgcrypt.luks.luks2.metadata import Metadata


def crypt_segment(metadata: Metadata) -> Segment:
    """Segment 0, which must be of type crypt for imgcrypt to use it."""
    seg = metadata.segments[0]
    if seg.type != "crypt":
        raise UnsupportedError(f"LUKS2 segment {seg.id} has type {seg.type[:32]!r}")
    return seg


def problems(metadata: Metadata,
             key_bytes: Callable[[], int]) -> tuple[list[str], Segment | None]:
    """Why imgcrypt cannot decrypt the segments, and the crypt segment when there is one.

    Anything but one plain crypt segment is refused: integrity sections, several segments (a
    linear one before the crypt one, a re-encryption in progress), unknown segment types;
    also ciphers and sector sizes imgcrypt lacks. ``key_bytes`` is asked only of a crypt
    segment (it reads the keyslots of its digest).
    """
    reasons = []
    regular = [s for s in metadata.segments if not any(
        f.startswith("backup-") for f in s.flags)]
    if len(metadata.segments) != 1:
        reasons.append(f"{len(metadata.segments)} data segments (one is supported)")
    first = regular[0]
    if first.type != "crypt":
        reasons.append(f"segment {first.id} has type {first.type[:32]!r}, not crypt")
        return reasons, None
    if first.integrity:
        reasons.append(f"segment {first.id} has an integrity section")
    if first.offset == 0:
        reasons.append("detached header: the image holds no payload")
    try:
        spec = CipherSpec.parse(first.cipher)
        spec.check_key_size(key_bytes())
    except UnsupportedError as err:
        reasons.append(str(err))
    if first.sector_size not in SECTOR_SIZES:
        reasons.append(f"sector size {first.sector_size} is not supported")
    return reasons, first


def describe(s: Segment) -> dict[str, Any]:
    return {"segment": s.id, "type": s.type, "offset": s.offset,
            "size": "dynamic" if s.size is None else s.size,
            "sector_size": s.sector_size, "cipher": s.cipher, "iv_tweak": s.iv_tweak,
            "integrity": s.integrity, "flags": list(s.flags)}
