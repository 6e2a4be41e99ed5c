"""Feeding image bytes to signers and verifiers: one pass, bounded memory.

Every signer and verifier has ``update(data)`` and ``finalize()``; the helpers here read a
file or drain an iterator into one of them. Hashing uses :mod:`hashlib` (OpenSSL underneath,
releasing the GIL on large chunks), so verifying costs about what hashing costs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from imgcrypt.digests import HashSpec

#: How many bytes a file is read at a time while it is hashed.
CHUNK_SIZE = 1 << 20

_R_co = TypeVar("_R_co", covariant=True)


class Consumer(Protocol[_R_co]):
    """What signers and verifiers have in common."""

    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def finalize(self) -> _R_co: ...


@dataclass(frozen=True)
class Digest:
    """The hash of a whole image and its length."""

    hash_name: str
    value: bytes
    size: int

    @property
    def hex(self) -> str:
        return self.value.hex()


@dataclass(frozen=True)
class SchemeResult:
    """One verified signature: which scheme, algorithm and hash, and the image digest."""

    scheme: str
    algorithm: str
    hash_name: str
    digest: Digest


class ImageHasher:
    """Incremental hash plus byte count; ``finalize`` may be called once."""

    def __init__(self, name: str, spec: HashSpec) -> None:
        self._name = name
        self._hash: Any = spec.new()
        self._size = 0
        self._done = False

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise RuntimeError("update() after finalize()")
        self._hash.update(data)
        self._size += len(data)

    def finalize(self) -> Digest:
        if self._done:
            raise RuntimeError("finalize() called twice")
        self._done = True
        return Digest(self._name, self._hash.digest(), self._size)


class HashingConsumer:
    """What every signer and verifier starts from: the image streams into one hash."""

    def __init__(self, hash_name: str, spec: HashSpec) -> None:
        self._hash_name = hash_name
        self._spec = spec
        self._hasher = ImageHasher(hash_name, spec)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)

    def _image_digest(self) -> Digest:
        return self._hasher.finalize()


_T = TypeVar("_T")


def feed_iterable(consumer: Consumer[_T], chunks: Iterable[bytes | bytearray | memoryview]) -> _T:
    """Pass every chunk to ``consumer`` and return what ``finalize`` returns."""
    for chunk in chunks:
        consumer.update(chunk)
    return consumer.finalize()


def feed_file(consumer: Consumer[_T], path: str | Path, *, chunk_size: int = CHUNK_SIZE) -> _T:
    """Read ``path`` once, in ``chunk_size`` pieces, into ``consumer``."""
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            consumer.update(view[:count])
    return consumer.finalize()


__all__ = [
    "CHUNK_SIZE",
    "Consumer",
    "Digest",
    "HashingConsumer",
    "ImageHasher",
    "SchemeResult",
    "feed_file",
    "feed_iterable",
]
