"""A parsed LUKS2 header: the winning copy, derived facts, unlock, and keyslot changes.

Bytes in, objects and bytes out, as for LUKS1 (see :mod:`imgcrypt.luks.luks1`). ``region`` is
the image's first :attr:`Luks2Header.region_size` bytes: both metadata copies and the keyslots
area. The copies on disk are :mod:`imgcrypt.luks.luks2.disk`, the JSON model, validator and
serialiser :mod:`imgcrypt.luks.luks2.metadata`; keyslots, digests and segments have their own
modules. This one ties them together.

Every rewrite starts from the winning copy's JSON object, changes only what it must, and writes
both copies with ``seqid + 1``: primary first, then secondary, each its own step. While either is
being written the other holds a complete valid header, and the higher seqid wins on reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Kdf, KdfLimits, check_limits
from imgcrypt.crypto.sectors import CipherSpec
from imgcrypt.errors import (
    FormatError,
    FormatFault,
    UnsupportedError,
    UsageError,
    WrongPassphraseError,
)
from imgcrypt.luks import keyslot
from imgcrypt.luks.base import MAGIC, MAGIC_SECONDARY, RegionUpdate, Segment
from imgcrypt.luks.keyslot import STRIPES, MasterKeyDigest
from imgcrypt.luks.luks2 import digests, keyslots, segments
from imgcrypt.luks.luks2 import rules as luks2_rules
from imgcrypt.luks.luks2.disk import (
    SALT_SIZE,
    BinaryHeader,
    MetadataCopy,
    find_copies,
    needed_bytes,
    pack_copy,
    text,
)
from imgcrypt.luks.luks2.metadata import (
    Digest,
    Keyslot,
    Metadata,
    check_area,
    dump_json,
    keyslot_entry,
    load_json,
    validate,
    with_keyslot,
    without_keyslot,
)
from imgcrypt.luks.rules import HeaderRuleError
from imgcrypt.luks.signatures import foreign_signature

MAX_SEQID = (1 << 64) - 1


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
        primary, secondary = copies.primary, copies.secondary
        return cls(
            binary=winner.binary,
            json_text=winner.json_text,
            metadata=winner.checked,  # validated once, when its copy was read
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
        d = self._digest()
        check_limits(d.kdf, len(d.value), limits)

    # -- what imgcrypt can decrypt -----------------------------------------------------------

    def unsupported(self) -> tuple[str, ...]:
        """Why imgcrypt cannot open or decrypt this valid header; empty if it can.

        Unknown mandatory requirements, then the segments (:func:`segments.problems`), then
        the digest of the crypt segment and the keyslots that open it.
        """
        reasons = [f"mandatory requirement {r[:64]!r} is not implemented"
                   for r in self.metadata.unknown_requirements()]
        problems, crypt = segments.problems(self.metadata, lambda: self.key_bytes)
        reasons.extend(problems)
        if crypt is not None:
            digest_problems = digests.problems(self.metadata, crypt)
            reasons.extend(digest_problems)
            # unlock checks every keyslot of the segment before it derives anything
            for ks in () if digest_problems else self._segment_keyslots():
                reasons.extend(keyslots.problems(ks))
        return tuple(reasons)

    def check_openable(self) -> None:
        """Refuse to open keyslots when segment 0 is not crypt or its digest is unusable."""
        first = self.metadata.segments[0]
        reasons = ([f"segment {first.id} has type {first.type[:32]!r}, not crypt"]
                   if first.type != "crypt" else digests.problems(self.metadata, first))
        if reasons:
            raise UnsupportedError("cannot open this image: " + "; ".join(reasons))

    def check_decryptable(self) -> None:
        reasons = self.unsupported()
        if reasons:
            raise UnsupportedError("cannot decrypt this image: " + "; ".join(reasons))

    # -- derived facts -----------------------------------------------------------------------

    def _segment_digest(self) -> Digest:
        return digests.of_segment(self.metadata, segments.crypt_segment(self.metadata))

    def _digest(self) -> MasterKeyDigest:
        return digests.master_key_digest(self._segment_digest())

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
        return CipherSpec.parse(segments.crypt_segment(self.metadata).cipher)

    @property
    def key_bytes(self) -> int:
        """The volume key size; 0 if no keyslot is left to tell it."""
        slots = self._segment_keyslots()
        return slots[0].key_size if slots else 0

    @property
    def sector_size(self) -> int:
        return segments.crypt_segment(self.metadata).sector_size

    @property
    def payload_offset(self) -> int:
        return segments.crypt_segment(self.metadata).offset

    @property
    def payload_size(self) -> int | None:
        return segments.crypt_segment(self.metadata).size

    @property
    def iv_tweak(self) -> int:
        return segments.crypt_segment(self.metadata).iv_tweak

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

    @property
    def unlock_extent(self) -> int:
        """Bytes from the image's start that an unlock may read: both metadata copies and the
        keyslot areas the JSON places, not the rest of the keyslots area (16 MiB by default)."""
        return max([2 * self.hdr_size] + [
            ks.area_offset + ks.area_size for ks in self.metadata.keyslots
            if ks.area_offset is not None and ks.area_size is not None])

    @property
    def requirements(self) -> tuple[str, ...]:
        """The mandatory requirements (config.requirements.mandatory), as the JSON lists them."""
        return self.metadata.requirements

    @property
    def af_hash(self) -> str:
        """The hash a new keyslot's AF uses: the digest's, as cryptsetup does."""
        return self._segment_digest().hash

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.metadata.segments

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
            "keyslots": [keyslots.describe(ks) for ks in self.metadata.keyslots],
            "segments": [segments.describe(s) for s in self.metadata.segments],
            "digests": [digests.describe(d) for d in self.metadata.digests],
            "tokens": obj["tokens"],
            "flags": list(self.metadata.flags),
            "requirements": list(self.metadata.requirements),
            "header_copies": {
                "primary": "valid" if self.copies_valid[0] else "damaged",
                "secondary": "valid" if self.copies_valid[1] else "damaged",
            },
        }

    # -- keyslot cryptography ----------------------------------------------------------------

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
            raise FormatError("image ends inside the LUKS2 keyslots area",
                              reason=FormatFault.TRUNCATED)
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
        slots = [keyslots.material(ks) for ks in candidates]
        return keyslot.open_first(region, slots, digest, passphrase, limits)

    def add_keyslot(self, region: bytes, master_key: bytes, passphrase: bytes, kdf: Kdf,
                    slot: int | None = None) -> RegionUpdate:
        """``passphrase`` in a free keyslot (or ``slot``): material first, then both headers."""
        self._check_writable()
        if not self.verify_master_key(master_key):
            raise WrongPassphraseError("master key does not match this header")
        return self.add_first_keyslot(region, master_key, passphrase, kdf, slot)

    def add_first_keyslot(self, region: bytes, master_key: bytes, passphrase: bytes, kdf: Kdf,
                          slot: int | None) -> RegionUpdate:
        """As :meth:`add_keyslot`, without checking ``master_key`` against the digest: for a
        header just made for it (:mod:`imgcrypt.luks.luks2.format`)."""
        slot = keyslots.free_id(self.metadata, slot)
        cipher = self.cipher
        cipher.check_key_size(len(master_key))
        digest = self._segment_digest()
        area_size = keyslot.area_size(len(master_key))
        offset = keyslots.free_area(self.metadata, self.hdr_size, area_size)
        if len(kdf.salt) != keyslot.SALT_SIZE:
            kdf = replace(kdf, salt=os.urandom(keyslot.SALT_SIZE))
        material = keyslot.seal(cipher, master_key, passphrase, kdf, digest.hash, STRIPES)
        entry = keyslot_entry(
            key_size=len(master_key), kdf=kdf, af_hash=digest.hash, stripes=STRIPES,
            area_offset=offset, area_size=area_size, area_cipher=str(cipher))
        obj = with_keyslot(load_json(self.json_text), slot, entry, digest.id)
        return self._write(region, obj, (offset, material), material_first=True, slot=slot)

    def remove_keyslot(self, region: bytes, slot: int) -> RegionUpdate:
        """``slot`` removed from both headers first, then its area overwritten."""
        self._check_writable()
        ks = self._keyslot(slot)
        if ks is None:
            raise UsageError(f"keyslot {slot} is not active")
        obj = without_keyslot(load_json(self.json_text), slot)
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

    def _write(self, region: bytes, obj: dict[str, Any], patch: tuple[int, bytes] | None, *,
               material_first: bool, slot: int) -> RegionUpdate:
        if len(region) < self.region_size:
            raise FormatError("image ends inside the LUKS2 keyslots area",
                              reason=FormatFault.TRUNCATED)
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
        parsed = validate(obj, self.hdr_size)
        if self.binary.seqid >= MAX_SEQID:
            raise FormatError("LUKS2 seqid is exhausted; this header cannot be rewritten",
                              reason=FormatFault.LIMIT_EXCEEDED)
        first, second = (s if len(s) == SALT_SIZE else os.urandom(SALT_SIZE) for s in self.salts)
        return replace(
            self, binary=replace(self.binary, seqid=self.binary.seqid + 1),
            json_text=dump_json(obj), metadata=parsed, copies_valid=(True, True),
            salts=(first, second),
        )

    def pack_copies(self) -> bytes:
        """Primary and secondary metadata copies, ``2 * hdr_size`` bytes."""
        primary = replace(self.binary, magic=MAGIC, hdr_offset=0, salt=self.salts[0])
        secondary = replace(self.binary, magic=MAGIC_SECONDARY, hdr_offset=self.hdr_size,
                            salt=self.salts[1])
        return pack_copy(primary, self.json_text) + pack_copy(secondary, self.json_text)


def _current(copy: MetadataCopy[Metadata] | FormatError,
             winner: MetadataCopy[Metadata]) -> bool:
    return isinstance(copy, MetadataCopy) and copy.binary.seqid == winner.binary.seqid
