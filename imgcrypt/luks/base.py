"""What every LUKS module builds on: leaf types; this module imports nothing from imgcrypt.luks.

The magic both versions start with, a rewrite of the header region (what a keyslot change
returns to the caller who writes it), a data segment (LUKS2 declares them in its JSON;
LUKS1 has one implicit segment from the payload offset to the end of the image), and the
parameters of a keyslot's KDF (:mod:`imgcrypt.luks.kdf` runs them, :mod:`imgcrypt.luks.cost`
prices them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAGIC = b"LUKS\xba\xbe"  # LUKS1, and the LUKS2 primary copy
MAGIC_SECONDARY = b"SKUL\xba\xbe"  # the LUKS2 secondary copy
PAYLOAD_ALIGN = 1 << 20  # where cryptsetup puts the payload by default, in both versions
# The 512-byte unit LUKS1 offsets, IVs (whatever the data sector size), keyslot material and a
# loop device's size all count in.
SECTOR = 512
# The KDF names LUKS2 keyslots (and cryptsetup's --pbkdf) use; LUKS1 has PBKDF2 only.
PBKDF2 = "pbkdf2"
ARGON2I = "argon2i"
ARGON2ID = "argon2id"
KDF_NAMES = (ARGON2ID, ARGON2I, PBKDF2)


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


@dataclass(frozen=True)
class Pbkdf2:
    hash: str
    iterations: int
    salt: bytes = field(repr=False)

    @property
    def name(self) -> str:
        return PBKDF2


@dataclass(frozen=True)
class Argon2:
    variant: str  # "argon2i" or "argon2id"
    time: int
    memory_kib: int
    parallel: int
    salt: bytes = field(repr=False)

    @property
    def name(self) -> str:
        return self.variant


Kdf = Pbkdf2 | Argon2
