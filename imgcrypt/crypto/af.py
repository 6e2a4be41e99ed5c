"""The LUKS anti-forensic information splitter (LUKS1 spec section 2.4, reused by LUKS2).

A key of ``n`` bytes becomes ``stripes`` blocks of ``n`` bytes; all of them are needed to recover
it, so destroying any part of a keyslot's material destroys the key.
"""

from __future__ import annotations

import os

from imgcrypt.crypto import backend
from imgcrypt.errors import FormatError


def _xor(a: bytes, b: bytes | memoryview) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


class _Diffuser:
    """The AF diffusion of one key size: block j of the key is replaced by H(be32(j) || block),
    truncated for the last block. The per-index hash prefixes are computed once and copied,
    since a re-key runs this 8000 times."""

    def __init__(self, hash_name: str, size: int) -> None:
        digest_size = backend.new_hash(hash_name).digest_size
        self._parts = [
            (backend.new_hash(hash_name, index.to_bytes(4, "big")), start,
             min(start + digest_size, size))
            for index, start in enumerate(range(0, size, digest_size))
        ]

    def __call__(self, block: bytes) -> bytes:
        out = []
        for prefix, start, end in self._parts:
            h = prefix.copy()
            h.update(block[start:end])
            out.append(h.digest()[: end - start])
        return b"".join(out)


def check_hash(hash_name: str) -> str:
    """The hashlib name of a LUKS hash spec ("sha256", "SHA-256"); refuse ones we cannot compute."""
    return backend.hashlib_name(hash_name)


def split(key: bytes, stripes: int, hash_name: str, *, randbytes: bytes | None = None) -> bytes:
    """Split ``key`` into ``stripes`` blocks; ``randbytes`` fixes the random part (tests only)."""
    check_hash(hash_name)
    n = len(key)
    rand = randbytes if randbytes is not None else os.urandom(n * (stripes - 1))
    if len(rand) != n * (stripes - 1):
        raise ValueError("randbytes has the wrong length")
    diffuse = _Diffuser(hash_name, n)
    d = bytes(n)
    for i in range(stripes - 1):
        d = diffuse(_xor(d, rand[i * n : (i + 1) * n]))
    return rand + _xor(d, key)


def merge(material: bytes, key_size: int, stripes: int, hash_name: str) -> bytes:
    """Recover the key from split ``material`` (at least ``key_size * stripes`` bytes)."""
    check_hash(hash_name)
    if stripes < 1 or len(material) < key_size * stripes:
        raise FormatError("keyslot material is shorter than its stripes need")
    diffuse = _Diffuser(hash_name, key_size)
    view = memoryview(material)
    d = bytes(key_size)
    for i in range(stripes - 1):
        d = diffuse(_xor(d, view[i * key_size : (i + 1) * key_size]))
    last = material[(stripes - 1) * key_size : stripes * key_size]
    return _xor(d, last)
