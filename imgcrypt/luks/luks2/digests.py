"""LUKS2 digests of type ``pbkdf2``: which one covers a segment, and whether imgcrypt can use it.

Computing and checking the digest is :class:`imgcrypt.luks.keyslot.MasterKeyDigest`, the same
for both versions; this module maps LUKS2's JSON digests onto it.
"""

from __future__ import annotations

from typing import Any

from imgcrypt.crypto import backend
from imgcrypt.crypto.kdf import Pbkdf2
from imgcrypt.crypto.kdfparams import PBKDF2
from imgcrypt.errors import FormatError, UnsupportedError
from imgcrypt.luks.base import Segment
from imgcrypt.luks.keyslot import SALT_SIZE, MasterKeyDigest
from imgcrypt.luks.luks2.metadata import Digest, Metadata


def problems(metadata: Metadata, seg: Segment) -> list[str]:
    """Why imgcrypt cannot check the master key of ``seg``; empty if it can."""
    digests = [d for d in metadata.digests if seg.id in d.segments]
    if len(digests) != 1 or digests[0].type != PBKDF2:
        return [f"segment {seg.id} needs exactly one pbkdf2 digest"]
    d = digests[0]
    if not backend.supports(d.hash):
        return [f"digest hash {d.hash[:32]!r} is not implemented"]
    # cryptsetup's digest rule: 20 bytes (as LUKS1) or the hash's output length.
    if len(d.digest) not in (20, backend.hash_size(d.hash)):
        return [f"digest {d.id} is {len(d.digest)} bytes, not 20 or the hash length"]
    if len(d.salt) != SALT_SIZE or d.iterations < 1:
        return [f"digest {d.id} has a bad salt or iteration count"]
    return []


def of_segment(metadata: Metadata, seg: Segment) -> Digest:
    """The pbkdf2 digest that covers ``seg``."""
    for d in metadata.digests:
        if seg.id in d.segments:
            if d.type != PBKDF2:
                raise UnsupportedError(f"LUKS2 digest type {d.type[:32]!r}")
            return d
    raise FormatError(f"no LUKS2 digest covers segment {seg.id}")


def master_key_digest(d: Digest) -> MasterKeyDigest:
    return MasterKeyDigest(Pbkdf2(d.hash, d.iterations, d.salt), d.digest)


def describe(d: Digest) -> dict[str, Any]:
    return {"digest": d.id, "type": d.type, "hash": d.hash, "iterations": d.iterations,
            "keyslots": list(d.keyslots), "segments": list(d.segments)}
