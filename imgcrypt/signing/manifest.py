"""imgcrypt mode's signed manifest and property names.

The signature in imgcrypt mode covers a small canonical document, not the image itself:

.. code-block:: text

    {"algorithm":"ed25519","bound":{"cinder_encryption_key_deletion_policy":null,...},
     "digest":"<lowercase hex of the image hash>","hash":"sha256",
     "scheme":"imgcrypt-image-signature","size":1073741824,"version":1}

Canonical means: JSON with keys sorted, no whitespace (separators ``,`` and ``:``), ASCII only
(``ensure_ascii``), UTF-8 bytes; every name of :data:`BOUND_PROPERTIES` appears under ``bound``,
with ``null`` when the image does not have that property, so adding one later (say an
``os_encrypt_key_id`` on an image signed without it) breaks the signature just like changing it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

SCHEME = "imgcrypt-image-signature"
VERSION = 1

#: The prefix of every imgcrypt-mode signature property.
PREFIX = "imgcrypt_sign_"
#: The scheme's version (``1``).
VERSION_KEY = f"{PREFIX}version"
#: The signature algorithm, one of :data:`imgcrypt.signing.algorithms.IMGCRYPT_ALGORITHMS`.
ALGORITHM_KEY = f"{PREFIX}algorithm"
#: The image hash, one of :data:`imgcrypt.digests.IMGCRYPT_HASHES`.
HASH_KEY = f"{PREFIX}hash"
#: The image size in bytes, decimal.
SIZE_KEY = f"{PREFIX}size"
#: The unsigned hint that tells a changed bound property from changed bytes.
BOUND_DIGEST_KEY = f"{PREFIX}bound_sha256"
#: The signing certificate's key-manager id, when known.
CERT_UUID_KEY = f"{PREFIX}certificate_uuid"
#: The base name of the signature's parts (``_count``, ``_sha256``, ``_1`` .. ``_N``).
SIGNATURE_NAME = f"{PREFIX}signature"

#: The properties whose change would change how a consumer treats the image's bytes or key.
BOUND_PROPERTIES = (
    "cinder_encryption_key_deletion_policy",
    "cinder_encryption_key_id",
    "container_format",
    "disk_format",
    "os_decrypt_container_format",
    "os_decrypt_size",
    "os_encrypt_format",
    "os_encrypt_key_deletion_policy",
    "os_encrypt_key_id",
)


def bound_values(properties: Mapping[str, str]) -> tuple[tuple[str, str | None], ...]:
    """Each of :data:`BOUND_PROPERTIES` with its value in ``properties``, or None if absent."""
    return tuple((name, properties.get(name)) for name in BOUND_PROPERTIES)


def bound_digest(bound: tuple[tuple[str, str | None], ...]) -> str:
    """Unsigned hint stored beside the signature: tells a changed property from changed bytes."""
    raw = hashlib.sha256(_canonical({"bound": dict(bound)})).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _canonical(document: object) -> bytes:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("utf-8")


@dataclass(frozen=True)
class Manifest:
    """What an imgcrypt-mode signature covers."""

    algorithm: str
    hash_name: str
    digest: bytes
    size: int
    bound: tuple[tuple[str, str | None], ...]

    def to_bytes(self) -> bytes:
        return _canonical(
            {
                "algorithm": self.algorithm,
                "bound": dict(self.bound),
                "digest": self.digest.hex(),
                "hash": self.hash_name,
                "scheme": SCHEME,
                "size": self.size,
                "version": VERSION,
            }
        )


__all__ = [
    "ALGORITHM_KEY",
    "BOUND_DIGEST_KEY",
    "BOUND_PROPERTIES",
    "CERT_UUID_KEY",
    "HASH_KEY",
    "PREFIX",
    "SIGNATURE_NAME",
    "SIZE_KEY",
    "VERSION_KEY",
    "Manifest",
    "bound_digest",
    "bound_values",
]
