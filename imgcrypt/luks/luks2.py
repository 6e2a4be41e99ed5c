"""LUKS2: both metadata copies, keyslot cryptography, the pbkdf2 digest, and formatting.

Bytes in, objects and bytes out, as for LUKS1 (see :mod:`imgcrypt.luks.luks1`). ``region`` is
the image's first :attr:`Luks2Header.region_size` bytes: both metadata copies and the keyslots
area. Binary headers live in :mod:`imgcrypt.luks.luks2_binary`, JSON validation in
:mod:`imgcrypt.luks.luks2_json`; this module ties them to the keys.

Every rewrite starts from the winning copy's JSON object, changes only what it must, and writes
both copies with ``seqid + 1``: primary first, then secondary, each its own step. While either is
being written the other holds a complete valid header, and the higher seqid wins on reading.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Any

from imgcrypt.errors import (
    FormatError,
    LimitExceededError,
    TruncatedError,
    UnsupportedError,
    UsageError,
    WrongPassphraseError,
)
from imgcrypt.luks import af, backend, keyslot, luks2_rules
from imgcrypt.luks.container import RegionUpdate
from imgcrypt.luks.kdf import (
    DEFAULT_LIMITS,
    Argon2,
    Kdf,
    KdfLimits,
    Pbkdf2,
    check_limits,
    pbkdf2_iterations_for,
)
from imgcrypt.luks.keyslot import MasterKeyDigest, SlotMaterial
from imgcrypt.luks.luks2_binary import (
    HDR_SIZES,
    MAGIC_PRIMARY,
    MAGIC_SECONDARY,
    SALT_SIZE,
    BinaryHeader,
    MetadataCopy,
    find_copies,
    needed_bytes,
    pack_copy,
    text,
    text_field,
)
from imgcrypt.luks.luks2_json import (
    MAX_KEY_SIZE,
    MAX_OBJECTS,
    MAX_STRIPES,
    SECTOR_SIZES,
    Digest,
    Keyslot,
    Metadata,
    Segment,
    check_area,
    dump_json,
    load_json,
    validate,
)
from imgcrypt.luks.rules import HeaderRuleError
from imgcrypt.luks.sectors import CipherSpec
from imgcrypt.luks.signatures import foreign_signature

STRIPES = keyslot.STRIPES
KEYSLOT_SALT_SIZE = keyslot.SALT_SIZE
AREA_ALIGN = 4096
# cryptsetup's LUKS2_DEFAULT_HDR_SIZE: metadata plus keyslots fill the first 16 MiB by default.
DEFAULT_REGION = 16 << 20
DIGEST_MS = 100
MAX_SEQID = (1 << 64) - 1
_PRIORITY_NAMES = {0: "ignore", 1: "normal", 2: "prefer"}


def bytes_to_parse(prefix: bytes) -> int:
    """How many leading bytes :meth:`Luks2Header.parse` needs, judged from the first 4096."""
    return needed_bytes(prefix)


@dataclass(frozen=True)
class Luks2Header:
    """A validated LUKS2 header: the winning copy, its JSON, and which copies were intact."""

    binary: BinaryHeader
    json_text: str = field(repr=False)
    metadata: Metadata = field(repr=False)
    copies_valid: tuple[bool, bool] = (True, True)
    # Each copy keeps its own salt across rewrites; a damaged copy gets a fresh one.
    salts: tuple[bytes, bytes] = field(default=(b"", b""), repr=False)

    version = 2

    # -- bytes -> object ---------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes, limits: KdfLimits = DEFAULT_LIMITS, *,
              repairing: bool = False, image_size: int | None = None) -> Luks2Header:
        """Validate both copies by cryptsetup's rules and pick the winner.

        When one copy is damaged or stale, cryptsetup recovers it from the other unless a
        foreign signature sits on the image; so the image is refused then, except when
        ``repairing`` (an explicit repair, as ``cryptsetup repair``). KDF parameters are
        checked against ``limits`` only when a keyslot is opened: a header with hostile
        parameters is still valid to cryptsetup and can be inspected.
        """
        del limits
        copies = find_copies(data, check_area)
        winner = copies.winner()
        if copies.need_recovery() and not repairing:
            found = foreign_signature(data, image_size)
            if found:
                raise HeaderRuleError(luks2_rules.FOREIGN_SIGNATURE, found)
        metadata = validate(load_json(winner.json_text), winner.binary.hdr_size)
        primary, secondary = copies.primary, copies.secondary
        return cls(
            binary=winner.binary,
            json_text=winner.json_text,
            metadata=metadata,
            # A stale copy (lower seqid) counts as damaged: cryptsetup would rewrite it.
            copies_valid=(_current(primary, winner), _current(secondary, winner)),
            salts=(primary.binary.salt if isinstance(primary, MetadataCopy) else b"",
                   secondary.binary.salt if isinstance(secondary, MetadataCopy) else b""),
        )

    def check_kdfs(self, limits: KdfLimits = DEFAULT_LIMITS) -> None:
        """Refuse any keyslot or digest KDF above ``limits``; no KDF work happens here."""
        self.check_openable()
        for ks in self._segment_keyslots():
            if ks.kdf is None:
                raise UnsupportedError(f"LUKS2 keyslot {ks.id}: unsupported KDF "
                                       f"{ks.kdf_type[:32]!r}")
            check_limits(ks.kdf, ks.area_key_size, limits)
        d = self._segment_digest()
        check_limits(Pbkdf2(d.hash, d.iterations, d.salt), len(d.digest), limits)

    # -- what imgcrypt can decrypt -----------------------------------------------------------

    def unsupported(self) -> tuple[str, ...]:
        """Why imgcrypt cannot open or decrypt this valid header; empty if it can.

        Anything but one plain crypt segment is refused: integrity sections, several
        segments (a linear one before the crypt one, a re-encryption in progress), unknown
        segment types; also ciphers, sector sizes, hashes and digests imgcrypt lacks.
        """
        reasons = [f"mandatory requirement {r[:64]!r} is not implemented"
                   for r in self.metadata.unknown_requirements()]
        regular = [s for s in self.metadata.segments if not any(
            f.startswith("backup-") for f in s.flags)]
        if len(self.metadata.segments) != 1:
            reasons.append(f"{len(self.metadata.segments)} data segments (one is supported)")
        first = regular[0]
        if first.type != "crypt":
            reasons.append(f"segment {first.id} has type {first.type[:32]!r}, not crypt")
            return tuple(reasons)
        if first.integrity:
            reasons.append(f"segment {first.id} has an integrity section")
        if first.offset == 0:
            reasons.append("detached header: the image holds no payload")
        try:
            spec = CipherSpec.parse(first.cipher)
            spec.check_key_size(self.key_bytes)
        except UnsupportedError as err:
            reasons.append(str(err))
        if first.sector_size not in SECTOR_SIZES:
            reasons.append(f"sector size {first.sector_size} is not supported")
        reasons.extend(self._digest_problems(first))
        return tuple(reasons)

    def _digest_problems(self, seg: Segment) -> list[str]:
        digests = [d for d in self.metadata.digests if seg.id in d.segments]
        if len(digests) != 1 or digests[0].type != "pbkdf2":
            return [f"segment {seg.id} needs exactly one pbkdf2 digest"]
        d = digests[0]
        if not backend.supports(d.hash):
            return [f"digest hash {d.hash[:32]!r} is not implemented"]
        # cryptsetup's digest rule: 20 bytes (as LUKS1) or the hash's output length.
        if len(d.digest) not in (20, backend.hash_size(d.hash)):
            return [f"digest {d.id} is {len(d.digest)} bytes, not 20 or the hash length"]
        if len(d.salt) != KEYSLOT_SALT_SIZE or d.iterations < 1:
            return [f"digest {d.id} has a bad salt or iteration count"]
        return []

    def check_openable(self) -> None:
        """Refuse to open keyslots when segment 0 is not crypt or its digest is unusable."""
        first = self.metadata.segments[0]
        reasons = ([f"segment {first.id} has type {first.type[:32]!r}, not crypt"]
                   if first.type != "crypt" else self._digest_problems(first))
        if reasons:
            raise UnsupportedError("cannot open this image: " + "; ".join(reasons))

    def check_decryptable(self) -> None:
        reasons = self.unsupported()
        if reasons:
            raise UnsupportedError("cannot decrypt this image: " + "; ".join(reasons))

    # -- derived facts -----------------------------------------------------------------------

    def _crypt_segment(self) -> Segment:
        seg = self.metadata.segments[0]
        if seg.type != "crypt":
            raise UnsupportedError(f"LUKS2 segment {seg.id} has type {seg.type[:32]!r}")
        return seg

    def _segment_digest(self) -> Digest:
        seg = self._crypt_segment()
        for d in self.metadata.digests:
            if seg.id in d.segments:
                if d.type != "pbkdf2":
                    raise UnsupportedError(f"LUKS2 digest type {d.type[:32]!r}")
                return d
        raise FormatError(f"no LUKS2 digest covers segment {seg.id}")

    def _keyslot(self, slot: int) -> Keyslot | None:
        return next((ks for ks in self.metadata.keyslots if ks.id == slot), None)

    def _segment_keyslots(self) -> tuple[Keyslot, ...]:
        ids = self._segment_digest().keyslots
        return tuple(ks for ks in self.metadata.keyslots if ks.id in ids and ks.type == "luks2")

    @property
    def hdr_size(self) -> int:
        return self.binary.hdr_size

    @property
    def seqid(self) -> int:
        return self.binary.seqid

    @property
    def cipher(self) -> CipherSpec:
        return CipherSpec.parse(self._crypt_segment().cipher)

    @property
    def key_bytes(self) -> int:
        """The volume key size; 0 if no keyslot is left to tell it."""
        slots = self._segment_keyslots()
        return slots[0].key_size if slots else 0

    @property
    def sector_size(self) -> int:
        return self._crypt_segment().sector_size

    @property
    def payload_offset(self) -> int:
        return self._crypt_segment().offset

    @property
    def payload_size(self) -> int | None:
        return self._crypt_segment().size

    @property
    def iv_tweak(self) -> int:
        return self._crypt_segment().iv_tweak

    @property
    def uuid(self) -> str:
        return text(self.binary.uuid)

    @property
    def label(self) -> str:
        return text(self.binary.label)

    @property
    def subsystem(self) -> str:
        return text(self.binary.subsystem)

    @property
    def region_size(self) -> int:
        """Both metadata copies and the whole keyslots area."""
        return 2 * self.hdr_size + self.metadata.keyslots_size

    def active_keyslots(self) -> tuple[int, ...]:
        return tuple(ks.id for ks in self.metadata.keyslots)

    def describe(self) -> dict[str, Any]:
        seg = self.metadata.segments[0]
        obj = load_json(self.json_text)
        reasons = self.unsupported()
        try:
            key_bytes = self.key_bytes
        except FormatError:
            key_bytes = 0
        return {
            "format": "luks2",
            "version": 2,
            "cipher": seg.cipher,
            "key_size": key_bytes * 8,
            "sector_size": seg.sector_size,
            "payload_offset": seg.offset,
            "payload_size": "dynamic" if seg.size is None else seg.size,
            "iv_tweak": seg.iv_tweak,
            "uuid": self.uuid,
            "label": self.label,
            "subsystem": self.subsystem,
            "seqid": self.seqid,
            "metadata_size": self.hdr_size,
            "keyslots_size": self.metadata.keyslots_size,
            "decryptable": not reasons,
            "unsupported": list(reasons),
            "keyslots": [_describe_keyslot(ks) for ks in self.metadata.keyslots],
            "segments": [
                {"segment": s.id, "type": s.type, "offset": s.offset,
                 "size": "dynamic" if s.size is None else s.size,
                 "sector_size": s.sector_size, "cipher": s.cipher, "iv_tweak": s.iv_tweak,
                 "integrity": s.integrity, "flags": list(s.flags)}
                for s in self.metadata.segments
            ],
            "digests": [
                {"digest": d.id, "type": d.type, "hash": d.hash, "iterations": d.iterations,
                 "keyslots": list(d.keyslots), "segments": list(d.segments)}
                for d in self.metadata.digests
            ],
            "tokens": obj["tokens"],
            "flags": list(self.metadata.flags),
            "requirements": list(self.metadata.requirements),
            "header_copies": {
                "primary": "valid" if self.copies_valid[0] else "damaged",
                "secondary": "valid" if self.copies_valid[1] else "damaged",
            },
        }

    # -- keyslot cryptography ----------------------------------------------------------------

    def _digest(self) -> MasterKeyDigest:
        d = self._segment_digest()
        return MasterKeyDigest(Pbkdf2(d.hash, d.iterations, d.salt), d.digest)

    def verify_master_key(self, master_key: bytes, limits: KdfLimits = DEFAULT_LIMITS) -> bool:
        return self._digest().matches(master_key, limits)

    def unlock(self, region: bytes, passphrase: bytes, limits: KdfLimits = DEFAULT_LIMITS,
               slot: int | None = None) -> tuple[int, bytes]:
        """Try the segment's keyslots (or only ``slot``), preferred first; (slot, master key).

        Priority 0 keyslots are tried only when named; every candidate's KDF parameters are
        checked against ``limits`` before any of them is computed.
        """
        self.check_openable()
        if len(region) < self.region_size:
            raise TruncatedError("image ends inside the LUKS2 keyslots area")
        usable = self._segment_keyslots()
        if slot is not None:
            candidates = [ks for ks in usable if ks.id == slot]
            if not candidates:
                raise UsageError(f"keyslot {slot} is not an active keyslot of this image")
        else:
            candidates = sorted((ks for ks in usable if ks.priority != 0),
                                key=lambda ks: (ks.priority != 2, ks.id))
        self.check_kdfs(limits)
        digest = self._digest()
        keyslot.check_budget([(ks.kdf, ks.area_key_size) for ks in candidates
                              if ks.kdf is not None], digest, limits)
        slots = [_material(ks) for ks in candidates]
        return keyslot.open_first(region, slots, digest, passphrase, limits)

    def add_keyslot(self, region: bytes, master_key: bytes, passphrase: bytes, kdf: Kdf,
                    slot: int | None = None) -> RegionUpdate:
        """``passphrase`` in a free keyslot (or ``slot``): material first, then both headers."""
        self._check_writable()
        if not self.verify_master_key(master_key):
            raise WrongPassphraseError("master key does not match this header")
        return self._add(region, master_key, passphrase, kdf, slot)

    def _add(self, region: bytes, master_key: bytes, passphrase: bytes, kdf: Kdf,
             slot: int | None) -> RegionUpdate:
        used = {ks.id for ks in self.metadata.keyslots}
        if slot is None:
            free = [i for i in range(MAX_OBJECTS) if i not in used]
            if not free:
                raise UsageError(f"all {MAX_OBJECTS} LUKS2 keyslots are in use")
            slot = free[0]
        if not 0 <= slot < MAX_OBJECTS or slot in used:
            raise UsageError(f"keyslot {slot} is not free")
        cipher = self.cipher
        cipher.check_key_size(len(master_key))
        digest = self._segment_digest()
        area_size = _round_up(len(master_key) * STRIPES, AREA_ALIGN)
        offset = self._free_area(area_size)
        if len(kdf.salt) != KEYSLOT_SALT_SIZE:
            kdf = replace(kdf, salt=os.urandom(KEYSLOT_SALT_SIZE))
        af_hash = digest.hash
        material = keyslot.seal(cipher, master_key, passphrase, kdf, af_hash, STRIPES)

        obj = load_json(self.json_text)
        keyslots = obj["keyslots"]
        keyslots[str(slot)] = {
            "type": "luks2",
            "key_size": len(master_key),
            "af": {"type": "luks1", "stripes": STRIPES, "hash": af_hash},
            "area": {"type": "raw", "offset": str(offset), "size": str(area_size),
                     "encryption": str(cipher), "key_size": len(master_key)},
            "kdf": _kdf_json(kdf),
        }
        obj["keyslots"] = dict(sorted(keyslots.items(), key=lambda kv: int(kv[0])))
        obj["digests"][str(digest.id)]["keyslots"].append(str(slot))
        return self._write(region, obj, (offset, material), material_first=True, slot=slot)

    def remove_keyslot(self, region: bytes, slot: int) -> RegionUpdate:
        """``slot`` removed from both headers first, then its area overwritten."""
        self._check_writable()
        ks = self._keyslot(slot)
        if ks is None:
            raise UsageError(f"keyslot {slot} is not active")
        obj = load_json(self.json_text)
        del obj["keyslots"][str(slot)]
        # cryptsetup refuses references to keyslots that do not exist.
        for section in ("digests", "tokens"):
            for entry in obj[section].values():
                if isinstance(entry.get("keyslots"), list):
                    entry["keyslots"] = [k for k in entry["keyslots"] if k != str(slot)]
        if ks.area_offset is None or ks.area_size is None:
            return self._write(region, obj, None, material_first=False, slot=slot)
        wipe = (ks.area_offset, os.urandom(ks.area_size))
        return self._write(region, obj, wipe, material_first=False, slot=slot)

    # -- writing -----------------------------------------------------------------------------

    def _check_writable(self) -> None:
        unknown = self.metadata.unknown_requirements()
        if unknown:
            raise UnsupportedError(
                "refusing to modify this LUKS2 header: it has mandatory requirement(s) "
                f"imgcrypt does not implement: {', '.join(r[:64] for r in unknown)}"
            )

    def _free_area(self, size: int) -> int:
        """Lowest 4 KiB-aligned offset in the keyslots area with ``size`` bytes unused."""
        start, end = 2 * self.hdr_size, self.region_size
        taken = sorted(
            (ks.area_offset, ks.area_offset + ks.area_size)
            for ks in self.metadata.keyslots
            if ks.area_offset is not None and ks.area_size is not None
        )
        candidate = start
        for a, b in taken:
            if candidate + size <= a:
                break
            candidate = max(candidate, _round_up(b, AREA_ALIGN))
        if candidate + size > end:
            raise FormatError("no room left in the LUKS2 keyslots area for another keyslot")
        return candidate

    def _write(self, region: bytes, obj: dict[str, Any], patch: tuple[int, bytes] | None, *,
               material_first: bool, slot: int) -> RegionUpdate:
        if len(region) < self.region_size:
            raise TruncatedError("image ends inside the LUKS2 keyslots area")
        new = self.with_metadata(obj)
        out = bytearray(region)
        steps: list[tuple[int, int]] = []
        if patch is not None:
            start, data = patch
            out[start : start + len(data)] = data
            steps.append((start, start + len(data)))
        copies = new.pack_copies()
        out[: len(copies)] = copies
        headers = [(0, self.hdr_size), (self.hdr_size, 2 * self.hdr_size)]
        ordered = steps + headers if material_first else headers + steps
        return RegionUpdate(bytes(out), tuple(ordered), slot)

    def with_metadata(self, obj: dict[str, Any]) -> Luks2Header:
        """This header with new JSON (validated again) and the next seqid."""
        metadata = validate(obj, self.hdr_size)
        if self.binary.seqid >= MAX_SEQID:
            raise LimitExceededError("LUKS2 seqid is exhausted; this header cannot be rewritten")
        first, second = (s if len(s) == SALT_SIZE else os.urandom(SALT_SIZE) for s in self.salts)
        return replace(
            self, binary=replace(self.binary, seqid=self.binary.seqid + 1),
            json_text=dump_json(obj), metadata=metadata, copies_valid=(True, True),
            salts=(first, second),
        )

    def pack_copies(self) -> bytes:
        """Primary and secondary metadata copies, ``2 * hdr_size`` bytes."""
        primary = replace(self.binary, magic=MAGIC_PRIMARY, hdr_offset=0, salt=self.salts[0])
        secondary = replace(self.binary, magic=MAGIC_SECONDARY, hdr_offset=self.hdr_size,
                            salt=self.salts[1])
        return pack_copy(primary, self.json_text) + pack_copy(secondary, self.json_text)


def _material(ks: Keyslot) -> SlotMaterial:
    """Refuse a keyslot whose parameters imgcrypt cannot or will not compute, before any KDF;
    else where and how it keeps the master key."""
    if not 1 <= ks.key_size <= MAX_KEY_SIZE or not 1 <= ks.stripes <= MAX_STRIPES:
        raise LimitExceededError(f"LUKS2 keyslot {ks.id}: key size {ks.key_size} or "
                                 f"{ks.stripes} stripes out of range")
    if ks.area_size is None or ks.material_size > ks.area_size:
        raise FormatError(f"LUKS2 keyslot {ks.id} area is smaller than its key material")
    cipher = CipherSpec.parse(ks.area_cipher)
    cipher.check_key_size(ks.area_key_size)
    af.check_hash(ks.af_hash)
    assert ks.kdf is not None and ks.area_offset is not None
    return SlotMaterial(ks.id, ks.kdf, cipher, ks.area_key_size, ks.key_size, ks.stripes,
                        ks.af_hash, ks.area_offset)


def _current(copy: MetadataCopy | FormatError, winner: MetadataCopy) -> bool:
    return isinstance(copy, MetadataCopy) and copy.binary.seqid == winner.binary.seqid


def _describe_keyslot(ks: Keyslot) -> dict[str, Any]:
    out: dict[str, Any] = {"slot": ks.id, "type": ks.type,
                           "priority": _PRIORITY_NAMES[ks.priority]}
    if isinstance(ks.kdf, Pbkdf2):
        out.update(kdf="pbkdf2", hash=ks.kdf.hash, iterations=ks.kdf.iterations)
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


def _kdf_json(kdf: Kdf) -> dict[str, Any]:
    salt = base64.b64encode(kdf.salt).decode("ascii")
    if isinstance(kdf, Pbkdf2):
        return {"type": "pbkdf2", "hash": kdf.hash, "iterations": kdf.iterations, "salt": salt}
    return {"type": kdf.variant, "time": kdf.time, "memory": kdf.memory_kib,
            "cpus": kdf.parallel, "salt": salt}


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def format_region(master_key: bytes, passphrase: bytes, *, cipher: CipherSpec, kdf: Kdf,
                  sector_size: int = 512, digest_iterations: int | None = None,
                  uuid: str | None = None, label: str = "", metadata_size: int = 16384,
                  keyslots_size: int | None = None, payload_align: int = 1 << 20) -> bytes:
    """A complete LUKS2 region: both copies, keyslot 0, zero padding up to the payload.

    Segment 0 is a ``dynamic`` crypt segment with iv_tweak 0; the pbkdf2 digest uses the
    keyslot's hash for a pbkdf2 ``kdf`` and sha256 otherwise, as cryptsetup does.
    """
    cipher.check_key_size(len(master_key))
    if sector_size not in SECTOR_SIZES:
        raise UsageError(f"sector size must be one of {SECTOR_SIZES}")
    if metadata_size not in HDR_SIZES:
        raise UsageError("metadata size must be a power of two from 16 KiB to 4 MiB")
    if keyslots_size is None:
        keyslots_size = DEFAULT_REGION - 2 * metadata_size
    area = _round_up(len(master_key) * STRIPES, AREA_ALIGN)
    if keyslots_size % AREA_ALIGN or not area <= keyslots_size <= 128 << 20:
        raise UsageError(f"keyslots size must be a multiple of 4096 from {area} to 128 MiB")
    if payload_align <= 0 or payload_align % sector_size or payload_align % 512:
        raise UsageError("payload alignment must be a positive multiple of the sector size")
    if len(label.encode("utf-8")) > 47 or "\0" in label:
        raise UsageError("label must be at most 47 bytes of UTF-8 without NUL")
    try:
        uuid = str(uuidlib.UUID(uuid)) if uuid is not None else str(uuidlib.uuid4())
    except ValueError:
        raise UsageError("uuid is not a UUID") from None
    digest_hash = kdf.hash if isinstance(kdf, Pbkdf2) else "sha256"
    digest_len = hashlib.new(af.check_hash(digest_hash)).digest_size
    if digest_iterations is None:
        digest_iterations = pbkdf2_iterations_for(digest_hash, digest_len, DIGEST_MS)
    digest = MasterKeyDigest.of(master_key, digest_hash, digest_iterations, digest_len)
    payload_offset = _round_up(2 * metadata_size + keyslots_size, payload_align)

    b64 = base64.b64encode
    obj: dict[str, Any] = {
        "keyslots": {},
        "tokens": {},
        "segments": {"0": {
            "type": "crypt", "offset": str(payload_offset), "size": "dynamic",
            "iv_tweak": "0", "encryption": str(cipher), "sector_size": sector_size,
        }},
        "digests": {"0": {
            "type": "pbkdf2", "keyslots": [], "segments": ["0"], "hash": digest_hash,
            "iterations": digest_iterations, "salt": b64(digest.kdf.salt).decode("ascii"),
            "digest": b64(digest.value).decode("ascii"),
        }},
        "config": {"json_size": str(metadata_size - 4096), "keyslots_size": str(keyslots_size)},
    }
    binary = BinaryHeader(
        magic=MAGIC_PRIMARY, version=2, hdr_size=metadata_size, seqid=0,
        label=text_field(label, 48, "label"), checksum_alg=text_field("sha256", 32, "checksum"),
        salt=bytes(SALT_SIZE), uuid=text_field(uuid, 40, "uuid"),
        subsystem=bytes(48), hdr_offset=0, csum=bytes(64),
    )
    empty = Luks2Header(binary, dump_json(obj), validate(obj, metadata_size),
                        salts=(os.urandom(SALT_SIZE), os.urandom(SALT_SIZE)))
    region = bytes(payload_offset)
    return empty._add(region, master_key, passphrase, kdf, 0).region
