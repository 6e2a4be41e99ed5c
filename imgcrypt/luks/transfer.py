"""Encrypting and decrypting a whole payload, file or stream, through the engine.

Each call makes the engine's source and target for what it is given (a regular file is read
and written with positional I/O on several workers, a pipe in turns, in 1 MiB chunks), plans
the payload from the header (:func:`~imgcrypt.luks.engine.plan_encrypt`,
:func:`~imgcrypt.luks.engine.plan_decrypt`) and runs :func:`~imgcrypt.luks.engine.transfer`.
Memory stays bounded by the chunk size times the workers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, KdfLimits
from imgcrypt.crypto.sectors import SectorCipher
from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.fileio import read_full
from imgcrypt.luks.container import LuksHeader, parse_header
from imgcrypt.luks.engine import (
    CHUNK_SIZE,
    FileSource,
    FileTarget,
    Progress,
    Source,
    StreamSource,
    StreamTarget,
    Target,
    iter_transfer,
    plan_decrypt,
    plan_encrypt,
    regular_fd,
    transfer,
    xts_transform,
)
from imgcrypt.luks.options import FormatOptions, new_region
from imgcrypt.luks.unlock import Unlocked, unlock_stream

DEFAULT_OPTIONS = FormatOptions()


@dataclass(frozen=True)
class EncryptResult:
    header: LuksHeader
    payload_size: int  # bytes of input, before padding to the sector
    padded_size: int  # bytes of ciphertext written after the header region
    image_size: int


def _skip_to_payload(opened: Unlocked, source: BinaryIO) -> bytes:
    """Read ``source`` (just after ``opened.region``) up to the payload; return the payload
    bytes the region read already holds."""
    header = opened.header
    skip = header.payload_offset - len(opened.region)
    while skip > 0:
        got = read_full(source, min(skip, CHUNK_SIZE))
        if not got:
            raise FormatError("image ends before its payload starts", reason=FormatFault.TRUNCATED)
        skip -= len(got)
    return opened.region[header.payload_offset :]


def encrypt_stream(source: BinaryIO | Source, target: BinaryIO, passphrase: bytes,
                   options: FormatOptions = DEFAULT_OPTIONS, *, master_key: bytes | None = None,
                   progress: Progress | None = None) -> EncryptResult:
    """Write a new container to ``target`` holding everything ``source`` yields.

    ``source`` is a file object or an engine source (e.g. ``imgcrypt.qemu.guest_source``).
    The input length need not be known in advance nor a multiple of the sector size: the last
    sector is zero-padded and the true length returned.
    """
    options.validate()
    master_key = master_key or os.urandom(options.key_size // 8)
    region = new_region(options, master_key, passphrase)
    header = parse_header(region)
    target.write(region)
    written = len(region)
    if header.payload_offset > written:
        target.write(bytes(header.payload_offset - written))
    cipher = SectorCipher(header.cipher, master_key, header.sector_size)
    return encrypt_payload(header, cipher, source, target, progress=progress)


def encrypt_payload(header: LuksHeader, cipher: SectorCipher, source: BinaryIO | Source,
                    target: BinaryIO, *, progress: Progress | None = None) -> EncryptResult:
    """Encrypt ``source`` into ``target``, which is positioned at the payload of ``header``.

    ``source`` is a file object (a regular file is read from its position to its end, skipping
    its holes) or an engine :class:`~imgcrypt.luks.engine.Source` such as a qemu image export.
    """
    transform = xts_transform(cipher, header.iv_tweak, encrypt=True)
    if hasattr(source, "sequential"):
        feed = cast(Source, source)  # an engine source already (a file, a qemu export...)
        length = getattr(source, "length", None)
        end: int | None = None
    else:
        feed, length, end = _input(source)
    with _output(target) as (sink, base):
        result = transfer(plan_encrypt(header, length), feed, sink, transform,
                          progress=progress)
    if end is not None:
        source.seek(end)  # type: ignore[union-attr]
    if base is not None:
        target.seek(base + result.written)
    return EncryptResult(header, result.read, result.written,
                         header.payload_offset + result.written)


def decrypt_stream(source: BinaryIO, target: BinaryIO, passphrase: bytes, *,
                   size: int | None = None, limits: KdfLimits = DEFAULT_LIMITS,
                   progress: Progress | None = None) -> int:
    """Write the decrypted payload of the container read from ``source`` to ``target``.

    ``size`` (e.g. ``os_decrypt_size``) trims the output to the true length; otherwise the whole
    payload is written. Returns the number of bytes written.
    """
    opened = unlock_stream(source, passphrase, limits)
    return decrypt_payload(opened, source, target, size=size, progress=progress)


def decrypt_payload(opened: Unlocked, source: BinaryIO, target: BinaryIO, *,
                    size: int | None = None, progress: Progress | None = None,
                    sparse: bool = True) -> int:
    """Write the payload of an unlocked container, read on from ``source``, to ``target``.

    A fresh regular-file target gets holes where whole 4 KiB blocks of plaintext are zero
    (``sparse=False`` writes them).
    """
    header = opened.header
    cipher = opened.cipher()
    transform = xts_transform(cipher, header.iv_tweak, encrypt=False)
    src_fd = regular_fd(source)
    if src_fd is not None:
        position = source.tell()
        available = os.fstat(src_fd).st_size - header.payload_offset
        plan = plan_decrypt(header, size=size, available=available)
        assert plan.read_limit is not None
        feed: Source = FileSource(src_fd, header.payload_offset, plan.read_limit)
    else:
        plan = plan_decrypt(header, size=size, available=None)
        feed = StreamSource(source, _skip_to_payload(opened, source))
    with _output(target, sparse=sparse) as (sink, base):
        result = transfer(plan, feed, sink, transform, progress=progress)
    if src_fd is not None:
        assert plan.read_limit is not None
        source.seek(max(position, header.payload_offset + plan.read_limit))
    if base is not None:
        target.seek(base + result.written)
    return result.written


@contextlib.contextmanager
def _output(target: BinaryIO, *, sparse: bool = False
            ) -> Iterator[tuple[Target, int | None]]:
    """The engine target for ``target`` and, for a regular file, the offset it starts at."""
    dst_fd = regular_fd(target)
    if dst_fd is None:
        yield StreamTarget(target), None
        return
    target.flush()
    base = target.tell()
    yield FileTarget(dst_fd, base, sparse=sparse), base


def _input(source: BinaryIO) -> tuple[Source, int | None, int | None]:
    """The engine source for a file object, its length if known, and for a regular file the
    position to leave it at (its end)."""
    src_fd = regular_fd(source)
    if src_fd is None:
        return StreamSource(source), None, None
    start = source.tell()
    length = max(0, os.fstat(src_fd).st_size - start)
    return FileSource(src_fd, start, length), length, start + length


def iter_payload(opened: Unlocked, source: BinaryIO, *, size: int | None = None) -> Iterator[bytes]:
    """Decrypted payload chunks of an unlocked container whose header region was already read.

    ``source`` is positioned just after ``opened.region``; it is read forward only.
    """
    header = opened.header
    plan = plan_decrypt(header, size=size, available=None)
    cipher = opened.cipher()
    feed = StreamSource(source, _skip_to_payload(opened, source))
    yield from iter_transfer(plan, feed, xts_transform(cipher, header.iv_tweak, encrypt=False))
