"""The one crypto table every LUKS module asks: hashes and block ciphers by their LUKS names.

A header names a hash or cipher as cryptsetup's crypto backend (OpenSSL with its legacy
provider, here) or qemu's spells it. Two questions are kept apart: does the name denote an
algorithm the tools know (then the header is valid and ``inspect`` shows it), and can imgcrypt
compute it here (then keyslots and payloads that use it can be opened). :func:`hash_size` and
:func:`lookup_cipher` answer the first; :func:`pbkdf2`, :func:`hashlib_name`,
:func:`pbkdf2_cost_weight` and :func:`block_cipher` the second, with :class:`UnsupportedError`
(naming the algorithm and a way out) when the answer is no.

Each hash row holds its names, output size, implementation and PBKDF2 cost weight, so what a
header may use, what imgcrypt computes and what the cost budget charges cannot drift apart.
PBKDF2 runs in `cryptography` (its OpenSSL, measured 3.5x faster per iteration than the system
OpenSSL behind hashlib); the AF diffusion uses hashlib where it has the hash, else
`cryptography`. Whirlpool (and ripemd160 on some builds) lives in OpenSSL's legacy provider,
which cryptsetup's backend loads too. `cryptography` has no class for them but fetches any
digest its own OpenSSL names, with the legacy provider loaded: :class:`OpenSSLDigest` asks it
by name, so they are computable on every install, the pure one (no C extension) included.
Where the C module is built, it loads the legacy provider into the system libcrypto too, and
hashlib then serves the AF diffusion.

Cost weights are the price of one PBKDF2 iteration for one output block, in units of one
PBKDF2-HMAC-SHA-256 iteration (see :mod:`imgcrypt.crypto.cost`). They were measured with the
implementation named in the row on the machine docs/security.md describes (process time, best
of nine interleaved runs of 50,000 iterations; SHA-256 123 ns) and rounded up by about 10 %:
SHA-1 1.01, SHA-224 1.02, SHA-384 3.09, SHA-512 3.09, SHA-512/224 3.19, SHA-512/256 3.11,
SHA3-224 5.44, SHA3-256 5.43, SHA3-384 5.58, SHA3-512 5.56, BLAKE2b-512 5.69, BLAKE2s-256
4.59, SM3 3.36, MD5 1.64, and through hashlib RIPEMD-160 4.75 and Whirlpool 12.28. Through
`cryptography` (:class:`OpenSSLDigest`) RIPEMD-160 measured 3.98 and Whirlpool 11.05; their rows
keep the slower hashlib figure, which covers either implementation.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, algorithms
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from imgcrypt.errors import UnsupportedError

try:  # the C module links the system libcrypto that hashlib uses; it loads the legacy provider
    from imgcrypt.crypto import _evpxts
except ImportError:  # pragma: no cover - exercised where libcrypto's headers were missing
    _evpxts = None  # type: ignore[assignment]


class OpenSSLDigest(hashes.HashAlgorithm):
    """A digest `cryptography` has no class for, fetched by its OpenSSL name from
    `cryptography`'s own OpenSSL (which has the legacy provider loaded)."""

    def __init__(self, name: str, digest_size: int, block_size: int) -> None:
        self._name, self._digest_size, self._block_size = name, digest_size, block_size

    @property
    def name(self) -> str:
        return self._name

    @property
    def digest_size(self) -> int:
        return self._digest_size

    @property
    def block_size(self) -> int:
        return self._block_size


@dataclass(frozen=True)
class HashInfo:
    name: str  # the canonical LUKS spelling
    size: int  # output bytes
    hashlib_name: str  # name for hashlib (AF diffusion, PBKDF2 without `cryptography`); "" if none
    algorithm: Callable[[], hashes.HashAlgorithm] | None  # `cryptography`'s, for PBKDF2 and signing
    cost: float | None  # PBKDF2 price per iteration and block (module docstring); None: not run


_TABLE = (
    HashInfo("sha1", 20, "sha1", hashes.SHA1, 1.1),
    HashInfo("sha224", 28, "sha224", hashes.SHA224, 1.2),
    HashInfo("sha256", 32, "sha256", hashes.SHA256, 1.0),
    HashInfo("sha384", 48, "sha384", hashes.SHA384, 3.5),
    HashInfo("sha512", 64, "sha512", hashes.SHA512, 3.7),
    HashInfo("sha3-224", 28, "sha3_224", hashes.SHA3_224, 6.2),
    HashInfo("sha3-256", 32, "sha3_256", hashes.SHA3_256, 6.2),
    HashInfo("sha3-384", 48, "sha3_384", hashes.SHA3_384, 6.2),
    HashInfo("sha3-512", 64, "sha3_512", hashes.SHA3_512, 6.2),
    HashInfo("blake2b-512", 64, "blake2b", lambda: hashes.BLAKE2b(64), 6.3),
    HashInfo("blake2s-256", 32, "blake2s", lambda: hashes.BLAKE2s(32), 5.1),
    HashInfo("sm3", 32, "sm3", hashes.SM3, 3.7),
    HashInfo("ripemd160", 20, "ripemd160", lambda: OpenSSLDigest("ripemd160", 20, 64), 5.3),
    HashInfo("whirlpool", 64, "whirlpool", lambda: OpenSSLDigest("whirlpool", 64, 64), 13.6),
    HashInfo("sha512-224", 28, "sha512_224", hashes.SHA512_224, 3.6),
    HashInfo("sha512-256", 32, "sha512_256", hashes.SHA512_256, 3.5),
    HashInfo("md5", 16, "md5", hashes.MD5, 1.9),
    # Known to OpenSSL, so valid in a header; not a fixed-size hash PBKDF2 or the AF can use.
    HashInfo("shake128", 16, "", None, None),
    HashInfo("shake256", 32, "", None, None),
    HashInfo("md5-sha1", 36, "", None, None),
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


@functools.cache
def _hashlib_has(name: str) -> bool:
    """Can hashlib compute ``name`` here, with OpenSSL's legacy provider if need be?"""
    for attempt in range(2):
        try:
            hashlib.new(name)
        except ValueError:
            # an older build of the C module has no loader: the hash is then not computable
            load = getattr(_evpxts, "load_legacy_provider", None)
            if attempt or load is None or not load():
                return False
        else:
            return True
    return False  # pragma: no cover - the loop returns


@functools.cache
def _cryptography_has(name: str) -> bool:
    """Does `cryptography`'s OpenSSL compute the LUKS hash ``name`` (a table name)?"""
    info = _BY_NAME[name]
    if info.algorithm is None:
        return False
    algorithm = info.algorithm()
    try:
        hashes.Hash(algorithm).finalize()
    except UnsupportedAlgorithm:
        return False
    return True


def _usable(name: str) -> HashInfo:
    info = lookup_hash(name)
    if info is None:
        raise UnsupportedError(f"unsupported hash {name[:32]!r}: no tool knows it")
    if not info.hashlib_name or info.cost is None or not (
            _hashlib_has(info.hashlib_name) or _cryptography_has(info.name)):
        raise UnsupportedError(
            f"unsupported hash {info.name!r}: OpenSSL here cannot compute it for PBKDF2 and the "
            "anti-forensic splitter; cryptsetup with a crypto backend that has it opens the image")
    return info


def hashlib_name(name: str) -> str:
    """The hashlib name of a hash imgcrypt can compute here; UnsupportedError otherwise."""
    return _usable(name).hashlib_name


class _CryptographyHash:
    """hashlib's hash-object interface (update, copy, digest) over `cryptography`'s Hash."""

    def __init__(self, context: hashes.Hash) -> None:
        self._context = context
        self.digest_size = context.algorithm.digest_size

    def update(self, data: bytes | memoryview) -> None:
        self._context.update(data)

    def copy(self) -> _CryptographyHash:
        return _CryptographyHash(self._context.copy())

    def digest(self) -> bytes:
        return self._context.copy().finalize()


def new_hash(name: str, data: bytes = b"") -> Any:  # hashlib's hash object has no public type
    """A hash object (update, copy, digest) for the LUKS hash ``name``: hashlib's where it has
    the hash, else `cryptography`'s; UnsupportedError if neither computes it."""
    info = _usable(name)
    if _hashlib_has(info.hashlib_name):
        return hashlib.new(info.hashlib_name, data)
    assert info.algorithm is not None  # _usable checked `cryptography` has it
    made = _CryptographyHash(hashes.Hash(info.algorithm()))
    made.update(data)
    return made


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """`cryptography`'s object for a hash it implements (signing digests); UnsupportedError."""
    info = _usable(name)
    if info.algorithm is None:
        raise UnsupportedError(f"unsupported hash {info.name!r} for `cryptography`")
    return info.algorithm()


def pbkdf2_cost_weight(name: str) -> float:
    """The PBKDF2 price of ``name`` per iteration and output block (module docstring)."""
    cost = _usable(name).cost
    assert cost is not None  # _usable refuses rows without one
    return cost


def pbkdf2(name: str, secret: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """PBKDF2-HMAC with the LUKS hash ``name``, by the implementation its row names."""
    info = _usable(name)
    if info.algorithm is not None and _cryptography_has(info.name):
        return PBKDF2HMAC(algorithm=info.algorithm(), length=length, salt=salt,
                          iterations=iterations).derive(secret)
    return hashlib.pbkdf2_hmac(info.hashlib_name, secret, salt, iterations, length)


def supports(name: str) -> bool:
    """Can imgcrypt both AF-merge and PBKDF2 with ``name``?"""
    try:
        _usable(name)
    except UnsupportedError:
        return False
    return True


# -- block ciphers ---------------------------------------------------------------------------

# Who opens the ciphers OpenSSL lacks, and how to leave them: one line for every refusal.
OTHER_TOOLS = ("cryptsetup (through the Linux kernel's crypto API) or qemu-img built with "
               "nettle or gcrypt open it")
CONVERT = ("convert it to aes-xts-plain64 with `cryptsetup reencrypt --cipher aes-xts-plain64 "
           "--key-size 512 IMAGE` or `qemu-img convert --object secret,id=s0,file=PASSFILE "
           "--image-opts driver=luks,key-secret=s0,file.filename=IMAGE -O luks -o key-secret=s0,"
           "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64 OUT`")


@dataclass(frozen=True)
class CipherInfo:
    name: str  # the LUKS spelling of the block cipher
    block_size: int  # bytes
    key_sizes: tuple[int, ...]  # bytes, for one instance (XTS takes two)
    make: Callable[[bytes], BlockCipherAlgorithm] | None  # OpenSSL's, via `cryptography`


_CIPHERS = (
    CipherInfo("aes", 16, (16, 24, 32), algorithms.AES),
    CipherInfo("camellia", 16, (16, 24, 32), decrepit.Camellia),
    CipherInfo("sm4", 16, (16,), algorithms.SM4),
    # cast5 takes 40..128-bit keys in whole bytes; read only (the clouds never write it).
    CipherInfo("cast5", 8, tuple(range(5, 17)), decrepit.CAST5),
    # In the Linux kernel and nettle/gcrypt, not in OpenSSL.
    CipherInfo("serpent", 16, (16, 24, 32), None),
    CipherInfo("twofish", 16, (16, 24, 32), None),
)
_CIPHER_BY_NAME = {info.name: info for info in _CIPHERS}


def lookup_cipher(name: str) -> CipherInfo | None:
    """The block cipher a LUKS spec names (``aes``, ``camellia``...); None if OpenSSL lacks it."""
    return _CIPHER_BY_NAME.get(name.lower())


def block_cipher(name: str, spec: str = "") -> CipherInfo:
    """The table row of a block cipher imgcrypt computes; UnsupportedError with a way out
    (naming the whole cipher ``spec`` if given)."""
    info = lookup_cipher(name)
    if info is None or info.make is None:
        shown = spec[:64] or (info.name if info else repr(name[:32]))
        raise UnsupportedError(
            f"unsupported cipher {shown}: OpenSSL (and so imgcrypt) does not implement it; "
            f"{OTHER_TOOLS}; {CONVERT}")
    return info
