"""The parameters of a key derivation, as a LUKS keyslot or digest names them: leaf types.

:mod:`imgcrypt.crypto.kdf` runs them and :mod:`imgcrypt.crypto.cost` prices them; both, and the
LUKS formats, import them from here, which imports nothing from imgcrypt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The KDF names LUKS2 keyslots (and cryptsetup's --pbkdf) use; LUKS1 has PBKDF2 only.
PBKDF2 = "pbkdf2"
ARGON2I = "argon2i"
ARGON2ID = "argon2id"
KDF_NAMES = (ARGON2ID, ARGON2I, PBKDF2)


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
    variant: str  # ARGON2I or ARGON2ID
    time: int
    memory_kib: int
    parallel: int
    salt: bytes = field(repr=False)

    @property
    def name(self) -> str:
        return self.variant


#: A keyslot's or digest's key derivation: PBKDF2 or Argon2.
Kdf = Pbkdf2 | Argon2
