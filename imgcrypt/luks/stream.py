"""Streaming encryption and decryption, random access to a payload, and header-only re-keying.

This is the I/O edge of the LUKS engine: it reads and writes files and streams, and hands bytes
to the format modules. Memory stays bounded by the chunk size times the chunks in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Kdf, KdfLimits
from imgcrypt.crypto.sectors import SectorCipher
from imgcrypt.errors import FormatError, FormatFault, UsageError
from imgcrypt.fileio import read_full
from imgcrypt.luks.container import (
    PROBE_SIZE,
    LuksHeader,
    RegionUpdate,
    bytes_to_parse,
    parse_header,
    payload_span,
)
from imgcrypt.luks.engine import CHUNK_SIZE as CHUNK_SIZE
from imgcrypt.luks.engine import (
    FileSource,
    FileTarget,
    Source,
    StreamSource,
    StreamTarget,
    Target,
    Transform,
    iter_transfer,
    plan_decrypt,
    plan_encrypt,
    regular_fd,
    transfer,
)
from imgcrypt.luks.options import FormatOptions, KdfOptions, new_region
from imgcrypt.luks.rules import IMAGE_HOLDS_HEADER, HeaderRuleError

# Headers with keyslot areas beyond this are refused before being read into memory: the
# largest LUKS2 layout cryptsetup allows, two 4 MiB metadata copies and 128 MiB of keyslots.
MAX_REGION_SIZE = (2 * 4 << 20) + (128 << 20)

Progress = Callable[[int], None]
DEFAULT_OPTIONS = FormatOptions()


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


@dataclass(frozen=True)
class EncryptResult:
    header: LuksHeader
    payload_size: int  # bytes of input, before padding to the sector
    padded_size: int  # bytes of ciphertext written after the header region
    image_size: int


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


def _xts_transform(cipher: SectorCipher, iv_base: int, *, encrypt: bool) -> Transform:
    run = cipher.encrypt_into if encrypt else cipher.decrypt_into

    def transform(view: memoryview, at: int) -> None:
        run(view, iv_base + at // 512, view)

    return transform


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
    transform = _xts_transform(cipher, header.iv_tweak, encrypt=True)
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
    transform = _xts_transform(cipher, header.iv_tweak, encrypt=False)
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
    yield from iter_transfer(plan, feed, _xts_transform(cipher, header.iv_tweak, encrypt=False))



class PayloadReader(io.RawIOBase):
    """Random access to the decrypted payload of a container in a seekable file."""

    def __init__(self, raw: BinaryIO, opened: Unlocked, size: int | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._opened = opened
        self._cipher = opened.cipher()
        whole = payload_span(opened.header, image_size=raw.seek(0, io.SEEK_END)).size
        assert whole is not None  # a file's size is known
        self._size = whole if size is None else min(size, whole)
        self._pos = 0

    def __repr__(self) -> str:
        return f"PayloadReader(size={self._size})"

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos), CHUNK_SIZE)
        if want <= 0:
            return 0
        header = self._opened.header
        sector = header.sector_size
        first = self._pos // sector
        last = -(-(self._pos + want) // sector)
        self._raw.seek(header.payload_offset + first * sector)
        data = read_full(self._raw, (last - first) * sector)
        if len(data) < (last - first) * sector:
            raise FormatError("image ends inside its payload", reason=FormatFault.TRUNCATED)
        plain = self._cipher.decrypt(data, header.iv_tweak + first * sector // 512)
        start = self._pos - first * sector
        view[:want] = plain[start : start + want]
        self._pos += want
        return want


def open_payload(raw: BinaryIO, passphrase: bytes, *, size: int | None = None,
                 limits: KdfLimits = DEFAULT_LIMITS) -> io.BufferedReader:
    """A buffered, seekable file object over the decrypted payload of ``raw``."""
    raw.seek(0)
    opened = unlock_stream(raw, passphrase, limits)
    return io.BufferedReader(PayloadReader(raw, opened, size), buffer_size=1 << 20)


# -- header-only changes -----------------------------------------------------------------------


def _apply(fd: int, update: RegionUpdate) -> None:
    for start, end in update.steps:
        os.pwrite(fd, update.region[start:end], start)
        os.fsync(fd)


@dataclass(frozen=True)
class RekeyResult:
    opened_slot: int
    added_slot: int | None
    removed_slot: int | None


def rekey_file(path: str, passphrase: bytes, *, new_passphrase: bytes | None = None,
               remove_old: bool = False, remove_slot: int | None = None,
               kdf: Kdf | KdfOptions | None = None, limits: KdfLimits = DEFAULT_LIMITS,
               opened_slot: int | None = None, new_slot: int | None = None,
               remove_others: bool = False) -> RekeyResult:
    """Change which passphrases open the image at ``path`` by rewriting its header only.

    With ``new_passphrase``, a keyslot for it is added (``kdf`` gives its parameters); with
    ``remove_old`` the keyslot ``passphrase`` opened is then removed, so a crash between the two
    steps leaves both passphrases valid, never neither. ``remove_slot`` removes that slot.
    ``kdf`` as :class:`KdfOptions` is completed from the image's header (:func:`kdf_for`) before
    the passphrase is tried.
    ``opened_slot`` restricts which keyslot ``passphrase`` may open, ``new_slot`` chooses the
    new keyslot's number (cryptsetup's ``--key-slot`` for luksChangeKey and luksAddKey).
    ``remove_others`` removes every keyslot but the new one (or, without ``new_passphrase``, the
    one ``passphrase`` opened), each disabled in the header (both LUKS2 copies) before its
    material is overwritten, so that passphrase alone opens the image.
    The file is locked for the whole change so two re-keys cannot interleave.
    """
    if remove_old and new_passphrase is None:
        raise UsageError("changing a passphrase needs the new one")
    with open(path, "r+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        header, region = read_header(f, limits)
        if isinstance(kdf, KdfOptions):
            kdf = kdf_for(header, kdf.format_options()) if new_passphrase is not None else None
        slot, master_key = header.unlock(region, passphrase, limits, slot=opened_slot)
        added = removed = None
        if new_passphrase is not None:
            if kdf is None:
                raise UsageError("adding a keyslot needs KDF parameters")
            update = header.add_keyslot(region, master_key, new_passphrase, kdf, slot=new_slot)
            _apply(f.fileno(), update)
            added = update.slot
            region = update.region
            header = parse_header(region, limits)
        target = slot if remove_old else remove_slot
        if target is not None:
            if target == added:
                raise UsageError("refusing to remove the keyslot just added")
            if remaining_after(header, target) == 0:
                raise UsageError("refusing to remove the last keyslot")
            update = header.remove_keyslot(region, target)
            _apply(f.fileno(), update)
            region = update.region
            header = parse_header(region, limits)
            removed = target
        if remove_others:
            keep = added if added is not None else slot
            for other in header.active_keyslots():
                if other == keep:
                    continue
                update = header.remove_keyslot(region, other)
                _apply(f.fileno(), update)
                region = update.region
                header = parse_header(region, limits)
                removed = slot if removed is None else removed
        return RekeyResult(slot, added, removed)


def remaining_after(header: LuksHeader, slot: int) -> int:
    """How many keyslots stay active once ``slot`` is removed."""
    return len([s for s in header.active_keyslots() if s != slot])


def kdf_for(header: LuksHeader, options: FormatOptions) -> Kdf:
    """KDF parameters for a new keyslot in ``header``: its version decides the default KDF."""
    hash_name = header.af_hash if header.version == 1 else options.hash
    return dataclasses.replace(
        options, version=header.version, hash=hash_name, key_size=header.key_bytes * 8,
        cipher=str(header.cipher),
    ).keyslot_kdf()
