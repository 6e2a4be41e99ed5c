"""What the import plugins do to a staged image, without Glance: testable on its own.

The plugins (:mod:`imgcrypt.glance.verify`, :mod:`imgcrypt.glance.encrypt`) are thin TaskFlow
wrappers around these functions; Glance hands them a staged file and a key manager that acts
with the importing user's token.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.keys.consumers import image_consumer
from imgcrypt.keys.lease import KeyLease
from imgcrypt.keys.manager import KeyManager, KeyOrder
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import DEFAULT_DELETION_POLICY
from imgcrypt.luks.container import PROBE_SIZE, is_luks
from imgcrypt.luks.engine import CHUNK_SIZE
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.transfer import encrypt_stream
from imgcrypt.service.claims import claims_encryption
from imgcrypt.service.upload import UploadInspector, UploadPolicy, UploadVerdict
from imgcrypt.service.verdict import (
    MAX_PROPERTY,
    VERDICT_PROPERTY,
    pending_properties,
    refusal_properties,
    unchecked_properties,
)


@dataclass(frozen=True)
class VerifyOutcome:
    verdict: UploadVerdict
    key_opens: bool
    consumer_registered: bool
    checked_at: str  # ISO 8601, UTC

    def properties(self) -> dict[str, str]:
        """The verdict as image properties (imgcrypt's own names, each at most 255 chars):
        ``pending`` and the hash of the data checked, since Glance has not stored it yet
        (:mod:`imgcrypt.service.verdict`)."""
        signature = self.verdict.signature
        properties = {
            **pending_properties(self.verdict.os_hash_algo, self.verdict.os_hash_value,
                                 self.checked_at),
            "imgcrypt_signature": ",".join(sorted(s.scheme for s in signature.schemes))
            if signature is not None else "none",
        }
        if signature is not None:
            properties["imgcrypt_signer_sha256"] = signature.certificate_fingerprint
        if self.verdict.luks_version is not None:
            properties["imgcrypt_luks_version"] = str(self.verdict.luks_version)
        if self.verdict.encryption is not None:
            properties["imgcrypt_key_check"] = "opens" if self.key_opens else "not checked"
            properties["imgcrypt_consumer"] = ("registered" if self.consumer_registered
                                               else "not registered")
        if self.verdict.warnings:
            properties["imgcrypt_warnings"] = "; ".join(self.verdict.warnings)[:MAX_PROPERTY]
        return properties


def staged_path(file_path: str) -> str:
    """The local path of Glance's staged data (``file:///...`` or a plain path)."""
    return file_path.split("file://")[-1]


def verify_staged(path: str, properties: Mapping[str, str], key_manager: KeyManager, *,
                  image_id: str, policy: UploadPolicy) -> VerifyOutcome:
    """Verify a staged image; raises an :class:`ImgcryptError` when it must be refused.

    One pass through :class:`UploadInspector`, which unlocks the header once (within the
    policy's upload limits) unless ``policy.check_key`` is off, and registers the image as a
    consumer of its key only once everything else has passed, the key opening the header
    included.
    """
    inspector = UploadInspector(properties, key_manager=key_manager, policy=policy,
                                image_id=image_id)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            inspector.update(chunk)
    verdict = inspector.finalize()
    key_opens = verdict.encryption is not None and policy.check_key
    checked_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return VerifyOutcome(verdict, key_opens, verdict.consumer_registered, checked_at)


@dataclass(frozen=True)
class EncryptOutcome:
    path: str  # the LUKS1 container written beside the staged plaintext
    key_id: str
    image_size: int
    properties: dict[str, str]
    consumer_registered: bool


def is_already_encrypted(path: str, properties: Mapping[str, str]) -> bool:
    with open(path, "rb") as f:
        head = f.read(PROBE_SIZE)
    return claims_encryption(properties) or is_luks(head)


def encrypt_staged(path: str, key_manager: KeyManager, *, image_id: str,
                   deletion_policy: str = DEFAULT_DELETION_POLICY,
                   iterations: int | None = None, register_consumer: bool = True
                   ) -> EncryptOutcome:
    """Encrypt the plaintext at ``path`` as LUKS1 (aes-xts-plain64, 512-bit volume key) under
    a new 256-bit AES key ordered from the key manager, as Cinder orders volume keys; the
    keyslot passphrase is the key's lowercase hex, as os-brick derives it.

    The container is written atomically to ``path + ".luks"``; on any failure it is removed
    and the new key deleted (the key lease's rollback), so nothing is left behind.
    """
    lease = KeyLease.new(key_manager, KeyOrder(bit_length=256, mode="XTS",
                                               name=f"imgcrypt image {image_id}"))
    target = path + ".luks"
    try:
        with lease:
            if register_consumer:
                lease.consume_as(image_consumer(image_id))
            options = FormatOptions(version=1, cipher="aes-xts-plain64", key_size=512,
                                    iterations=iterations)
            with open(path, "rb") as source, \
                    atomic_output(target, force=True, source=path, mode=0o600) as out:
                result = encrypt_stream(source, out, lease.passphrase, options)
            properties = encryption_properties(lease.key_id, 1, result.payload_size,
                                               deletion_policy)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(target)
        raise
    return EncryptOutcome(target, lease.key_id, result.image_size, properties,
                          lease.consumer_registered)


def check_plugin_order(plugins: list[str]) -> None:
    """``imgcrypt_encrypt`` must run after ``image_conversion``: a LUKS container cannot be
    converted, so conversion has to happen on the plaintext."""
    if "imgcrypt_encrypt" in plugins and "image_conversion" in plugins and (
            plugins.index("image_conversion") > plugins.index("imgcrypt_encrypt")):
        raise UsageError("image_import_plugins lists image_conversion after imgcrypt_encrypt: "
                         "list image_conversion first (convert, then encrypt)")


__all__ = ["MAX_PROPERTY", "VERDICT_PROPERTY", "EncryptOutcome", "VerifyOutcome",
           "check_plugin_order", "encrypt_staged", "is_already_encrypted", "refusal_properties",
           "staged_path", "unchecked_properties", "verify_staged"]
