"""Reading and unlocking a container's header from a file or a stream.

The first step of every data path: the header region is read (forward only, so pipes work),
parsed and bounded, and a passphrase opens a keyslot. What to do with the payload is
:mod:`imgcrypt.luks.transfer`'s (whole) and :mod:`imgcrypt.luks.reader`'s (random access).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, KdfLimits
from imgcrypt.crypto.sectors import SectorCipher
from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.fileio import read_full
from imgcrypt.luks.container import (
    PROBE_SIZE,
    LuksHeader,
    bytes_to_parse,
    parse_header,
    payload_span,
)
from imgcrypt.luks.engine import regular_fd
from imgcrypt.luks.rules import IMAGE_HOLDS_HEADER, HeaderRuleError

# Headers with keyslot areas beyond this are refused before being read into memory: the
# largest LUKS2 layout cryptsetup allows, two 4 MiB metadata copies and 128 MiB of keyslots.
MAX_REGION_SIZE = (2 * 4 << 20) + (128 << 20)

@dataclass(frozen=True)
class Unlocked:
    """An opened container: its header, the keyslot that opened it and the master key."""

    header: LuksHeader
    region: bytes = field(repr=False)
    slot: int
    master_key: bytes = field(repr=False)

    def cipher(self) -> SectorCipher:
        """The payload cipher; refused for an image in the middle of a LUKS2 re-encryption,
        whose data is under two keys at once."""
        self.header.check_decryptable()
        return SectorCipher(self.header.cipher, self.master_key, self.header.sector_size)

    def output_size(self, size: int | None, image_size: int | None) -> int | None:
        """Bytes :func:`decrypt_payload` will write, for a progress total: ``size``
        (os_decrypt_size), the header's payload size, or what follows the payload offset in an
        image of ``image_size`` bytes; None on a stream that tells neither."""
        try:
            return payload_span(self.header, image_size=image_size, decrypt_size=size,
                                quiet=True).size
        except FormatError:
            return None  # a progress total only: the transfer itself refuses the image


def read_header(source: BinaryIO, limits: KdfLimits = DEFAULT_LIMITS) -> tuple[LuksHeader, bytes]:
    """Read and parse a header from the current position (0) of ``source``.

    Returns the header and the region read so far (at least ``header.region_size`` bytes). Works
    on pipes: it never seeks.
    """
    data = read_full(source, PROBE_SIZE)
    needed = bytes_to_parse(data)
    if needed > MAX_REGION_SIZE:
        raise FormatError(f"LUKS header claims {needed} bytes of metadata",
                          reason=FormatFault.LIMIT_EXCEEDED)
    if needed > len(data):
        data += read_full(source, needed - len(data))
    header = parse_header(data, limits, image_size=_size_of(source))
    if header.region_size > MAX_REGION_SIZE:
        raise FormatError(f"LUKS keyslot area of {header.region_size} bytes is too large",
                          reason=FormatFault.LIMIT_EXCEEDED)
    if header.region_size > len(data):
        data += read_full(source, header.region_size - len(data))
    if len(data) < header.region_size:
        raise HeaderRuleError(IMAGE_HOLDS_HEADER, f"{header.region_size} bytes needed, "
                              f"{len(data)} present")
    return header, data


def _size_of(source: BinaryIO) -> int | None:
    """The size of a regular file behind ``source``; None for pipes and other streams."""
    fd = regular_fd(source)
    return None if fd is None else os.fstat(fd).st_size


def unlock_stream(source: BinaryIO, passphrase: bytes,
                  limits: KdfLimits = DEFAULT_LIMITS, *, slot: int | None = None) -> Unlocked:
    """Open the container on ``source`` with ``passphrase``, trying only keyslot ``slot`` if
    given (cryptsetup's ``--key-slot``)."""
    header, region = read_header(source, limits)
    slot, master_key = header.unlock(region, passphrase, limits, slot=slot)
    return Unlocked(header, region, slot, master_key)
