"""What every LUKS module builds on: leaf types; this module imports nothing from imgcrypt.luks.

The magic both versions start with, a rewrite of the header region (what a keyslot change
returns to the caller who writes it), a data segment (LUKS2 declares them in its JSON;
LUKS1 has one implicit segment from the payload offset to the end of the image). The KDF
parameters a keyslot names are crypto leaf types (:mod:`imgcrypt.crypto.kdfparams`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAGIC = b"LUKS\xba\xbe"  # LUKS1, and the LUKS2 primary copy
MAGIC_SECONDARY = b"SKUL\xba\xbe"  # the LUKS2 secondary copy
PAYLOAD_ALIGN = 1 << 20  # where cryptsetup puts the payload by default, in both versions
# The 512-byte unit LUKS1 offsets, IVs (whatever the data sector size), keyslot material and a
# loop device's size all count in.
SECTOR = 512


@dataclass(frozen=True)
class RegionUpdate:
    """A rewritten header region and the order in which to put its changed ranges on disk."""

    region: bytes = field(repr=False)
    steps: tuple[tuple[int, int], ...]
    slot: int | None = None


@dataclass(frozen=True)
class Segment:
    id: int
    type: str
    offset: int
    size: int | None  # None: "dynamic", to the end of the device
    iv_tweak: int = 0
    cipher: str = ""
    sector_size: int = SECTOR
    integrity: bool = False
    flags: tuple[str, ...] = ()
