"""Keyslot cryptography both LUKS versions share: seal and open the master key, and its digest.

A keyslot keeps the master key AF-split into ``stripes`` blocks (:mod:`imgcrypt.crypto.af`),
encrypted under a key derived from the passphrase, as 512-byte sectors whose IVs restart at 0
whatever the data's sector size. The master key is recognised by a PBKDF2 digest. LUKS1 and
LUKS2 differ only in where these parameters are kept, so each format describes its keyslots as
:class:`SlotMaterial` and its digest as :class:`MasterKeyDigest`, and this module does the rest.

Every KDF an unlock may run is checked against the limits (each one, their sum, their cost)
before any of them is computed: parameters come from whoever made the image.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from imgcrypt.crypto import af
from imgcrypt.crypto.cost import check_unlock_cost
from imgcrypt.crypto.kdf import (
    DEFAULT_LIMITS,
    Kdf,
    KdfLimits,
    Pbkdf2,
    check_limits,
    check_total,
    derive,
)
from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
from imgcrypt.errors import WrongPassphraseError
from imgcrypt.luks.base import SECTOR

STRIPES = 4000  # what cryptsetup writes, and all LUKS1 accepts
SALT_SIZE = 32  # keyslot and digest salts, in both versions
KEYSLOT_ALIGN = 4096  # cryptsetup allots keyslot areas in 4 KiB units, in both versions


def material_size(key_size: int, stripes: int) -> int:
    """Bytes of AF material as stored: ``key_size * stripes`` rounded up to whole sectors."""
    return -(-key_size * stripes // SECTOR) * SECTOR


def area_size(key_size: int, stripes: int = STRIPES) -> int:
    """Bytes of keyslot area cryptsetup allots one keyslot: its material in 4 KiB units."""
    return -(-key_size * stripes // KEYSLOT_ALIGN) * KEYSLOT_ALIGN


@dataclass(frozen=True)
class SlotMaterial:
    """Where one keyslot keeps the master key and how to open it."""

    id: int
    kdf: Kdf
    cipher: CipherSpec  # the cipher of the keyslot area
    area_key_size: int  # bytes the KDF derives: the key of the keyslot area
    key_size: int  # bytes of the master key
    stripes: int
    af_hash: str
    offset: int  # bytes from the start of the region

    @property
    def material_size(self) -> int:
        return material_size(self.key_size, self.stripes)


@dataclass(frozen=True)
class MasterKeyDigest:
    """The PBKDF2 digest that tells the right master key from a wrong one."""

    kdf: Pbkdf2
    value: bytes = field(repr=False)

    @classmethod
    def of(cls, master_key: bytes, hash_name: str, iterations: int, size: int) -> MasterKeyDigest:
        """A new digest of ``size`` bytes with a fresh salt."""
        kdf = Pbkdf2(hash_name, iterations, os.urandom(SALT_SIZE))
        return cls(kdf, derive(kdf, master_key, size))

    def matches(self, master_key: bytes, limits: KdfLimits = DEFAULT_LIMITS) -> bool:
        got = derive(self.kdf, master_key, len(self.value), limits)
        return hmac.compare_digest(got, self.value)


def check_budget(kdfs: Sequence[tuple[Kdf, int]], digest: MasterKeyDigest,
                 limits: KdfLimits = DEFAULT_LIMITS) -> None:
    """Refuse an unlock that would try ``kdfs`` (KDF, derived length), each followed by a
    digest check, if any of them, or all of them together, exceed ``limits``."""
    for kdf, length in kdfs:
        check_limits(kdf, length, limits)
    check_limits(digest.kdf, len(digest.value), limits)
    # Each candidate that fails costs its KDF and one digest check.
    check_total([k for kdf, _ in kdfs for k in (kdf, digest.kdf)], limits)
    check_unlock_cost([pair for kdf_length in kdfs
                       for pair in (kdf_length, (digest.kdf, len(digest.value)))],
                      limits.max_unlock_cost)


def open_slot(region: bytes, slot: SlotMaterial, passphrase: bytes,
              limits: KdfLimits = DEFAULT_LIMITS) -> bytes:
    """The master key candidate ``passphrase`` yields from ``slot``; not yet checked."""
    derived = derive(slot.kdf, passphrase, slot.area_key_size, limits)
    encrypted = region[slot.offset : slot.offset + slot.material_size]
    material = SectorCipher(slot.cipher, derived).decrypt(encrypted, 0)
    return af.merge(material, slot.key_size, slot.stripes, slot.af_hash)


def open_first(region: bytes, slots: Sequence[SlotMaterial], digest: MasterKeyDigest,
               passphrase: bytes, limits: KdfLimits = DEFAULT_LIMITS) -> tuple[int, bytes]:
    """(slot id, master key) from the first of ``slots`` that ``passphrase`` opens.

    The caller has checked the budget (:func:`check_budget`) for exactly these slots.
    """
    for slot in slots:
        candidate = open_slot(region, slot, passphrase, limits)
        if digest.matches(candidate, limits):
            return slot.id, candidate
    raise WrongPassphraseError("no keyslot opens with this passphrase")


def seal(cipher: CipherSpec, master_key: bytes, passphrase: bytes, kdf: Kdf, af_hash: str,
         stripes: int = STRIPES) -> bytes:
    """AF-split ``master_key`` and encrypt it, as 512-byte sectors from IV 0, under the key
    derived from ``passphrase`` (as long as the master key)."""
    derived = derive(kdf, passphrase, len(master_key))
    material = af.split(master_key, stripes, af_hash)
    padded = material + bytes(-len(material) % SECTOR)
    return SectorCipher(cipher, derived).encrypt(padded, 0)
