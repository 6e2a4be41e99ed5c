"""The recipes: one call per job, for each of imgcrypt's three users.

A person at a terminal (or a script)
    :func:`encrypt_image` (under a new key, an existing key or a passphrase, with the image
    properties to attach), :func:`decrypt_image`, :func:`rekey_image`, :func:`sign_image`,
    :func:`verify_image`.
An image service
    :class:`UploadInspector` / :func:`inspect_upload` while an upload streams,
    :func:`download_hook`, :func:`delete_hook`.
A volume service
    :func:`create_volume_from_image`, :func:`upload_volume_as_image`.

Every recipe that obtains a key does so through a :class:`~imgcrypt.keys.lease.KeyLease`: a
key made for a job that fails is deleted again, and the image is registered as the key's
consumer only when the job succeeded. The primitives the recipes are built from (headers, KDFs,
the sector engine, signature schemes) are in :mod:`imgcrypt.hazmat`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.keys.consumers import (
    file_consumer_for,
    release_file_elsewhere,
    unregister_file_consumer,
)
from imgcrypt.keys.lease import KeyLease
from imgcrypt.keys.manager import KeyManager, KeyOrder
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import DEFAULT_DELETION_POLICY
from imgcrypt.luks.options import FormatOptions, KdfOptions
from imgcrypt.luks.rekey import rekey_file
from imgcrypt.luks.transfer import decrypt_stream, encrypt_stream
from imgcrypt.service.flows import (
    VolumeImage,
    VolumeResult,
    create_volume_from_image,
    delete_hook,
    download_hook,
    upload_volume_as_image,
)
from imgcrypt.service.upload import UploadInspector, UploadPolicy, UploadVerdict, inspect_upload
from imgcrypt.signing.verify import CertificateSources, VerificationResult

#: The key ``encrypt_image(new_key=...)`` orders unless told otherwise: what ``imgcrypt encrypt
#: --new-key`` makes (a symmetric AES-512-XTS secret, whose hex opens the keyslot).
DEFAULT_KEY_ORDER = KeyOrder()


@dataclass(frozen=True)
class EncryptedImage:
    """What :func:`encrypt_image` wrote."""

    target: str
    luks_version: int
    decrypt_size: int  # bytes of plaintext: the image's os_decrypt_size, exact
    image_size: int  # bytes of the LUKS image
    key_id: str | None  # the key-manager secret that opens it (None: a passphrase did)
    key_created: bool
    properties: tuple[tuple[str, str], ...]  # the image properties to attach (none without a key)

    def property_dict(self) -> dict[str, str]:
        return dict(self.properties)


@dataclass(frozen=True)
class DecryptedImage:
    target: str
    size: int  # bytes written


@dataclass(frozen=True)
class RekeyedImage:
    path: str
    key_id: str  # the secret that now opens the image (its old one no longer does)
    key_created: bool


@dataclass(frozen=True)
class Signature:
    mode: str  # "glance" or "imgcrypt"
    properties: tuple[tuple[str, str], ...]  # the signature properties to attach

    def property_dict(self) -> dict[str, str]:
        return dict(self.properties)


def _key_for(key_manager: KeyManager | None, key_id: str | None, new_key: KeyOrder | None,
             passphrase: bytes | None) -> KeyLease | None:
    """The lease for the key named, or None when a passphrase is given instead."""
    given = [name for name, value in (("key_id", key_id), ("new_key", new_key),
                                      ("passphrase", passphrase)) if value is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of key_id, new_key and passphrase")
    if passphrase is not None:
        return None
    if key_manager is None:
        raise UsageError(f"{given[0]} needs a key_manager")
    if new_key is not None:
        return KeyLease.new(key_manager, new_key)
    assert key_id is not None
    return KeyLease.existing(key_manager, key_id)


def encrypt_image(source: str, target: str, *, key_manager: KeyManager | None = None,
                  key_id: str | None = None, new_key: KeyOrder | None = None,
                  passphrase: bytes | None = None, options: FormatOptions | None = None,
                  deletion_policy: str = DEFAULT_DELETION_POLICY,
                  force: bool = False) -> EncryptedImage:
    """Encrypt the raw image file ``source`` into a LUKS container at ``target`` (written
    beside it and renamed, so a failure leaves no target).

    The keyslot opens with exactly one of: the existing secret ``key_id``, a secret ordered
    now as ``new_key`` (e.g. :data:`DEFAULT_KEY_ORDER`; deleted again if encryption fails), or
    ``passphrase``. With a key, the result carries the image properties that name it, with
    ``os_decrypt_size`` the exact plaintext size; the local keystore records ``target`` as
    the key's consumer. ``options`` default to LUKS1, aes-xts-plain64, as ``imgcrypt
    encrypt`` makes.
    """
    options = options or FormatOptions()
    lease = _key_for(key_manager, key_id, new_key, passphrase)
    properties: dict[str, str] = {}
    with lease if lease is not None else contextlib.nullcontext():
        if lease is not None:
            lease.consume_as(file_consumer_for(lease.manager, target))
        with open(source, "rb") as src, atomic_output(target, force=force, source=source) as dst:
            result = encrypt_stream(src, dst, lease.passphrase if lease else passphrase or b"",
                                    options)
        if lease is not None:
            properties = encryption_properties(lease.key_id, result.header.version,
                                               result.payload_size, deletion_policy)
    if lease is not None:
        release_file_elsewhere(lease.manager, lease.key_id, target)
    return EncryptedImage(target, result.header.version, result.payload_size, result.image_size,
                          lease.key_id if lease else None, bool(lease and lease.created),
                          tuple(sorted(properties.items())))


def decrypt_image(source: str, target: str, *, key_manager: KeyManager | None = None,
                  key_id: str | None = None, passphrase: bytes | None = None,
                  size: int | None = None, force: bool = False) -> DecryptedImage:
    """Decrypt the LUKS image ``source`` to the raw image ``target``, opened by the secret
    ``key_id`` or by ``passphrase``. ``size`` is the image's ``os_decrypt_size``: without it
    the whole payload (whole sectors) is written."""
    lease = _key_for(key_manager, key_id, None, passphrase)
    secret = lease.passphrase if lease is not None else passphrase
    assert secret is not None
    with open(source, "rb") as src, atomic_output(target, force=force, source=source) as dst:
        written = decrypt_stream(src, dst, secret, size=size)
    return DecryptedImage(target, written)


def rekey_image(path: str, *, key_manager: KeyManager, key_id: str,
                new_key_id: str | None = None, new_key: KeyOrder | None = None,
                kdf: KdfOptions | None = None) -> RekeyedImage:
    """Make the image at ``path`` open with another secret (``new_key_id``, or one ordered now
    as ``new_key``) instead of ``key_id``: a keyslot is added for the new secret and the old
    one's removed, header only. A new key is deleted again if that fails; the local keystore's
    record of the file moves to the new key."""
    if (new_key_id is None) == (new_key is None):
        raise UsageError("give exactly one of new_key_id and new_key")
    old = KeyLease.existing(key_manager, key_id)
    lease = (KeyLease.new(key_manager, new_key) if new_key is not None
             else KeyLease.existing(key_manager, new_key_id or ""))
    with lease:
        lease.consume_as(file_consumer_for(key_manager, path))
        rekey_file(path, old.passphrase, new_passphrase=lease.passphrase, remove_old=True,
                   kdf=kdf or KdfOptions())
    if file_consumer_for(key_manager, path) is not None:
        with contextlib.suppress(Exception):  # the image no longer opens with it: tidy only
            unregister_file_consumer(key_manager, key_id, path)
    return RekeyedImage(path, lease.key_id, lease.created)


def sign_image(path: str, private_key: Any, *, mode: str = "imgcrypt",
               certificate_uuid: str | None = None, hash_name: str | None = None,
               bind: dict[str, str] | None = None) -> Signature:
    """Sign the image file at ``path``: ``mode="glance"`` gives cursive's ``img_signature*``
    properties (``certificate_uuid``, the certificate's id in the key manager, is required);
    ``mode="imgcrypt"`` imgcrypt's manifest signature, binding the properties in ``bind``
    (e.g. :attr:`EncryptedImage.properties`)."""
    from imgcrypt.signing.signer import make_signer
    from imgcrypt.signing.stream import feed_file

    signer = make_signer(private_key, mode=mode, hash_name=hash_name,
                         certificate_uuid=certificate_uuid, properties=bind)
    return Signature(mode, tuple(sorted(feed_file(signer, path).items())))


def verify_image(path: str, properties: dict[str, str], *,
                 certificates: CertificateSources | None = None,
                 key_manager: KeyManager | None = None) -> VerificationResult:
    """Verify every signature ``properties`` carry over the image file at ``path``; raises a
    :class:`~imgcrypt.errors.VerificationError` when anything is wrong. ``certificates`` says
    where the certificates come from (files, key-manager ids, trusted CAs); by default the
    signing certificate is the one the properties name, from ``key_manager``."""
    from imgcrypt.signing.stream import feed_file
    from imgcrypt.signing.verify import open_verifier

    def manager() -> Any:
        if key_manager is None:
            raise UsageError("the certificate is in the key manager: give key_manager")
        return key_manager

    verifier = open_verifier(properties, certificates or CertificateSources(),
                             key_manager=manager)
    return feed_file(verifier, path)


__all__ = [
    "DEFAULT_KEY_ORDER",
    "CertificateSources",
    "DecryptedImage",
    "EncryptedImage",
    "RekeyedImage",
    "Signature",
    "UploadInspector",
    "UploadPolicy",
    "UploadVerdict",
    "VerificationResult",
    "VolumeImage",
    "VolumeResult",
    "create_volume_from_image",
    "decrypt_image",
    "delete_hook",
    "download_hook",
    "encrypt_image",
    "inspect_upload",
    "rekey_image",
    "sign_image",
    "upload_volume_as_image",
    "verify_image",
]
