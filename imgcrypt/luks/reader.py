"""Random access to the decrypted payload of a container in a seekable file.

The extent comes from the engine's plan (:func:`~imgcrypt.luks.engine.plan_decrypt`) and the
sectors are deciphered by the engine's transform, so the payload rules and the IV arithmetic
are the ones every other data path uses.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, KdfLimits
from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.fileio import read_full
from imgcrypt.luks.engine import CHUNK_SIZE, plan_decrypt, xts_transform
from imgcrypt.luks.unlock import Unlocked, unlock_stream


class PayloadReader(io.RawIOBase):
    """Random access to the decrypted payload of a container in a seekable file."""

    def __init__(self, raw: BinaryIO, opened: Unlocked, size: int | None = None) -> None:
        super().__init__()
        header = opened.header
        self._transform = xts_transform(opened.cipher(), header.iv_tweak, encrypt=False)
        self._raw = raw
        self._offset = header.payload_offset
        self._plan = plan_decrypt(header, size=None,
                                  available=raw.seek(0, io.SEEK_END) - header.payload_offset)
        whole = self._plan.output_limit if self._plan.output_limit is not None \
            else self._plan.read_limit
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
        sector = self._plan.sector_size
        start = self._pos - self._pos % sector
        length = self._plan.padded(self._pos + want) - start
        self._raw.seek(self._offset + start)
        data = bytearray(read_full(self._raw, length))
        if len(data) < length:
            raise FormatError("image ends inside its payload", reason=FormatFault.TRUNCATED)
        self._transform(memoryview(data), start)
        view[:want] = data[self._pos - start : self._pos - start + want]
        self._pos += want
        return want


def open_payload(raw: BinaryIO, passphrase: bytes, *, size: int | None = None,
                 limits: KdfLimits = DEFAULT_LIMITS) -> io.BufferedReader:
    """A buffered, seekable file object over the decrypted payload of ``raw``."""
    raw.seek(0)
    opened = unlock_stream(raw, passphrase, limits)
    return io.BufferedReader(PayloadReader(raw, opened, size), buffer_size=1 << 20)
