"""LUKS1: the 592-byte header, its eight keyslots, and keyslot cryptography.

Functions here take and return bytes. ``region`` always means the image's leading bytes that
hold the header and every keyslot area (:attr:`Luks1Header.region_size` of them); the payload
starts at :attr:`Luks1Header.payload_offset` and is never touched by keyslot operations.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from imgcrypt.crypto import af, backend
from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Kdf, KdfLimits, Pbkdf2
from imgcrypt.crypto.kdfparams import PBKDF2
from imgcrypt.crypto.sectors import CipherSpec
from imgcrypt.errors import (
    FormatError,
    FormatFault,
    UnsupportedError,
    UsageError,
    WrongPassphraseError,
)
from imgcrypt.luks import keyslot
from imgcrypt.luks.base import MAGIC, PAYLOAD_ALIGN, RegionUpdate, Segment
from imgcrypt.luks.keyslot import MasterKeyDigest, SlotMaterial
from imgcrypt.luks.layout import Kind, declare, flag, raw, text, uint_be
from imgcrypt.luks.luks1 import rules as luks1_rules

SECTOR = luks1_rules.SECTOR
NUM_KEYSLOTS = 8
STRIPES = keyslot.STRIPES
DIGEST_SIZE = 20
SALT_SIZE = keyslot.SALT_SIZE
KEYSLOT_ACTIVE = 0x00AC71F3
KEYSLOT_INACTIVE = 0x0000DEAD
KEYSLOT_ALIGN = keyslot.KEYSLOT_ALIGN
# No legitimate LUKS1 image keeps keyslots beyond a few MiB; a hostile header may claim TiB.
MAX_REGION = 64 << 20



# The on-disk structures, each declared once as its record type (see imgcrypt.luks.layout).
@dataclass(frozen=True)
class Keyslot:
    # cryptsetup treats any state but "active" as a keyslot that cannot be used.
    active: Annotated[bool, flag(4, on=KEYSLOT_ACTIVE, off=KEYSLOT_INACTIVE)]
    iterations: Annotated[int, uint_be(4)]
    salt: Annotated[bytes, raw(SALT_SIZE)] = field(repr=False)
    key_material_offset: Annotated[int, uint_be(4)]  # sectors
    stripes: Annotated[int, uint_be(4)]

    def material_size(self, key_bytes: int) -> int:
        """Bytes of AF material, rounded up to whole sectors as it is stored."""
        return keyslot.material_size(key_bytes, self.stripes)


KEYSLOT_LAYOUT = declare(Keyslot, "LUKS1 keyslot")  # 48 bytes


@dataclass(frozen=True)
class Luks1Header:
    cipher_name: Annotated[str, text(32)]
    cipher_mode: Annotated[str, text(32)]
    hash_spec: Annotated[str, text(32)]
    payload_offset_sectors: Annotated[int, uint_be(4, name="payload_offset")]
    key_bytes: Annotated[int, uint_be(4)]
    mk_digest: Annotated[bytes, raw(DIGEST_SIZE)] = field(repr=False)
    mk_digest_salt: Annotated[bytes, raw(SALT_SIZE)] = field(repr=False)
    mk_digest_iter: Annotated[int, uint_be(4)]
    uuid: Annotated[str, text(40)]
    keyslots: tuple[Keyslot, ...]  # stored after the header, as KEYSLOT_LAYOUT each

    version = 1
    sector_size = SECTOR
    iv_tweak = 0
    payload_size: int | None = None  # LUKS1 payloads always run to the end of the image

    # -- bytes <-> object --------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> Luks1Header:
        """Parse and validate the 592-byte header at the start of ``data``."""
        if len(data) < 6 or data[:6] != MAGIC:
            raise FormatError("not a LUKS image (bad magic)", reason=FormatFault.BAD_MAGIC)
        if len(data) < HEADER_SIZE:
            raise FormatError(f"LUKS1 header truncated: {len(data)} of {HEADER_SIZE} bytes",
                              reason=FormatFault.TRUNCATED)
        slots = tuple(
            KEYSLOT_LAYOUT.unpack_record(Keyslot, data,
                                         HEADER_LAYOUT.size + i * KEYSLOT_LAYOUT.size)
            for i in range(NUM_KEYSLOTS)
        )
        header = HEADER_LAYOUT.unpack_record(cls, data, keyslots=slots)
        version = int.from_bytes(data[6:8], "big")
        if version != 1:
            raise UnsupportedError(f"LUKS version {version} is not LUKS1")
        header.validate()
        return header

    def pack(self) -> bytes:
        return HEADER_LAYOUT.pack_record(self, magic=MAGIC, version=1) + b"".join(
            KEYSLOT_LAYOUT.pack_record(slot) for slot in self.keyslots)

    def validate(self) -> None:
        """cryptsetup's rules (:mod:`imgcrypt.luks.luks1.rules`), then imgcrypt's own bound."""
        luks1_rules.check(self)
        if self.region_size > MAX_REGION and self.payload_offset_sectors:
            raise FormatError(f"LUKS1 keyslots reach beyond {MAX_REGION} bytes",
                              reason=FormatFault.LIMIT_EXCEEDED)

    def unsupported(self) -> tuple[str, ...]:
        """Why imgcrypt cannot open or decrypt this valid header; empty if it can."""
        reasons = []
        try:
            self.cipher.check_key_size(self.key_bytes)
        except UnsupportedError as err:
            reasons.append(str(err))
        if not backend.supports(self.hash_spec):
            reasons.append(f"hash {self.hash_spec[:32]!r} is not implemented")
        if self.payload_offset_sectors == 0:
            reasons.append("detached header: the image holds no payload")
        return tuple(reasons)

    def cryptsetup_refusal(self) -> str | None:
        """Why cryptsetup refuses this header, which qemu and imgcrypt open; None if it loads
        it (:func:`imgcrypt.luks.luks1.rules.cryptsetup_refusal`)."""
        refusal = luks1_rules.cryptsetup_refusal(self)
        return str(refusal) if refusal else None

    def check_decryptable(self) -> None:
        reasons = self.unsupported()
        if reasons:
            raise UnsupportedError("cannot decrypt this image: " + "; ".join(reasons))

    # -- derived facts -----------------------------------------------------------------------

    @property
    def cipher(self) -> CipherSpec:
        return CipherSpec.of(self.cipher_name, self.cipher_mode)

    @property
    def payload_offset(self) -> int:
        return self.payload_offset_sectors * SECTOR

    @property
    def header_size(self) -> int:
        """Bytes of the header and its keyslot table (592)."""
        return HEADER_SIZE

    @property
    def region_size(self) -> int:
        """Bytes from the start of the image that hold the header and every keyslot area."""
        return max(HEADER_SIZE, luks1_rules.end_sectors(self) * SECTOR)

    @property
    def unlock_extent(self) -> int:
        """Bytes from the image's start that an unlock may read: the whole region (the
        protocol's answer; LUKS1 keyslot areas are fixed by the header)."""
        return self.region_size

    @property
    def requirements(self) -> tuple[str, ...]:
        return ()  # LUKS1 has no requirement flags

    @property
    def af_hash(self) -> str:
        """LUKS1 keyslots and the digest all use the header's one hash."""
        return self.hash_spec

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The one implicit segment: the payload, to the end of the image."""
        return (Segment(0, "crypt", self.payload_offset, None, 0,
                        f"{self.cipher_name}-{self.cipher_mode}", SECTOR),)

    def active_keyslots(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.keyslots) if s.active)

    def describe(self) -> dict[str, Any]:
        refusal = self.cryptsetup_refusal()
        return {
            "format": "luks1",
            "version": 1,
            "cipher": f"{self.cipher_name}-{self.cipher_mode}",
            "key_size": self.key_bytes * 8,
            "hash": self.hash_spec,
            "sector_size": SECTOR,
            "payload_offset": self.payload_offset,
            "uuid": self.uuid,
            "mk_digest_iterations": self.mk_digest_iter,
            "decryptable": not self.unsupported(),
            "unsupported": list(self.unsupported()),
            **({"cryptsetup_refuses": refusal} if refusal else {}),
            "keyslots": [
                {"slot": i, "kdf": PBKDF2, "hash": self.hash_spec,
                 "iterations": s.iterations, "stripes": s.stripes,
                 "key_material_offset": s.key_material_offset * SECTOR}
                for i, s in enumerate(self.keyslots) if s.active
            ],
        }

    # -- keyslot cryptography ----------------------------------------------------------------

    def _slot_kdf(self, slot: Keyslot) -> Pbkdf2:
        return Pbkdf2(self.hash_spec, slot.iterations, slot.salt)

    def _digest(self) -> MasterKeyDigest:
        return MasterKeyDigest(Pbkdf2(self.hash_spec, self.mk_digest_iter, self.mk_digest_salt),
                               self.mk_digest)

    def _material(self, index: int) -> SlotMaterial:
        ks = self.keyslots[index]
        return SlotMaterial(index, self._slot_kdf(ks), self.cipher, self.key_bytes,
                            self.key_bytes, ks.stripes, self.hash_spec,
                            ks.key_material_offset * SECTOR)

    def verify_master_key(self, master_key: bytes, limits: KdfLimits = DEFAULT_LIMITS) -> bool:
        return self._digest().matches(master_key, limits)

    def unlock(self, region: bytes, passphrase: bytes, limits: KdfLimits = DEFAULT_LIMITS,
               slot: int | None = None) -> tuple[int, bytes]:
        """Try each active keyslot (or only ``slot``); return (slot, master key)."""
        self.check_decryptable()
        if len(region) < self.region_size:
            raise FormatError("image ends inside the LUKS1 keyslot area",
                              reason=FormatFault.TRUNCATED)
        if slot is not None and (not 0 <= slot < NUM_KEYSLOTS or not self.keyslots[slot].active):
            raise UsageError(f"keyslot {slot} is not active")
        candidates = self.active_keyslots() if slot is None else (slot,)
        slots = [self._material(i) for i in candidates]
        digest = self._digest()
        # Check every candidate's parameters before spending time on any of them.
        keyslot.check_budget([(s.kdf, s.area_key_size) for s in slots], digest, limits)
        return keyslot.open_first(region, slots, digest, passphrase, limits)

    def add_keyslot(self, region: bytes, master_key: bytes, passphrase: bytes, kdf: Kdf,
                    slot: int | None = None) -> RegionUpdate:
        """``passphrase`` in a free keyslot (or ``slot``), with the iterations of ``kdf``.

        LUKS1 keyslots are PBKDF2 with the header's hash; the new material is written before
        the header that points at it.
        """
        if not isinstance(kdf, Pbkdf2):
            raise UsageError("LUKS1 keyslots use pbkdf2")
        if not self.verify_master_key(master_key):
            raise WrongPassphraseError("master key does not match this header")
        if slot is None:
            free = [i for i, s in enumerate(self.keyslots) if not s.active]
            if not free:
                raise UsageError("all 8 LUKS1 keyslots are in use")
            slot = free[0]
        if not 0 <= slot < NUM_KEYSLOTS or self.keyslots[slot].active:
            raise UsageError(f"keyslot {slot} is not free")
        old = self.keyslots[slot]
        salt = kdf.salt if len(kdf.salt) == SALT_SIZE else os.urandom(SALT_SIZE)
        new = Keyslot(True, kdf.iterations, salt, old.key_material_offset, STRIPES)
        start = new.key_material_offset * SECTOR
        end = start + new.material_size(self.key_bytes)
        others = [(s.key_material_offset * SECTOR,
                   s.key_material_offset * SECTOR + s.material_size(self.key_bytes))
                  for s in self.keyslots if s.active]
        if start < HEADER_SIZE or end > self.payload_offset or any(
            start < b and a < end for a, b in others
        ):
            raise FormatError(f"keyslot {slot} has no room of its own in this header")
        material = keyslot.seal(self.cipher, master_key, passphrase, self._slot_kdf(new),
                                self.hash_spec, STRIPES)
        header = replace(self, keyslots=_set(self.keyslots, slot, new))
        return RegionUpdate(_rewrite(region, header, [(start, material)]),
                            ((start, start + len(material)), (0, HEADER_SIZE)), slot)

    def remove_keyslot(self, region: bytes, slot: int) -> RegionUpdate:
        """``slot`` disabled in the header first, then its key material overwritten."""
        if not 0 <= slot < NUM_KEYSLOTS or not self.keyslots[slot].active:
            raise UsageError(f"keyslot {slot} is not active")
        old = self.keyslots[slot]
        dead = Keyslot(False, 0, bytes(SALT_SIZE), old.key_material_offset, old.stripes)
        header = replace(self, keyslots=_set(self.keyslots, slot, dead))
        start = old.key_material_offset * SECTOR
        wipe = os.urandom(old.material_size(self.key_bytes))
        return RegionUpdate(_rewrite(region, header, [(start, wipe)]),
                            ((0, HEADER_SIZE), (start, start + len(wipe))), slot)


HEADER_LAYOUT = declare(Luks1Header, "LUKS1 header",
                        head=(("magic", 6, Kind.RAW), ("version", 2, Kind.UINT_BE)))  # 208 bytes
HEADER_SIZE = HEADER_LAYOUT.size + NUM_KEYSLOTS * KEYSLOT_LAYOUT.size  # 592


def _set(slots: tuple[Keyslot, ...], index: int, slot: Keyslot) -> tuple[Keyslot, ...]:
    return (*slots[:index], slot, *slots[index + 1 :])


def _rewrite(region: bytes, header: Luks1Header, patches: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(region)
    for start, data in patches:
        if len(out) < start + len(data):
            out.extend(bytes(start + len(data) - len(out)))
        out[start : start + len(data)] = data
    out[:HEADER_SIZE] = header.pack()
    return bytes(out)


def keyslot_area_sectors(key_bytes: int, stripes: int = STRIPES) -> int:
    return keyslot.area_size(key_bytes, stripes) // SECTOR


def format_region(master_key: bytes, passphrase: bytes, *, cipher: CipherSpec, hash_spec: str,
                  iterations: int, digest_iterations: int,
                  payload_align: int = PAYLOAD_ALIGN, uuid: str | None = None,
                  slot: int = 0) -> bytes:
    """A complete new LUKS1 region (header + keyslot areas, zero-padded to the payload), the
    passphrase in keyslot ``slot``."""
    cipher.check_key_size(len(master_key))
    af.check_hash(hash_spec)
    if payload_align % SECTOR or payload_align <= 0:
        raise UsageError("payload alignment must be a positive multiple of 512")
    key_bytes = len(master_key)
    area = keyslot_area_sectors(key_bytes)
    first = KEYSLOT_ALIGN // SECTOR
    slots = tuple(
        Keyslot(False, 0, bytes(SALT_SIZE), first + i * area, STRIPES) for i in range(NUM_KEYSLOTS)
    )
    end = (first + NUM_KEYSLOTS * area) * SECTOR
    payload_offset = -(-end // payload_align) * payload_align
    digest = MasterKeyDigest.of(master_key, hash_spec, digest_iterations, DIGEST_SIZE)
    header = Luks1Header(
        cipher_name=cipher.name, cipher_mode=cipher.mode, hash_spec=hash_spec,
        payload_offset_sectors=payload_offset // SECTOR, key_bytes=key_bytes,
        mk_digest=digest.value, mk_digest_salt=digest.kdf.salt, mk_digest_iter=digest_iterations,
        uuid=uuid or str(uuidlib.uuid4()), keyslots=slots,
    )
    refusal = header.cryptsetup_refusal()
    if refusal:  # imgcrypt reads such images (qemu writes them) but never writes one
        raise UsageError(f"cryptsetup would refuse this image: {refusal}")
    kdf = Pbkdf2(hash_spec, iterations, os.urandom(SALT_SIZE))
    return header.add_keyslot(bytes(payload_offset), master_key, passphrase, kdf, slot).region
