"""LUKS2 on disk: the 4096-byte binary header before each JSON area, its checksum, both copies.

A LUKS2 image starts with two metadata copies, primary at 0 and secondary at ``hdr_size``.
Each copy is a binary header followed by a JSON area; together they are ``hdr_size`` bytes, and
the checksum is a hash of those bytes with the checksum field zeroed. This module turns bytes
into :class:`MetadataCopy` objects and back; it knows nothing about what the JSON says: the
caller's check turns a JSON area into its text and whatever the check made of it, which each
copy keeps, so the JSON is checked once per copy.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Annotated, Generic, TypeVar

from imgcrypt.crypto import backend
from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.luks.base import MAGIC, MAGIC_SECONDARY
from imgcrypt.luks.layout import declare, raw, uint_be
from imgcrypt.luks.luks2 import rules as luks2_rules
from imgcrypt.luks.luks2.rules import BINARY_SIZE, HDR_SIZES
from imgcrypt.luks.rules import HeaderRuleError

# BINARY_SIZE and HDR_SIZES are facts of the disk format, declared once beside the rules.
__all__ = ["BINARY_SIZE", "CSUM_SIZE", "HDR_SIZES", "LAYOUT", "MAX_HDR_SIZE", "SALT_SIZE",
           "BinaryHeader", "Copies", "MetadataCopy", "checksum",
           "find_copies", "needed_bytes", "pack_copy", "read_copy", "text", "text_field"]

# The secondary copy sits at one of the HDR_SIZES offsets.
MAX_HDR_SIZE = HDR_SIZES[-1]
CSUM_SIZE = 64
SALT_SIZE = 64



@dataclass(frozen=True)
class BinaryHeader:
    """One binary header exactly as stored; text fields stay raw so a rewrite is exact.

    The declaration is the layout (:func:`imgcrypt.luks.layout.declare`): fields in disk order.
    """

    magic: Annotated[bytes, raw(6)]
    version: Annotated[int, uint_be(2)]
    hdr_size: Annotated[int, uint_be(8)]
    seqid: Annotated[int, uint_be(8)]
    label: Annotated[bytes, raw(48)]
    checksum_alg: Annotated[bytes, raw(32)]
    salt: Annotated[bytes, raw(SALT_SIZE)] = field(repr=False)
    uuid: Annotated[bytes, raw(40)]
    subsystem: Annotated[bytes, raw(48)]
    hdr_offset: Annotated[int, uint_be(8)]
    padding: Annotated[bytes, raw(184)] = field(default=bytes(184), repr=False)
    csum: Annotated[bytes, raw(CSUM_SIZE)] = field(default=bytes(CSUM_SIZE), repr=False)
    padding4096: Annotated[bytes, raw(7 * 512)] = field(default=bytes(7 * 512), repr=False)

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> BinaryHeader:
        return LAYOUT.unpack_record(cls, data, offset)

    def pack(self) -> bytes:
        return LAYOUT.pack_record(self)

    @property
    def checksum_name(self) -> str:
        return text(self.checksum_alg).lower()


LAYOUT = declare(BinaryHeader, "LUKS2 binary header", BINARY_SIZE)
_CSUM_FIELD = next(f for f in LAYOUT.fields if f.name == "csum")


def text(stored: bytes) -> str:
    """A NUL-terminated text field as str; bytes that are not UTF-8 are shown, not refused."""
    return stored.split(b"\0", 1)[0].decode("utf-8", "replace")


def text_field(value: str, size: int, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) >= size or b"\0" in raw:
        raise FormatError(f"{what} must be under {size} bytes of text without NUL")
    return raw.ljust(size, b"\0")


def checksum(binary: bytes, json_area: bytes, algorithm: str) -> bytes:
    """The value of the csum field: hash of the header (csum zeroed) and JSON area, NUL-padded."""
    if backend.hash_size(algorithm) is None:
        raise HeaderRuleError(luks2_rules.CHECKSUM_ALG, repr(algorithm[:32]))
    h = hashlib.new(backend.hashlib_name(algorithm))
    h.update(binary[: _CSUM_FIELD.offset])
    h.update(bytes(CSUM_SIZE))
    h.update(binary[_CSUM_FIELD.offset + CSUM_SIZE : BINARY_SIZE])
    h.update(json_area)
    return h.digest().ljust(CSUM_SIZE, b"\0")


# What the caller's JSON check makes of a copy's JSON area besides its text.
Checked = TypeVar("Checked")


@dataclass(frozen=True)
class MetadataCopy(Generic[Checked]):
    """A copy that passes every rule, with its JSON text and what the JSON check made of it."""

    offset: int
    binary: BinaryHeader
    json_text: str = field(repr=False)
    checked: Checked = field(repr=False)


# Turns a JSON area (and hdr_size) into (JSON text, checked result), raising for any framing
# or JSON rule it breaks.
JsonCheck = Callable[[bytes, int], tuple[str, Checked]]


def _sane(data: bytes, offset: int) -> BinaryHeader:
    """The binary header at ``offset`` if cryptsetup's pre-checksum sanity checks pass."""
    magic = MAGIC if offset == 0 else MAGIC_SECONDARY
    if len(data) < offset + BINARY_SIZE:
        raise FormatError(f"LUKS2 header copy at {offset} is cut short",
                          reason=FormatFault.TRUNCATED)
    hdr = BinaryHeader.unpack(data, offset)
    if hdr.magic != magic:
        raise HeaderRuleError(luks2_rules.MAGIC, f"copy at {offset}", reason=FormatFault.BAD_MAGIC)
    if hdr.version != 2:
        raise HeaderRuleError(luks2_rules.VERSION, f"copy at {offset} has {hdr.version}")
    if hdr.hdr_offset != offset:
        raise HeaderRuleError(luks2_rules.HDR_OFFSET,
                              f"copy at {offset} claims {hdr.hdr_offset}")
    if not HDR_SIZES[0] <= hdr.hdr_size <= MAX_HDR_SIZE or (offset and hdr.hdr_size != offset):
        raise HeaderRuleError(luks2_rules.HDR_SIZE, f"copy at {offset}: {hdr.hdr_size}")
    if len(data) < offset + hdr.hdr_size:
        raise FormatError(f"LUKS2 metadata at {offset} is cut short", reason=FormatFault.TRUNCATED)
    return hdr


def _summed(data: bytes, offset: int, hdr: BinaryHeader) -> bytes:
    """The JSON area of a sane copy whose checksum matches."""
    json_area = data[offset + BINARY_SIZE : offset + hdr.hdr_size]
    expected = checksum(data[offset : offset + BINARY_SIZE], json_area, hdr.checksum_name)
    size = backend.hash_size(hdr.checksum_name) or CSUM_SIZE
    if not hmac.compare_digest(expected[:size], hdr.csum[:size]):
        raise HeaderRuleError(luks2_rules.CHECKSUM, f"copy at {offset}",
                              reason=FormatFault.CHECKSUM)
    return json_area


def _checked(offset: int, hdr: BinaryHeader, json_area: bytes,
             check_json: JsonCheck[Checked]) -> MetadataCopy[Checked]:
    json_text, checked = check_json(json_area, hdr.hdr_size)
    return MetadataCopy(offset, hdr, json_text, checked)


def read_copy(data: bytes, offset: int,
              check_json: JsonCheck[Checked]) -> MetadataCopy[Checked]:
    """Validate the metadata copy at ``offset`` (0 = primary); typed error for every defect."""
    hdr = _sane(data, offset)
    return _checked(offset, hdr, _summed(data, offset, hdr), check_json)


def pack_copy(hdr: BinaryHeader, json_text: str) -> bytes:
    """``hdr_size`` bytes of one copy: binary header with a fresh checksum, then the JSON area."""
    raw = json_text.encode("utf-8")
    json_size = hdr.hdr_size - BINARY_SIZE
    if len(raw) >= json_size:
        raise FormatError(f"LUKS2 metadata needs {len(raw) + 1} bytes, the area holds {json_size}")
    json_area = raw + bytes(json_size - len(raw))
    unsummed = replace(hdr, csum=bytes(CSUM_SIZE)).pack()
    csum = checksum(unsummed, json_area, hdr.checksum_name)
    return replace(hdr, csum=csum).pack() + json_area


@dataclass(frozen=True)
class Copies(Generic[Checked]):
    """Both copies as found: each either a valid copy or the error that disqualified it."""

    primary: MetadataCopy[Checked] | FormatError
    secondary: MetadataCopy[Checked] | FormatError

    def winner(self) -> MetadataCopy[Checked]:
        """The valid copy with the higher seqid (primary on a tie); error if neither is valid."""
        valid = [c for c in (self.primary, self.secondary) if isinstance(c, MetadataCopy)]
        if not valid:
            errors = [self.primary, self.secondary]
            assert isinstance(errors[0], FormatError) and isinstance(errors[1], FormatError)
            for err in errors:
                if (isinstance(err, FormatError) and err.reason is FormatFault.CHECKSUM
                        and not isinstance(errors[0], HeaderRuleError)):
                    raise FormatError("both LUKS2 header copies fail their checksums",
                                      reason=FormatFault.CHECKSUM)
            raise errors[0]
        return max(valid, key=lambda c: c.binary.seqid)  # max keeps the first on a tie

    def need_recovery(self) -> bool:
        """Would cryptsetup rewrite one copy from the other (damaged, or an older seqid)?"""
        p, s = self.primary, self.secondary
        if isinstance(p, MetadataCopy) and isinstance(s, MetadataCopy):
            return p.binary.seqid != s.binary.seqid
        return isinstance(p, MetadataCopy) or isinstance(s, MetadataCopy)


def find_copies(data: bytes, check_json: JsonCheck[Checked]) -> Copies[Checked]:
    """The primary at 0 and the secondary at the primary's hdr_size, or probed if need be.

    As cryptsetup does, the secondary is looked for at the primary's hdr_size whenever the
    primary's binary header is sane and its checksum matches, even if its JSON is refused.
    """
    primary: MetadataCopy[Checked] | FormatError
    offsets: tuple[int, ...] = HDR_SIZES
    primary_area = b""
    try:
        hdr = _sane(data, 0)
        primary_area = _summed(data, 0, hdr)
        offsets = (hdr.hdr_size,)
        primary = _checked(0, hdr, primary_area, check_json)
    except FormatError as err:
        primary = err
    secondary: MetadataCopy[Checked] | FormatError = HeaderRuleError(
        luks2_rules.MAGIC, "no secondary copy found", reason=FormatFault.BAD_MAGIC)
    for offset in offsets:
        if len(data) < offset + BINARY_SIZE:
            if len(offsets) == 1:
                secondary = FormatError(f"image ends before the secondary header at {offset}",
                                        reason=FormatFault.TRUNCATED)
            break
        try:
            hdr = _sane(data, offset)
            json_area = _summed(data, offset, hdr)
        except FormatError as err:
            if len(offsets) == 1 or data[offset : offset + 6] == MAGIC_SECONDARY:
                secondary = err
            continue
        # The first copy whose checksum matches is the secondary, whatever its JSON says.
        if isinstance(primary, MetadataCopy) and json_area == primary_area:
            # The same bytes as the valid primary's area (and so the same hdr_size): the
            # same verdict, without reading the JSON a second time.
            secondary = MetadataCopy(offset, hdr, primary.json_text, primary.checked)
            break
        try:
            secondary = _checked(offset, hdr, json_area, check_json)
        except FormatError as err:
            secondary = err
        break
    return Copies(primary, secondary)


def needed_bytes(prefix: bytes) -> int:
    """How many leading bytes :func:`find_copies` needs, judged from the primary binary header."""
    if len(prefix) >= 16 and prefix[:6] == MAGIC:
        hdr_size = int.from_bytes(prefix[8:16], "big")
        if hdr_size in HDR_SIZES:
            return 2 * hdr_size
    # The primary cannot say where the secondary is: enough for the farthest one allowed.
    return 2 * MAX_HDR_SIZE
