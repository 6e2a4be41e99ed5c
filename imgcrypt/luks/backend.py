"""Hashes by their LUKS names: the one table every LUKS module asks.

A header names a hash as cryptsetup's crypto backend (OpenSSL with its legacy provider, here)
spells it. Two questions are kept apart: does the name denote a hash cryptsetup knows (then the
header is valid and ``inspect`` shows it), and can imgcrypt compute it here (then keyslots that
use it can be opened). :func:`hash_size` answers the first, :func:`hashlib_name` and
:func:`hash_algorithm` the second, with :class:`UnsupportedError` when the answer is no.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from imgcrypt.errors import UnsupportedError


@dataclass(frozen=True)
class HashInfo:
    name: str  # the canonical LUKS spelling
    size: int  # output bytes
    hashlib_name: str  # name for hashlib.new (AF diffusion); "" if imgcrypt cannot use it
    algorithm: Callable[[], hashes.HashAlgorithm] | None  # for PBKDF2 through `cryptography`


_TABLE = (
    HashInfo("sha1", 20, "sha1", hashes.SHA1),
    HashInfo("sha224", 28, "sha224", hashes.SHA224),
    HashInfo("sha256", 32, "sha256", hashes.SHA256),
    HashInfo("sha384", 48, "sha384", hashes.SHA384),
    HashInfo("sha512", 64, "sha512", hashes.SHA512),
    HashInfo("sha3-224", 28, "sha3_224", hashes.SHA3_224),
    HashInfo("sha3-256", 32, "sha3_256", hashes.SHA3_256),
    HashInfo("sha3-384", 48, "sha3_384", hashes.SHA3_384),
    HashInfo("sha3-512", 64, "sha3_512", hashes.SHA3_512),
    HashInfo("blake2b-512", 64, "blake2b", lambda: hashes.BLAKE2b(64)),
    HashInfo("blake2s-256", 32, "blake2s", lambda: hashes.BLAKE2s(32)),
    HashInfo("sm3", 32, "sm3", hashes.SM3),
    HashInfo("ripemd160", 20, "ripemd160", None),
    HashInfo("whirlpool", 64, "whirlpool", None),
    HashInfo("sha512-224", 28, "sha512_224", hashes.SHA512_224),
    HashInfo("sha512-256", 32, "sha512_256", hashes.SHA512_256),
    # Known to OpenSSL, so valid in a header; imgcrypt does not compute them.
    HashInfo("shake128", 16, "", None),
    HashInfo("shake256", 32, "", None),
    HashInfo("md5-sha1", 36, "", None),
    HashInfo("md5", 16, "md5", hashes.MD5),
)
_BY_NAME = {info.name: info for info in _TABLE}
# Other spellings OpenSSL resolves to the same digests.
_ALIASES = {
    **{f"sha-{n}": f"sha{n}" for n in ("1", "224", "256", "384", "512")},
    **{f"sha2-{n}": f"sha{n}" for n in ("224", "256", "384", "512")},
    "rmd160": "ripemd160", "ripemd-160": "ripemd160", "ripemd": "ripemd160",
    "blake2b512": "blake2b-512", "blake2s256": "blake2s-256",
}


def lookup_hash(name: str) -> HashInfo | None:
    """The table entry for a LUKS hash spec (case-insensitive), or None if unknown."""
    key = name.lower()
    return _BY_NAME.get(_ALIASES.get(key, key))


def hash_size(name: str) -> int | None:
    """Output bytes of a hash cryptsetup's backend knows by ``name``; None if it knows none."""
    info = lookup_hash(name)
    return info.size if info else None


def _usable(name: str) -> HashInfo:
    info = lookup_hash(name)
    if info is None or not info.hashlib_name or (
            info.hashlib_name not in hashlib.algorithms_available):
        raise UnsupportedError(f"unsupported hash {name!r}")
    return info


def hashlib_name(name: str) -> str:
    """The hashlib name of a hash imgcrypt can compute here; UnsupportedError otherwise."""
    return _usable(name).hashlib_name


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """The `cryptography` hash for PBKDF2 with ``name``; UnsupportedError if there is none."""
    info = _usable(name)
    if info.algorithm is None or info.size < 20:
        raise UnsupportedError(f"unsupported hash {name!r}")
    return info.algorithm()


def supports(name: str) -> bool:
    """Can imgcrypt both AF-merge and PBKDF2 with ``name``?"""
    try:
        hash_algorithm(name)
    except UnsupportedError:
        return False
    return True
