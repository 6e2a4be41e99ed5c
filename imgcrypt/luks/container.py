"""One API over LUKS1 and LUKS2 headers: detect the version, parse, unlock, change keyslots.

Still bytes in, objects and bytes out: the caller reads :func:`bytes_to_parse` bytes from the
start of an image, calls :func:`parse_header`, then reads ``header.region_size`` bytes to unlock
or re-key. Keyslot changes return a :class:`RegionUpdate` whose ``steps`` say which byte ranges
to write, in which order, so that a crash between any two steps leaves an image that opens with
the old or the new passphrase.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Kdf, KdfLimits
from imgcrypt.crypto.sectors import CipherSpec
from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.luks.base import MAGIC, MAGIC_SECONDARY, SECTOR, RegionUpdate, Segment
from imgcrypt.luks.rules import LUKS_MAGIC, LUKS_VERSION, HeaderRuleError

# RegionUpdate lives in the leaf module imgcrypt.luks.base; it is named here for callers.
__all__ = ["PROBE_SIZE", "LuksHeader", "PayloadSpan", "RegionUpdate", "bytes_to_parse",
           "detect_version", "is_luks", "parse_header", "payload_span", "whole_sectors"]
#: Bytes to read from an image's start to tell LUKS from anything else.
PROBE_SIZE = 4096
LOOP_SECTOR = SECTOR  # a loop device exposes whole 512-byte sectors
_log = logging.getLogger("imgcrypt")


class LuksHeader(Protocol):
    """What every parsed header offers, whatever its version."""

    @property
    def version(self) -> int: ...
    @property
    def cipher(self) -> CipherSpec: ...
    @property
    def key_bytes(self) -> int: ...
    @property
    def sector_size(self) -> int: ...
    @property
    def payload_offset(self) -> int: ...
    @property
    def payload_size(self) -> int | None: ...
    @property
    def iv_tweak(self) -> int: ...
    @property
    def uuid(self) -> str: ...
    @property
    def region_size(self) -> int: ...
    @property
    def unlock_extent(self) -> int: ...
    @property
    def requirements(self) -> tuple[str, ...]: ...
    @property
    def af_hash(self) -> str: ...
    @property
    def segments(self) -> tuple[Segment, ...]: ...

    def active_keyslots(self) -> tuple[int, ...]: ...

    def describe(self) -> dict[str, Any]: ...

    def unsupported(self) -> tuple[str, ...]: ...

    def check_decryptable(self) -> None: ...

    def unlock(self, region: bytes, passphrase: bytes, limits: KdfLimits = DEFAULT_LIMITS,
               slot: int | None = None) -> tuple[int, bytes]: ...

    def add_keyslot(self, region: bytes, master_key: bytes, passphrase: bytes, kdf: Kdf,
                    slot: int | None = None) -> RegionUpdate: ...

    def remove_keyslot(self, region: bytes, slot: int) -> RegionUpdate: ...


def detect_version(prefix: bytes) -> int:
    """1 or 2 from the first bytes of an image; HeaderRuleError (BAD_MAGIC) if not LUKS at all."""
    if len(prefix) < 8:
        raise FormatError("image is too short to hold a LUKS header", reason=FormatFault.TRUNCATED)
    if prefix[:6] != MAGIC:
        raise HeaderRuleError(LUKS_MAGIC, "not a LUKS image (bad magic)",
                              reason=FormatFault.BAD_MAGIC)
    version = int.from_bytes(prefix[6:8], "big")
    if version == 0:  # cryptsetup reads it as a LUKS2 image whose primary copy is damaged
        return 2
    if version not in (1, 2):
        raise HeaderRuleError(LUKS_VERSION, f"unsupported LUKS version {version}",
                              reason=FormatFault.UNSUPPORTED)
    return version


def is_luks(prefix: bytes) -> bool:
    """Whether ``prefix`` starts with the LUKS magic (either version)."""
    return len(prefix) >= 6 and prefix[:6] == MAGIC


def bytes_to_parse(prefix: bytes) -> int:
    """How many leading bytes :func:`parse_header` needs, judged from the first 4096.

    Without the primary magic the image may still be LUKS2 with a destroyed primary header, so
    enough is asked for to find the secondary copy at any offset LUKS2 allows.
    """
    if len(prefix) >= 6 and prefix[:6] != MAGIC:
        from imgcrypt.luks.luks2.disk import MAX_HDR_SIZE

        return 2 * MAX_HDR_SIZE
    if detect_version(prefix) == 1:
        from imgcrypt.luks.luks1 import HEADER_SIZE

        return HEADER_SIZE
    from imgcrypt.luks.luks2.header import bytes_to_parse as luks2_bytes

    return luks2_bytes(prefix)


def _secondary_luks2(data: bytes) -> bool:
    from imgcrypt.luks.luks2.rules import HDR_SIZES

    return any(data[offset : offset + 6] == MAGIC_SECONDARY for offset in HDR_SIZES)


def parse_header(data: bytes, limits: KdfLimits = DEFAULT_LIMITS, *,
                 image_size: int | None = None) -> LuksHeader:
    """Parse and validate the header at the start of ``data`` (LUKS1 or LUKS2).

    A LUKS2 image whose primary header lost its magic opens from the secondary copy, unless
    a foreign signature sits on it (``image_size`` decides which ones count, as for blkid).
    """
    from imgcrypt.luks.luks2.header import Luks2Header

    if len(data) >= 6 and data[:6] != MAGIC and _secondary_luks2(data):
        return Luks2Header.parse(data, limits, image_size=image_size)
    if detect_version(data) == 1:
        from imgcrypt.luks.luks1 import Luks1Header

        return Luks1Header.parse(data)
    return Luks2Header.parse(data, limits, image_size=image_size)


def whole_sectors(available: int, *, quiet: bool = False) -> int:
    """Payload bytes a loop device would expose: a trailing partial 512-byte sector is ignored,
    with a warning saying how many bytes (unless ``quiet``: the caller only sizes the job)."""
    tail = available % LOOP_SECTOR if available > 0 else 0
    if tail and not quiet:
        _log.warning("imgcrypt: warning: ignoring the last %d bytes of the image: they do not "
                     "make a whole %d-byte sector", tail, LOOP_SECTOR)
    return available - tail


@dataclass(frozen=True)
class PayloadSpan:
    """Where an image's payload lies and how much of it to read and to give back.

    ``length`` is the ciphertext to read from ``offset``, in whole sectors (None: the end of a
    stream decides); ``limit`` the exact plaintext wanted, when ``os_decrypt_size`` or a LUKS2
    segment of fixed size says it (None: all that is read).
    """

    offset: int
    length: int | None
    limit: int | None

    @property
    def size(self) -> int | None:
        """Plaintext bytes the payload gives back (None: not known before a stream ends)."""
        return self.limit if self.limit is not None else self.length


def payload_span(header: LuksHeader, *, image_size: int | None = None,
                 decrypt_size: int | None = None, quiet: bool = False) -> PayloadSpan:
    """The one rule for an image's payload extent, LUKS1 and LUKS2 alike.

    A LUKS2 segment of fixed size bounds the payload; LUKS1 and LUKS2's "dynamic" segment run
    to the end of the image (``image_size`` bytes; None for a stream), of which a trailing
    partial 512-byte sector is left out, as a loop device would. ``decrypt_size``
    (``os_decrypt_size``) trims the plaintext and must fit the payload. A payload that starts
    beyond the image's end, a fixed segment that runs past it, or a payload that ends inside
    a (4096-byte) sector, is a truncated image.
    ``quiet`` leaves out the warning about a partial last sector (for a progress total).
    """
    offset = int(header.payload_offset)
    segment = header.payload_size
    limit = segment
    if decrypt_size is not None:
        if decrypt_size < 0 or (segment is not None and decrypt_size > segment):
            raise FormatError(f"decrypted size {decrypt_size} does not fit the payload")
        limit = decrypt_size
    sector = header.sector_size
    length = None if limit is None else -(-limit // sector) * sector
    if image_size is not None:
        available = image_size - offset
        if available < 0:
            raise FormatError("image ends before its payload starts",
                              reason=FormatFault.TRUNCATED)
        if segment is not None and segment > available:
            raise FormatError(f"the image ends inside its {segment}-byte payload segment",
                              reason=FormatFault.TRUNCATED)
        if limit is None:
            available = whole_sectors(available, quiet=quiet)
            if available % sector:
                # As dm-crypt, which maps no device whose size is not whole sectors.
                raise FormatError("encrypted payload ends inside a sector",
                                  reason=FormatFault.TRUNCATED)
        length = available if length is None else min(available, length)
    return PayloadSpan(offset, length, limit)
