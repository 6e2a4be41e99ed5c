"""Streaming encryption and decryption, random access to a payload, and header-only re-keying.

This is the I/O edge of the LUKS engine: it reads and writes files and streams, and hands bytes
to the format modules. Memory stays bounded by the chunk size times the chunks in flight.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from imgcrypt.errors import (
    FormatError,
    LimitExceededError,
    TruncatedError,
    UsageError,
)
from imgcrypt.fileio import read_full
from imgcrypt.luks.container import (
    PROBE_SIZE,
    LuksHeader,
    RegionUpdate,
    bytes_to_parse,
    parse_header,
    whole_sectors,
)
from imgcrypt.luks.kdf import DEFAULT_LIMITS, Kdf, KdfLimits
from imgcrypt.luks.options import FormatOptions, new_region
from imgcrypt.luks.pipeline import ordered_map, transform_file_range
from imgcrypt.luks.rules import IMAGE_HOLDS_HEADER, HeaderRuleError
from imgcrypt.luks.sectors import SectorCipher

CHUNK_SIZE = 4 << 20
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
        raise LimitExceededError(f"LUKS header claims {needed} bytes of metadata")
    if needed > len(data):
        data += read_full(source, needed - len(data))
    header = parse_header(data, limits, image_size=_size_of(source))
    if header.region_size > MAX_REGION_SIZE:
        raise LimitExceededError(f"LUKS keyslot area of {header.region_size} bytes is too large")
    if header.region_size > len(data):
        data += read_full(source, header.region_size - len(data))
    if len(data) < header.region_size:
        raise HeaderRuleError(IMAGE_HOLDS_HEADER, f"{header.region_size} bytes needed, "
                              f"{len(data)} present")
    return header, data


def _size_of(source: BinaryIO) -> int | None:
    """The size of a regular file behind ``source``; None for pipes and other streams."""
    fd = _regular_fd(source)
    return None if fd is None else os.fstat(fd).st_size


def unlock_stream(source: BinaryIO, passphrase: bytes,
                  limits: KdfLimits = DEFAULT_LIMITS, *, slot: int | None = None) -> Unlocked:
    """Open the container on ``source`` with ``passphrase``, trying only keyslot ``slot`` if
    given (cryptsetup's ``--key-slot``)."""
    header, region = read_header(source, limits)
    slot, master_key = header.unlock(region, passphrase, limits, slot=slot)
    return Unlocked(header, region, slot, master_key)


def _regular_fd(stream: BinaryIO) -> int | None:
    """The descriptor of ``stream`` if positional I/O works on it (a regular file not opened
    for appending, where pwrite would ignore the offset), else None."""
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return None if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND else fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class _BufferPool:
    """Chunk buffers recycled from the writer back to the reader, both in the consumer's thread.

    ordered_map bounds the chunks in flight, so the pool never holds more than that plus two;
    reusing them saves allocating, page-faulting and freeing three chunk-sized buffers a chunk.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = []

    def take(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        self._free.append(buffer)


def _read_into(source: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``source``, looping over short reads; less only at end of input."""
    done = 0
    readinto = getattr(source, "readinto", None)
    while done < len(view):
        if readinto is not None:
            got = readinto(view[done:])
        else:
            data = source.read(len(view) - done)
            got = len(data)
            view[done : done + got] = data
        if not got:
            break
        done += got
    return done


@dataclass(frozen=True)
class _Chunk:
    offset: int
    data: memoryview  # sector-padded, inside ``buffer``
    true_length: int
    buffer: bytearray


def _chunks(source: BinaryIO, sector_size: int, limit: int | None, pool: _BufferPool,
            first: bytes = b"") -> Iterator[_Chunk]:
    """Sector-padded pieces of ``source`` in pooled buffers, to be given back after use."""
    offset = 0
    pending = memoryview(first)
    while limit is None or offset < limit:
        want = CHUNK_SIZE if limit is None else min(CHUNK_SIZE, limit - offset)
        buffer = pool.take()
        view = memoryview(buffer)
        got = min(len(pending), want)
        view[:got] = pending[:got]
        pending = pending[got:]
        got += _read_into(source, view[got:want])
        if not got:
            pool.give(buffer)
            return
        padded = -(-got // sector_size) * sector_size
        view[got:padded] = bytes(padded - got)
        yield _Chunk(offset, view[:padded], got, buffer)
        offset += padded
        if got < want:
            return


def encrypt_stream(source: BinaryIO, target: BinaryIO, passphrase: bytes,
                   options: FormatOptions = DEFAULT_OPTIONS, *, master_key: bytes | None = None,
                   progress: Progress | None = None) -> EncryptResult:
    """Write a new container to ``target`` holding everything ``source`` yields.

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
    iv_base = header.iv_tweak
    total = 0
    padded = 0
    src_fd, dst_fd = _regular_fd(source), _regular_fd(target)
    if src_fd is not None and dst_fd is not None:
        # File to file: workers pread, encrypt in place and pwrite; nothing passes through here.
        target.flush()
        base, start = target.tell(), source.tell()
        length = max(0, os.fstat(src_fd).st_size - start)
        for done in transform_file_range(
            lambda view, at: cipher.encrypt_into(view, iv_base + at // 512, view),
            src_fd=src_fd, src_offset=start, length=length, dst_fd=dst_fd, dst_offset=base,
            block=header.sector_size, chunk_size=CHUNK_SIZE,
        ):
            total += done
            if progress:
                progress(done)
        padded = -(-length // header.sector_size) * header.sector_size
        source.seek(start + length)
        target.seek(base + padded)
        return EncryptResult(header, total, padded, header.payload_offset + padded)

    pool = _BufferPool(CHUNK_SIZE)

    def work(chunk: _Chunk) -> _Chunk:
        cipher.encrypt_into(chunk.data, iv_base + chunk.offset // 512, chunk.data)
        return chunk

    for chunk in ordered_map(work, _chunks(source, header.sector_size, None, pool)):
        target.write(chunk.data)
        total += chunk.true_length
        padded += len(chunk.data)
        pool.give(chunk.buffer)
        if progress:
            progress(chunk.true_length)
    return EncryptResult(header, total, padded, header.payload_offset + padded)


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
                    size: int | None = None, progress: Progress | None = None) -> int:
    """Write the payload of an unlocked container, read on from ``source``, to ``target``."""
    src_fd, dst_fd = _regular_fd(source), _regular_fd(target)
    if src_fd is not None and dst_fd is not None:
        return _decrypt_file_to_file(opened, source, target, src_fd, dst_fd, size, progress)
    written = 0
    pool = _BufferPool(CHUNK_SIZE)
    for plain, buffer in _payload_views(opened, source, size, pool):
        target.write(plain)
        written += len(plain)
        pool.give(buffer)
        if progress:
            progress(len(plain))
    return written


def _payload_limit(opened: Unlocked, size: int | None) -> int | None:
    limit = opened.header.payload_size
    if size is not None:
        if size < 0 or (limit is not None and size > limit):
            raise FormatError(f"decrypted size {size} does not fit the payload")
        limit = size if limit is None else min(limit, size)
    return limit


def _decrypt_file_to_file(opened: Unlocked, source: BinaryIO, target: BinaryIO, src_fd: int,
                          dst_fd: int, size: int | None, progress: Progress | None) -> int:
    """decrypt_payload between regular files: workers pread, decrypt in place and pwrite."""
    header = opened.header
    sector = header.sector_size
    available = os.fstat(src_fd).st_size - header.payload_offset
    if available < 0:
        raise TruncatedError("image ends before its payload starts")
    limit = _payload_limit(opened, size)
    if limit is None:
        available = whole_sectors(available)
    length = available if limit is None else min(available, -(-limit // sector) * sector)
    if length % sector and (size is None or length < size):
        raise TruncatedError("encrypted payload ends inside a sector")
    out_length = length if limit is None else min(limit, length)
    if limit is not None and out_length < limit:
        raise TruncatedError(f"image holds {out_length} payload bytes, {limit} expected")
    cipher = opened.cipher()
    iv_base = header.iv_tweak
    target.flush()
    base = target.tell()
    read = written = 0
    for done in transform_file_range(
        lambda view, at: cipher.decrypt_into(view, iv_base + at // 512, view),
        src_fd=src_fd, src_offset=header.payload_offset, length=length, dst_fd=dst_fd,
        dst_offset=base, write_length=out_length, block=sector, chunk_size=CHUNK_SIZE,
    ):
        read += done
        now = min(read, out_length)
        if progress and now > written:
            progress(now - written)
        written = now
    source.seek(header.payload_offset + length)
    target.seek(base + out_length)
    return out_length


def iter_payload(opened: Unlocked, source: BinaryIO, *, size: int | None = None) -> Iterator[bytes]:
    """Decrypted payload chunks of an unlocked container whose header region was already read.

    ``source`` is positioned just after ``opened.region``; it is read forward only.
    """
    pool = _BufferPool(CHUNK_SIZE)
    for plain, buffer in _payload_views(opened, source, size, pool):
        yield bytes(plain)
        pool.give(buffer)


def _payload_views(opened: Unlocked, source: BinaryIO, size: int | None,
                   pool: _BufferPool) -> Iterator[tuple[memoryview, bytearray]]:
    """(plaintext view, its pooled buffer) pairs; the consumer gives each buffer back."""
    header = opened.header
    already = opened.region[header.payload_offset :]
    skip = header.payload_offset - len(opened.region)
    while skip > 0:
        got = read_full(source, min(skip, CHUNK_SIZE))
        if not got:
            raise TruncatedError("image ends before its payload starts")
        skip -= len(got)
    limit = _payload_limit(opened, size)
    cipher = opened.cipher()
    iv_base = header.iv_tweak
    sector = header.sector_size

    def work(chunk: _Chunk) -> _Chunk:
        if chunk.true_length % sector and (size is None or chunk.offset + chunk.true_length < size):
            raise TruncatedError("encrypted payload ends inside a sector")
        cipher.decrypt_into(chunk.data, iv_base + chunk.offset // 512, chunk.data)
        return chunk

    padded_limit = None if limit is None else -(-limit // sector) * sector
    produced = 0
    chunks = _chunks(source, sector, padded_limit, pool, already)
    if limit is None:
        chunks = _whole_chunks(chunks, sector)
    for chunk in ordered_map(work, chunks):
        plain = chunk.data[: chunk.true_length]
        if limit is not None:
            plain = plain[: max(0, limit - produced)]
        produced += len(plain)
        if plain:
            yield plain, chunk.buffer
        else:
            pool.give(chunk.buffer)
    if limit is not None and produced < limit:
        raise TruncatedError(f"image holds {produced} payload bytes, {limit} expected")


def _whole_chunks(chunks: Iterator[_Chunk], sector: int) -> Iterator[_Chunk]:
    """The chunks with a trailing partial 512-byte sector of the image left out."""
    for chunk in chunks:
        kept = whole_sectors(chunk.true_length)
        if kept != chunk.true_length:
            padded = -(-kept // sector) * sector
            chunk = _Chunk(chunk.offset, chunk.data[:padded], kept, chunk.buffer)
        yield chunk


class PayloadReader(io.RawIOBase):
    """Random access to the decrypted payload of a container in a seekable file."""

    def __init__(self, raw: BinaryIO, opened: Unlocked, size: int | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._opened = opened
        self._cipher = opened.cipher()
        header = opened.header
        available = raw.seek(0, io.SEEK_END) - header.payload_offset
        if header.payload_size is not None:
            if header.payload_size > available:
                raise TruncatedError("image is shorter than its payload segment")
            available = header.payload_size
        else:
            available = whole_sectors(available)
        if available < 0:
            raise TruncatedError("image ends before its payload starts")
        self._size = available if size is None else min(size, available)
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
            raise TruncatedError("image ends inside its payload")
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
               kdf: Kdf | None = None, limits: KdfLimits = DEFAULT_LIMITS,
               opened_slot: int | None = None, new_slot: int | None = None,
               remove_others: bool = False) -> RekeyResult:
    """Change which passphrases open the image at ``path`` by rewriting its header only.

    With ``new_passphrase``, a keyslot for it is added (``kdf`` gives its parameters); with
    ``remove_old`` the keyslot ``passphrase`` opened is then removed, so a crash between the two
    steps leaves both passphrases valid, never neither. ``remove_slot`` removes that slot.
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
    return len([s for s in header.active_keyslots() if s != slot])


def kdf_for(header: LuksHeader, options: FormatOptions) -> Kdf:
    """KDF parameters for a new keyslot in ``header``: its version decides the default KDF."""
    hash_name = header.describe().get("hash", options.hash) if header.version == 1 else options.hash
    return dataclasses.replace(
        options, version=header.version, hash=hash_name, key_size=header.key_bytes * 8,
        cipher=str(header.cipher),
    ).keyslot_kdf()
