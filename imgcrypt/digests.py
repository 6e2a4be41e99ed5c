"""Digests outside LUKS headers: one table, with the name each protocol spells them by.

Three vocabularies name the same functions and never mix:

* cursive's ``img_signature_hash_method`` (Glance mode signatures): ``SHA-224`` .. ``SHA-512``;
* imgcrypt's ``imgcrypt_sign_hash``: ``sha256`` .. ``sha3-512``, cryptsetup's spelling, which is
  also the key of the LUKS hash table;
* Glance's multihash ``os_hash_algo``: whatever ``hashlib.new()`` takes (Glance's
  ``hashing_algorithm`` option, computed by glance_store's ``get_hasher``), ``sha3_256``.

What a digest *is* (its hashlib name, its ``cryptography`` class) comes from the LUKS hash table
(:mod:`imgcrypt.crypto.backend`); this table only says which protocol may use which digest.
The multihash is not in the table: Glance's rule is hashlib's own list, so imgcrypt takes
hashlib's guaranteed names as they are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes

from imgcrypt.crypto import backend
from imgcrypt.errors import UsageError


@dataclass(frozen=True)
class HashSpec:
    """One digest under each of its names, and where imgcrypt accepts it."""

    name: str  # imgcrypt's (and cryptsetup's) spelling: "sha256", "sha3-256"
    glance_name: str | None = None  # cursive's img_signature_hash_method, if Glance mode takes it
    signs: bool = False  # imgcrypt-mode signatures may hash with it
    legacy: bool = False  # refused in certificates unless legacy algorithms are allowed

    @property
    def hashlib_name(self) -> str:
        return _luks_entry(self.name).hashlib_name

    def make(self) -> hashes.HashAlgorithm:
        make = _luks_entry(self.name).algorithm
        assert make is not None  # every entry below has one (checked at import)
        return make()

    def new(self) -> Any:  # hashlib's hash object has no public type
        return hashlib.new(self.hashlib_name)


def _luks_entry(name: str) -> backend.HashInfo:
    info = backend.lookup_hash(name)
    if info is None or info.algorithm is None or not info.hashlib_name:
        raise AssertionError(f"{name} is not a hash the LUKS table can compute")
    return info


#: Every hash either scheme knows, with its names, strength and implementation.
DIGESTS = (
    HashSpec("md5", legacy=True),
    HashSpec("sha1", legacy=True),
    HashSpec("sha224", glance_name="SHA-224"),
    HashSpec("sha256", glance_name="SHA-256", signs=True),
    HashSpec("sha384", glance_name="SHA-384", signs=True),
    HashSpec("sha512", glance_name="SHA-512", signs=True),
    HashSpec("sha3-256", signs=True),
    HashSpec("sha3-384", signs=True),
    HashSpec("sha3-512", signs=True),
)
for _spec in DIGESTS:
    _luks_entry(_spec.name)

# Each protocol's view of the table, by its own spelling, in table order.
#: Glance mode's hashes (``img_signature_hash_method``): ``SHA-224`` .. ``SHA-512``.
GLANCE_HASHES: dict[str, HashSpec] = {d.glance_name: d for d in DIGESTS if d.glance_name}
#: imgcrypt mode's hashes (``imgcrypt_sign_hash``): ``sha256`` .. ``sha3-512``.
IMGCRYPT_HASHES: dict[str, HashSpec] = {d.name: d for d in DIGESTS if d.signs}
#: Hashes an image service may name in ``os_hash_algo``: Glance recommends
#: hashlib.algorithms_guaranteed for interoperability; the shake digests have no fixed
#: length, so no hexdigest() Glance could store.
MULTIHASHES: frozenset[str] = frozenset(
    name for name in hashlib.algorithms_guaranteed if not name.startswith("shake_"))
#: Glance's default ``hashing_algorithm`` (``os_hash_algo``).
DEFAULT_MULTIHASH = "sha512"


def _flat_spelling(name: str) -> str:
    """``SHA-256``, ``sha_256`` and ``sha256`` alike: lower case, ``_`` read as ``-``, and no
    dash straight after ``sha`` (so ``sha-3-256`` reads as ``sha3-256``)."""
    flat = name.strip().lower().replace("_", "-")
    return "sha" + flat[4:] if flat.startswith("sha-") else flat


def signing_hash_name(name: str, mode: str) -> str:
    """A hash name as a person spells it, in the vocabulary of a signature ``mode``:
    ``"glance"`` gives cursive's ``SHA-256``, ``"imgcrypt"`` gives ``sha256`` / ``sha3-256``.
    Refused (:class:`UsageError`) when that mode does not sign with it."""
    flat = _flat_spelling(name)
    if mode == "glance":
        for glance_name in GLANCE_HASHES:
            if glance_name.lower().replace("-", "") == flat:
                return glance_name
        raise UsageError(f"Glance mode hashes are {', '.join(GLANCE_HASHES)}, not {name!r}")
    if flat in IMGCRYPT_HASHES:
        return flat
    raise UsageError(f"imgcrypt mode hashes are {', '.join(IMGCRYPT_HASHES)}, not {name!r}")


def abbreviated(names: Iterable[str]) -> str:
    """Names of one family written once: ``sha256/384/512, sha3-256/384/512``."""
    groups: list[tuple[str, list[str]]] = []
    for name in names:
        match = _FAMILY_SIZE.fullmatch(name)
        family, size = match.groups() if match else (name, "")
        if groups and groups[-1][0] == family:
            groups[-1][1].append(size)
        else:
            groups.append((family, [family + size]))
    return ", ".join("/".join(members) for _family, members in groups)


_FAMILY_SIZE = re.compile(r"(.*?)([0-9]+)")


def new_multihash(name: str) -> Any:  # hashlib's hash object has no public type
    """The hasher for an ``os_hash_algo`` value, as glance_store makes it."""
    if name not in MULTIHASHES:
        raise KeyError(name)
    return hashlib.new(name)


def is_legacy(algorithm: hashes.HashAlgorithm) -> bool:
    """Is a `cryptography` hash (a certificate's signature hash) one of the weak ones?"""
    return any(d.legacy and d.name == algorithm.name for d in DIGESTS)


__all__ = [
    "DEFAULT_MULTIHASH",
    "DIGESTS",
    "GLANCE_HASHES",
    "IMGCRYPT_HASHES",
    "MULTIHASHES",
    "HashSpec",
    "abbreviated",
    "is_legacy",
    "new_multihash",
    "signing_hash_name",
]
